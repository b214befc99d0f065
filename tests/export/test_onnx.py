"""ONNX bundles: graph names, parity at export, quantized variants, and the runtime loop."""

import pytest

from tests.export.conftest import manifest_of

pytest.importorskip("onnxruntime")


def test_decoder_graph_names(bundles, checkpoint):
    import onnx

    bundle = bundles("onnx", "fp32")
    graph = onnx.load(str(bundle / "text_decoder.onnx"), load_external_data=False).graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    assert inputs[:3] == ["inputs_embeds", "attention_mask", "position_ids"]
    assert inputs[3:7] == ["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]
    assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    parts = manifest_of(bundle)["parts"]
    assert [t["name"] for t in parts["text_decoder"]["inputs"]] == inputs
    assert [t["name"] for t in parts["text_decoder"]["outputs"]] == outputs


def test_fp32_parity_is_exact(bundles):
    parity = manifest_of(bundles("onnx", "fp32"))["parity"]
    assert parity["passed"] and parity["end_to_end"]["exact_match"]
    assert parity["parts"]["text_decoder"]["max_abs"] < 1e-4


@pytest.mark.parametrize("quant,op", [("int8", "DynamicQuantizeLinear"), ("int4", "MatMulNBits")])
def test_quantized(bundles, quant, op):
    import onnx

    from alignkd.export.parity import MIN_LOGIT_COSINE, MIN_TOKEN_AGREEMENT

    bundle = bundles("onnx", quant)
    m = manifest_of(bundle)
    ops = {n.op_type for n in onnx.load(str(bundle / "text_decoder.onnx")).graph.node}
    assert op in ops
    e2e = m["parity"]["end_to_end"]
    assert e2e["token_agreement"] >= MIN_TOKEN_AGREEMENT[quant] and e2e["logit_cosine"] >= MIN_LOGIT_COSINE[quant]
    fp32 = manifest_of(bundles("onnx", "fp32"))
    assert m["files"]["text_decoder.onnx"]["bytes"] < fp32["files"]["text_decoder.onnx"]["bytes"]


def test_int4_keeps_the_lm_head_at_8_bits(bundles):
    """As the ExecuTorch 8da4w lm_head (alignkd.export.quantize.LM_HEAD_BITS): the node writing `logits` is an
    8-bit MatMulNBits, every other decoder MatMulNBits 4-bit."""
    import onnx

    bundle = bundles("onnx", "int4")
    nodes = [n for n in onnx.load(str(bundle / "text_decoder.onnx")).graph.node if n.op_type == "MatMulNBits"]
    bits = {n.output[0]: next(a.i for a in n.attribute if a.name == "bits") for n in nodes}
    assert bits.pop("logits") == 8 and set(bits.values()) == {4}
    assert manifest_of(bundle)["quant"]["lm_head_bits"] == 8


def test_generate_on_bundle_equals_checkpoint(bundles, checkpoint, fixture_dir):
    from alignkd.runtime.run import generate_from_checkpoint

    image = fixture_dir / "images" / "img1.png"
    q = "Describe the image."
    ref = generate_from_checkpoint(checkpoint, q, image, max_new_tokens=24)
    got = generate_from_checkpoint(bundles("onnx", "fp32"), q, image, max_new_tokens=24)
    assert got.output_ids == ref.output_ids
