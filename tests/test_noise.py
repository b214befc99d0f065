"""The dependency log lines alignkd filters (alignkd/_noise.py): gone after `import alignkd`, and only those."""

import logging
import subprocess
import sys

import torch

from alignkd import _noise

IMPORTS = "import torchao, torch.utils._pytree"


def _stderr(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr


def test_importing_alignkd_drops_the_two_known_lines_that_torchao_prints():
    bare = _stderr(IMPORTS)
    if torch.version.cuda is None:  # the lines this filter exists for are printed without it
        assert "Failed to load" in bare and "_C_" in bare
    assert "Failed to load" not in _stderr(f"import alignkd; {IMPORTS}") or torch.version.cuda is not None
    assert "is an Enum subclass" not in _stderr(f"import alignkd; {IMPORTS}")


def test_other_records_of_those_loggers_pass():
    _noise.install()
    _noise.install()  # idempotent
    torchao, pytree = logging.getLogger("torchao"), logging.getLogger("torch.utils._pytree")
    assert torchao.filters.count(_noise._torchao_cuda_libs_on_cpu_torch) == 1
    record = lambda name, msg: logging.LogRecord(name, logging.WARNING, __file__, 1, msg, (), None)
    assert torchao.filter(record("torchao", "Failed to load /x/site-packages/mylib/_C.so: bad"))
    assert torchao.filter(record("torchao", "Some other torchao warning"))
    assert pytree.filter(record("torch.utils._pytree", "a different pytree warning"))
    assert not pytree.filter(record("torch.utils._pytree", "<enum 'X'> is an Enum subclass and is now natively supported by torch.compile"))
    dropped = torchao.filter(record("torchao", "Failed to load /x/site-packages/torchao/_C_cutlass_90a.abi3.so: Could not load"))
    assert dropped == (torch.version.cuda is not None)
