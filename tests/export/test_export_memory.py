"""The ExecuTorch export's stages and memory: it reports each stage while it runs, and the eager model is not
resident while XNNPACK lowers (the 1.7B export peaked at 15.65 GB holding the eager fp32 model throughout)."""

import gc
import weakref
from pathlib import Path

import pytest

from tests.export.conftest import manifest_of

STAGES = ["load", "quantise", "export", "lower", "serialise", "reload", "parity"]


def test_manifest_records_every_stage(bundles):
    m = manifest_of(bundles("executorch", "fp32"))
    assert list(m["export"]["stages"]) == STAGES
    assert all(seconds >= 0 for seconds in m["export"]["stages"].values())


def test_stage_lines_are_printed(bundles):
    bundles("executorch", "fp32")
    args, result = bundles.runs[("executorch", "fp32")]
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    for stage in STAGES:
        assert f"{stage} done in" in text, stage


class _Stop(Exception):
    pass


def test_eager_model_is_released_before_lowering(checkpoint, tmp_path, monkeypatch):
    import alignkd.export.executorch as et
    import alignkd.models.checkpoint as ckpt
    from alignkd.export import export_bundle

    loaded = []
    real_load = ckpt.load_checkpoint

    def load(*args, **kwargs):
        model, tokenizer = real_load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model, tokenizer

    def lower(traced, out, stages):
        gc.collect()
        assert [ref() is None for ref in loaded] == [True], "the eager model is still referenced while lowering"
        assert set(traced["programs"]) == {"vision_encoder", "token_embedding", "text_decoder"}
        raise _Stop

    monkeypatch.setattr(ckpt, "load_checkpoint", load)
    monkeypatch.setattr(et, "lower_executorch", lower)
    with pytest.raises(_Stop):
        export_bundle(checkpoint, "executorch", "fp32", tmp_path / "b", max_seq_len=256)
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []  # the staging folder is gone too


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads the process's mappings from /proc (Linux)")
def test_checkpoint_is_unmapped_while_lowering(checkpoint, tmp_path, monkeypatch):
    """The kept unquantised tensors (norms, biases, ...) are copied out of the memory-mapped checkpoint, so dropping
    the eager model unmaps the file: at 1.7B its 6.3 GB of pages stayed in the RSS through lowering, and parity's
    reload mapped it a second time (20.6 GB)."""
    import shutil

    import alignkd.export.executorch as et
    from alignkd.export import export_bundle

    # A private copy: other tests of the session may hold models loaded from the shared fixture, which map it too.
    checkpoint = Path(shutil.copytree(checkpoint, tmp_path / "checkpoint"))
    weights = str((checkpoint / "model.safetensors").resolve())
    mapped = lambda: [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(weights)]

    def lower(traced, out, stages):
        gc.collect()
        assert mapped() == [], "the checkpoint is still memory-mapped while lowering"
        raise _Stop

    monkeypatch.setattr(et, "lower_executorch", lower)
    with pytest.raises(_Stop):
        export_bundle(checkpoint, "executorch", "8da4w", tmp_path / "b", max_seq_len=256, vision_quant="int8")


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads the process's mappings from /proc (Linux)")
def test_release_mapped_pages_drops_a_mapped_checkpoint_from_the_rss_and_keeps_the_values(tmp_path):
    """Quantising reads every weight of the memory-mapped checkpoint, and each page read stayed in the RSS
    (6.8 GB at 1.7B, the export's 12.7 GB peak); released, the tensors still read the file's values, and a tensor
    in anonymous memory (which the same madvise would zero) is left alone."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from alignkd.export.executorch import release_mapped_pages
    from alignkd.export.progress import rss_now

    weight = torch.randn(2048, 2048)  # 16 MiB
    save_file({"w": weight, "b": torch.arange(5.0)}, str(tmp_path / "model.safetensors"))
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        mapped, small = f.get_tensor("w"), f.get_tensor("b")
    anon = torch.randn(512, 512)
    expected = anon.clone()
    assert torch.equal(mapped, weight)  # every page read: now resident
    before = rss_now()["file"]
    released = release_mapped_pages([mapped, small, anon])
    assert mapped.nbytes <= released <= mapped.nbytes + 4 * 4096
    assert rss_now()["file"] < before - 0.9 * mapped.nbytes
    assert torch.equal(mapped, weight) and torch.equal(small, torch.arange(5.0)) and torch.equal(anon, expected)


def test_no_traced_weight_outlives_the_written_bundle(checkpoint, tmp_path):
    """Once model.pte is written, no quantised weight of the trace is alive: torch's ShapeEnv kept every traced tensor
    (`tracked_fakes`) and outlived the export, so at 1.7B ~6 GB stayed allocated into parity, next to the reloaded
    eager model (13.2 GB peak)."""
    import torch

    from alignkd.export.executorch import lower_executorch, trace_executorch
    from alignkd.export.progress import Stages
    from alignkd.export.quantize import synthetic_calibration
    from alignkd.models.checkpoint import load_checkpoint

    quantised = lambda: {id(o) for o in gc.get_objects() if isinstance(o, torch.Tensor) and type(o).__name__ == "IntxUnpackedToInt8Tensor"}
    earlier = quantised()  # left by tests that stop an export before it lowers
    model, tokenizer = load_checkpoint(checkpoint)
    traced = trace_executorch(model, tokenizer, "8da4w", group_size=32, embedding_bits=8, vision_quant="int8",
                              max_seq_len=256, calibration=synthetic_calibration(model.config.image.size), stages=Stages())
    model = None
    lower_executorch(traced, tmp_path, Stages())
    traced = None
    gc.collect()
    assert (tmp_path / "model.pte").stat().st_size > 0 and quantised() - earlier == set()
