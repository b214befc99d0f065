"""export/golden/ is what the tiny model produces today, and fp32 bundles reproduce its tokens."""

import json
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parents[2] / "export" / "golden"


def test_golden_regenerates_identically(tmp_path, checkpoint):
    from alignkd.export.golden import write_golden

    fresh = write_golden(tmp_path, checkpoint)
    stored = json.loads((GOLDEN / "golden.json").read_text())
    assert fresh == stored
    for pair in stored["pairs"]:
        assert (tmp_path / pair["image"]).read_bytes() == (GOLDEN / pair["image"]).read_bytes()
        assert np.array_equal(np.load(tmp_path / pair["pixel_values"]), np.load(GOLDEN / pair["pixel_values"]))


def test_profile_prompt_vectors_are_current(checkpoint):
    """The apps' benchmark question is the host profile's (`fit_prompt`) for every prefill target."""
    from alignkd.export.golden import profile_prompt_vectors

    assert json.loads((GOLDEN / "profile_prompt.json").read_text()) == profile_prompt_vectors(checkpoint)


@pytest.mark.parametrize("target", ["executorch", "onnx"])
def test_fp32_bundles_reproduce_golden_tokens(bundles, target):
    pytest.importorskip({"executorch": "executorch", "onnx": "onnxruntime"}[target])
    import torch

    from alignkd.runtime.bundle import load_bundle
    from alignkd.runtime.generation import GenerationConfig, generate

    loaded = load_bundle(bundles(target, "fp32"))
    for pair in json.loads((GOLDEN / "golden.json").read_text())["pairs"]:
        pixels = torch.from_numpy(np.load(GOLDEN / pair["pixel_values"]))
        out = generate(loaded.backend, loaded.tokenizer, pair["prompt"], pixels, GenerationConfig(max_new_tokens=32))
        assert out.output_ids == pair["expected_tokens"]
        assert out.input_ids == pair["input_ids"]
