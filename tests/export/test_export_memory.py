"""The ExecuTorch export's stages and memory: it reports each stage while it runs, the eager model is not
resident while XNNPACK lowers (the 1.7B export peaked at 15.65 GB holding the eager fp32 model throughout), and
parity compares the bundle with the eager answers recorded after load instead of reloading the model next to the
bundle (12.7 GB)."""

import gc
import weakref
from pathlib import Path

import pytest

from tests.export.conftest import manifest_of

STAGES = ["load", "reference", "quantise", "export", "lower", "serialise", "parity"]


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
    """Once model.pte is written, no quantised weight of the trace and no lowered graph is alive: torch's ShapeEnv
    kept every traced tensor (`tracked_fakes`) and outlived the export, so at 1.7B ~6 GB stayed allocated into parity,
    next to the reloaded eager model (13.2 GB peak), and library caches kept the lowered graphs (~4.2 GB)."""
    import torch

    from alignkd.export.executorch import lower_executorch, trace_executorch
    from alignkd.export.progress import Stages
    from alignkd.export.quantize import synthetic_calibration
    from alignkd.models.checkpoint import load_checkpoint

    quantised = lambda: {id(o) for o in gc.get_objects() if isinstance(o, torch.Tensor) and type(o).__name__ == "IntxUnpackedToInt8Tensor"}
    # The lowered graphs hold the quantised weights as parameters (each delegate keeps its original program):
    # ExecuTorch's is_same_node lru_cache, the fake-tensor dispatch cache and the XNNPACK configs' `why` loggers
    # kept them alive after the export (the 1.7B export's ~4.2 GB after serialise).
    kinds = ("LoweredBackendModule", "ExportedProgram")
    lowered = lambda: {id(o) for o in gc.get_objects() if type(o).__name__ in kinds}
    earlier, earlier_lowered = quantised(), lowered()  # left by tests that stop an export before it lowers
    model, tokenizer = load_checkpoint(checkpoint)
    traced = trace_executorch(model, tokenizer, "8da4w", group_size=32, embedding_bits=8, vision_quant="int8",
                              max_seq_len=256, calibration=synthetic_calibration(model.config.image.size), stages=Stages())
    model = None
    lower_executorch(traced, tmp_path, Stages())
    traced = None
    gc.collect()
    assert (tmp_path / "model.pte").stat().st_size > 0 and quantised() - earlier == set()
    assert lowered() - earlier_lowered == set(), "a lowered graph outlives the written bundle"


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads the process's mappings from /proc (Linux)")
def test_parity_runs_without_the_eager_model(checkpoint, tmp_path, monkeypatch):
    """The checkpoint is loaded once: while parity runs, no eager model is alive and its file is not mapped (at
    1.7B the reload for parity put 6.7 GB of its pages next to the loaded bundle: the 12.7 GB peak). Lowering is
    stubbed out (no model.pte), so the check costs the tiny trace only."""
    import shutil

    import alignkd.export.api as api
    import alignkd.export.executorch as et
    import alignkd.models.checkpoint as ckpt
    from alignkd.export import export_bundle
    from alignkd.export.reference import Reference

    checkpoint = Path(shutil.copytree(checkpoint, tmp_path / "checkpoint"))  # mapped by this test only
    weights = str((checkpoint / "model.safetensors").resolve())
    mapped = lambda: [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(weights)]
    loaded, real_load = [], ckpt.load_checkpoint

    def load(*args, **kwargs):
        model, tokenizer = real_load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model, tokenizer

    def measure(eager, model, *args):
        gc.collect()
        assert len(loaded) == 1 and loaded[0]() is None and model is None, "an eager model is alive during parity"
        assert mapped() == [], "the checkpoint is memory-mapped during parity"
        assert isinstance(eager, Reference) and eager.eager is None and eager.answers
        raise _Stop

    monkeypatch.setattr(ckpt, "load_checkpoint", load)
    monkeypatch.setattr(et, "lower_executorch", lambda traced, out, stages: traced.pop("programs"))
    monkeypatch.setattr(api, "_measure", measure)
    with pytest.raises(_Stop):
        export_bundle(checkpoint, "executorch", "8da4w", tmp_path / "b", max_seq_len=256, vision_quant="int8")


def test_recorded_parity_equals_parity_against_the_eager_model(bundles, checkpoint):
    """The manifest's parity (measured against the recorded answers) is what the same bundle measures against the
    eager model itself, figure for figure: recording changes where the eager answers come from, not the judgement."""
    import json

    from alignkd.export.api import _measure
    from alignkd.models.checkpoint import load_checkpoint
    from alignkd.runtime.generation import EagerBackend

    bundle = bundles("executorch", "8da4w")
    manifest = manifest_of(bundle)
    model, tokenizer = load_checkpoint(checkpoint)
    recorded = manifest["parity"]
    direct = _measure(EagerBackend(model), model, tokenizer, model.config, bundle, manifest, "8da4w",
                      recorded["allow_drift"])
    assert recorded["parts"] and recorded["end_to_end"]["pairs"] and recorded["answers"]["prompts"]
    assert _differences(recorded, json.loads(json.dumps(direct))) == []


def _differences(a, b, path="parity") -> list[str]:
    """Where nested dicts and lists differ (floats to 1e-9 relative)."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for k in a for d in _differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if a == pytest.approx(b, rel=1e-9, abs=1e-12) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_reference_answers_only_what_it_recorded(checkpoint):
    """Replayed, a call the recording did not make (other inputs, or a decode after another prefill: the KV cache
    differs) is refused, never answered with another call's answer."""
    import torch

    from alignkd.data.image import ImageProcessor
    from alignkd.data.templates import tokenize_with_image
    from alignkd.export import parity
    from alignkd.export.reference import record
    from alignkd.models.checkpoint import load_checkpoint
    from alignkd.runtime.generation import EagerBackend, build_prompt, splice_prompt

    model, tokenizer = load_checkpoint(checkpoint)
    reference = record(model, tokenizer, model.config.image)
    pixels, ids = parity.probe(tokenizer, model.config.image)
    eager = EagerBackend(model)
    embeds, n = splice_prompt(reference, ids, pixels)[0], len(ids) - 1 + reference.encode_image(pixels).shape[1]
    assert embeds.shape[1] == n and torch.equal(reference.prefill(embeds), eager.prefill(embeds))
    step = reference.embed_tokens(torch.tensor([[int(eager.prefill(embeds).argmax())]]))  # greedy's first token
    assert torch.equal(reference.decode(step, n), eager.decode(step, n))
    with pytest.raises(RuntimeError, match="no eager answer"):
        reference.encode_image(pixels + 1)
    with pytest.raises(RuntimeError, match="no eager answer"):
        reference.prefill(embeds[:, :-1])
    image, question = parity.yes_no_pairs()[0]
    other = tokenize_with_image(build_prompt(question, 1), tokenizer)
    reference.prefill(splice_prompt(reference, other, ImageProcessor(model.config.image)([image]))[0])  # recorded
    with pytest.raises(RuntimeError, match="no eager answer"):
        reference.decode(step, n)  # recorded after the golden prompt's prefill, not this one's
