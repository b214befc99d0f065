"""Core ML bundles: the produced programs (inputs, outputs, states, ops, compression) and the converted modules.

Prediction needs macOS 15+; those tests carry the `macos` marker.
"""

import platform

import pytest

from tests.export.conftest import manifest_of

pytest.importorskip("coremltools")


def test_fp16_programs(bundles):
    from alignkd.export.coreml import program_summary

    bundle = bundles("coreml", "fp16")
    m = manifest_of(bundle)
    dec = program_summary(bundle / "text_decoder.mlpackage")
    assert dec["spec_version"] >= 9  # iOS 18
    assert dec["inputs"] == ["inputs_embeds", "causal_mask"] and dec["outputs"] == ["logits"]
    assert dec["states"] == ["keyCache", "valueCache"]
    assert dec["ops"].get("slice_update", 0) >= 2 and dec["ops"].get("read_state", 0) >= 2
    assert dec["ops"].get("scaled_dot_product_attention") == m["model"]["num_layers"]
    vision = program_summary(bundle / "vision_encoder.mlpackage")
    assert vision["inputs"] == ["pixel_values"] and "avg_pool" in vision["ops"]
    emb = program_summary(bundle / "token_embedding.mlpackage")
    assert emb["inputs"] == ["input_ids"] and "gather" in emb["ops"]
    assert m["parts"]["text_decoder"]["states"][0]["dtype"] == "float16"


def test_converted_modules_match_eager(bundles):
    parity = manifest_of(bundles("coreml", "fp16"))["parity"]
    assert parity["measured"] is False and "macOS" in parity["reason"]
    assert parity["parts"]["vision_encoder_module"]["max_abs"] < 1e-5
    dec = parity["parts"]["text_decoder_module"]
    assert dec["argmax_agreement"] == 1.0 and dec["cosine"] > 0.9999


def test_int4_is_compressed(bundles):
    from alignkd.export.coreml import program_summary

    bundle = bundles("coreml", "int4")
    ops = program_summary(bundle / "text_decoder.mlpackage")["ops"]
    assert ops.get("constexpr_blockwise_shift_scale", 0) >= 2 * 7  # every linear of both layers, plus lm_head
    size = lambda b: sum(e["bytes"] for k, e in manifest_of(b)["files"].items() if k.startswith("text_decoder"))
    assert size(bundle) < size(bundles("coreml", "fp16"))


@pytest.mark.slow
@pytest.mark.parametrize("quant,op", [("int8", "constexpr_blockwise_shift_scale"), ("palettize4", "constexpr_lut_to_dense")])
def test_other_compressions(bundles, quant, op):
    from alignkd.export.coreml import program_summary

    assert op in program_summary(bundles("coreml", quant) / "text_decoder.mlpackage")["ops"]


def test_backend_refuses_off_macos(bundles):
    from alignkd.errors import AlignKDError
    from alignkd.runtime.bundle import load_bundle

    if platform.system() == "Darwin":
        pytest.skip("on macOS the backend loads")
    with pytest.raises(AlignKDError, match="Core ML prediction needs macOS 15\\+"):
        load_bundle(bundles("coreml", "fp16"))


@pytest.mark.macos
def test_prediction_matches_checkpoint(bundles, checkpoint, fixture_dir):
    """On macOS 15+: the Core ML bundle's greedy tokens track the checkpoint's (fp16 compute)."""
    from alignkd.runtime.run import generate_from_checkpoint

    image = fixture_dir / "images" / "img0.png"
    ref = generate_from_checkpoint(checkpoint, "What is this?", image, max_new_tokens=8)
    got = generate_from_checkpoint(bundles("coreml", "fp16"), "What is this?", image, max_new_tokens=8)
    assert got.output_ids[:4] == ref.output_ids[:4]
