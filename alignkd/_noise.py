"""Two dependency log lines that every command printed and no user can act on, filtered at their loggers.

- torchao tries to load its CUDA kernel libraries (`_C_cutlass_90a`, `_C_mxfp8`) on import and logs "Failed to
  load ..." when they cannot load. With a CPU-only torch (`torch.version.cuda is None`) they never can, and
  nothing of ours uses them; with a CUDA torch the line is kept, since there it may mean a broken install.
- torch's pytree logs, once per class, that torchao registers Enum subclasses the deprecated way (torchao's
  business, fixed upstream by dropping the call).
Any other record of those loggers passes untouched.
"""

from __future__ import annotations

import logging
import re

_TORCHAO_CUDA_LIB = re.compile(r"^Failed to load \S*torchao[/\\]_C_\w+[.\w-]*\.so\b")


def _torchao_cuda_libs_on_cpu_torch(record: logging.LogRecord) -> bool:
    if not _TORCHAO_CUDA_LIB.match(record.getMessage()):
        return True
    import torch  # imported already: torchao is importing it

    return torch.version.cuda is not None


def _not_pytree_enum_deprecation(record: logging.LogRecord) -> bool:
    return "is an Enum subclass and is now natively supported" not in record.getMessage()


def install() -> None:
    """Idempotent: adds each filter to its logger once."""
    for name, fn in (("torchao", _torchao_cuda_libs_on_cpu_torch), ("torch.utils._pytree", _not_pytree_enum_deprecation)):
        logger = logging.getLogger(name)
        if fn not in logger.filters:
            logger.addFilter(fn)
