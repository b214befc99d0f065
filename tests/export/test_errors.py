"""Every bad input ends in one AlignKDError naming the input and the fix, before any heavy work."""

import builtins
import json
import shutil
from collections import namedtuple

import pytest

from alignkd.errors import AlignKDError
from alignkd.export import export_bundle


def test_unknown_target(checkpoint, tmp_path):
    with pytest.raises(AlignKDError, match="unknown export target 'tflite'; valid targets: executorch, onnx, coreml, gguf"):
        export_bundle(checkpoint, "tflite", "fp32", tmp_path / "b")


@pytest.mark.parametrize("target,quant", [("executorch", "int4"), ("onnx", "8da4w"), ("coreml", "fp32"),
                                                ("gguf", "8da4w"), ("gguf", "q4_k_m")])
def test_unknown_scheme(checkpoint, tmp_path, target, quant):
    with pytest.raises(AlignKDError, match=f"unknown quantization scheme '{quant}' for target {target}; valid schemes"):
        export_bundle(checkpoint, target, quant, tmp_path / "b")


def test_group_size_must_divide_hidden(checkpoint, tmp_path):
    # hidden 64, FFN 128: 48 divides neither
    with pytest.raises(AlignKDError, match="group size 48 does not divide the model's layer width"):
        export_bundle(checkpoint, "onnx", "int4", tmp_path / "b", group_size=48)


def test_xnnpack_group_size_multiple_of_32(checkpoint, tmp_path):
    with pytest.raises(AlignKDError, match="need a multiple of 32"):
        export_bundle(checkpoint, "executorch", "8da4w", tmp_path / "b", group_size=16)


def test_bad_embedding_bits_and_vision_quant(checkpoint, tmp_path):
    with pytest.raises(AlignKDError, match="embedding bits 2"):
        export_bundle(checkpoint, "executorch", "8da4w", tmp_path / "b", embedding_bits=2)
    with pytest.raises(AlignKDError, match="only supported for the executorch target"):
        export_bundle(checkpoint, "onnx", "fp32", tmp_path / "b", vision_quant="int8")
    with pytest.raises(AlignKDError, match="only supported for the executorch target, not gguf"):
        export_bundle(checkpoint, "gguf", "q4_0", tmp_path / "b", vision_quant="int8")
    with pytest.raises(AlignKDError, match="--vision-quant fp16 is only supported for the gguf target"):
        export_bundle(checkpoint, "onnx", "fp32", tmp_path / "b", vision_quant="fp16")


def test_not_mobilevlm(checkpoint, tmp_path):
    fake = tmp_path / "llama"
    shutil.copytree(checkpoint, fake)
    cfg = json.loads((fake / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "llama", ["LlamaForCausalLM"]
    (fake / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AlignKDError, match="not a MobileVLM checkpoint"):
        export_bundle(fake, "onnx", "fp32", tmp_path / "b")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(AlignKDError, match="does not exist"):
        export_bundle(tmp_path / "nowhere", "onnx", "fp32", tmp_path / "b")


def _hide_module(monkeypatch, module: str) -> None:
    """Make `module` (and its submodules) fail to import, as if its extra were not installed."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named '{module}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr("importlib.import_module", lambda name: fake_import(name))


def test_missing_backend_names_extra(checkpoint, tmp_path, monkeypatch):
    _hide_module(monkeypatch, "coremltools")
    with pytest.raises(AlignKDError, match=r"pip install 'alignkd\[coreml\]'"):
        export_bundle(checkpoint, "coreml", "fp16", tmp_path / "b")


def test_missing_llama_cpp_names_the_gguf_extra(checkpoint, tmp_path, monkeypatch):
    from alignkd.models.checkpoint import load_config

    load_config(checkpoint)  # transformers' lazy imports go through importlib.import_module(name, package): load it first
    _hide_module(monkeypatch, "llama_cpp")
    with pytest.raises(AlignKDError, match=r"the gguf export needs the '(gguf|llama_cpp)' package.*pip install 'alignkd\[gguf\]'"):
        export_bundle(checkpoint, "gguf", "q4_k_s", tmp_path / "b")


def test_existing_output_refused(checkpoint, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    with pytest.raises(AlignKDError, match="already exists; pass --overwrite"):
        export_bundle(checkpoint, "onnx", "fp32", out)


def test_not_enough_disk(checkpoint, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(AlignKDError, match="not enough disk space"):
        export_bundle(checkpoint, "onnx", "fp32", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_max_seq_len_bounds(checkpoint, tmp_path):
    with pytest.raises(AlignKDError, match="max sequence length 100"):
        export_bundle(checkpoint, "onnx", "fp32", tmp_path / "b", max_seq_len=100)


def test_drift_below_threshold_fails_unless_allowed(checkpoint, tmp_path, monkeypatch):
    """A quantized bundle under the floors is refused and leaves nothing behind; --allow-drift keeps it."""
    from alignkd.export import parity

    monkeypatch.setitem(parity.MIN_LOGIT_COSINE, "int8", 1.01)
    with pytest.raises(AlignKDError, match="drifts from the eager model.*--allow-drift"):
        export_bundle(checkpoint, "onnx", "int8", tmp_path / "b", max_seq_len=512)
    assert not any(tmp_path.iterdir())
    out = export_bundle(checkpoint, "onnx", "int8", tmp_path / "b", max_seq_len=512, allow_drift=True)
    m = json.loads((out / "manifest.json").read_text())
    assert m["parity"]["passed"] is False and m["parity"]["allow_drift"] is True


def test_bad_vision_runtime(checkpoint, tmp_path):
    with pytest.raises(AlignKDError, match="unknown vision runtime 'eager'; valid: llama.cpp, pytorch"):
        export_bundle(checkpoint, "gguf", "f32", tmp_path / "b", vision_runtime="eager")
    with pytest.raises(AlignKDError, match="--vision-runtime is only for the gguf target, not onnx"):
        export_bundle(checkpoint, "onnx", "fp32", tmp_path / "b", vision_runtime="pytorch")
    with pytest.raises(AlignKDError, match="--vision-runtime pytorch keeps the vision encoder in fp32, not fp16; drop --vision-quant"):
        export_bundle(checkpoint, "gguf", "q4_0", tmp_path / "b", vision_runtime="pytorch", vision_quant="fp16")
    assert not (tmp_path / "b").exists()
