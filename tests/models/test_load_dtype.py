"""Checkpoints load straight into the training dtype: the same numbers as load-then-cast, without the fp32 copy."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from alignkd.distill.checkpoint import load_spec
from alignkd.distill.config import ModelSpec
from alignkd.models.checkpoint import load_checkpoint, save_checkpoint
from alignkd.models.mobilevlm import MobileVLM, get_preset, mobilevlm_tiny

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_direct_load_equals_the_cast_reference(fixture_dir, tmp_path, weights, dtype):
    folder = tmp_path / "ckpt"
    shutil.copytree(fixture_dir / "checkpoint", folder)
    (folder / ({"model.safetensors", "pytorch_model.bin"} - {weights}).pop()).unlink()
    reference, _ = load_checkpoint(folder)
    reference.to(dtype)
    direct, _ = load_checkpoint(folder, dtype=dtype)
    ref_state = reference.state_dict()
    for key, value in direct.state_dict().items():
        assert value.dtype == ref_state[key].dtype, key
        assert torch.equal(value, ref_state[key]), key
    assert {p.dtype for p in direct.parameters()} == {dtype}


def test_load_spec_builds_teacher_and_preset_in_the_asked_dtype(fixture_dir):
    teacher, _ = load_spec(ModelSpec(path=str(fixture_dir / "checkpoint")), train=False, dtype="bfloat16")
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    student, _ = load_spec(ModelSpec(preset="mobilevlm_tiny", tokenizer=str(fixture_dir / "checkpoint"), dtype="float16"))
    assert {p.dtype for p in student.parameters()} == {torch.float16}
    assert torch.get_default_dtype() == torch.float32  # the preset's dtype does not leak out


def test_float32_preset_keeps_its_random_numbers(fixture_dir):
    """The default path draws the same weights as before: seeded fp32 runs stay reproducible across versions."""
    torch.manual_seed(3)
    model, tok = load_spec(ModelSpec(preset="mobilevlm_tiny", tokenizer=str(fixture_dir / "checkpoint")))
    torch.manual_seed(3)
    config = get_preset("mobilevlm_tiny")
    config.llm.vocab_size = tok.vocab_size
    reference = MobileVLM(config)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name


_MEASURE = textwrap.dedent("""
    import json, sys
    from alignkd.distill.checkpoint import load_spec
    from alignkd.distill.config import ModelSpec

    def status(key):
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))

    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS: imports do not count
    base = status("VmRSS")
    model, _ = load_spec(ModelSpec(path=sys.argv[1]), train=False, dtype="bfloat16")  # what the recipe does for the teacher
    print(json.dumps({"peak": status("VmHWM") - base, "dtypes": sorted({str(p.dtype) for p in model.parameters()})}))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset and read the peak RSS")
def test_bf16_teacher_load_never_holds_an_fp32_copy(tmp_path):
    """Peak host memory of a bf16 load stays under the fp32 size (the old build-in-fp32-then-cast peaked at ~3x bf16)."""
    config = mobilevlm_tiny(vocab=512, hidden=512, layers=8, heads=8, ffn=1376)  # 26M parameters: 52 MB bf16
    model = MobileVLM(config)
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    folder = save_checkpoint(model, _tokenizer(), tmp_path / "teacher", dtype=torch.bfloat16)
    del model
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(folder)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["dtypes"] == ["torch.bfloat16"]
    assert result["peak"] < fp32_bytes, f"peak {result['peak'] / 1e6:.0f} MB vs fp32 model {fp32_bytes / 1e6:.0f} MB"


def _tokenizer():
    from alignkd.data.tokenizer import Tokenizer

    return Tokenizer.from_folder(REPO / "tests" / "fixtures" / "mobilevlm_official_tiny" / "checkpoint")


def test_load_spec_takes_an_indexed_cpu_device(fixture_dir):
    """Each process of a multi-process CPU run (accelerate) gets device cpu:0, which safetensors itself refuses."""
    teacher, _ = load_spec(ModelSpec(path=str(fixture_dir / "checkpoint")), train=False, dtype="bfloat16",
                           device=torch.device("cpu", 0))
    assert {p.device.type for p in teacher.parameters()} == {"cpu"}
