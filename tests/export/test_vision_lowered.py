"""The ExecuTorch vision encoder: the XNNPACK-shaped module equals the eager encoder, and the exported
`vision_encoder` method is one XNNPACK delegate with no operator left to the portable kernels."""

from collections import Counter

import pytest
import torch

from alignkd.export.parts import VisionEncoder
from alignkd.export.vision_lowered import LoweredVisionEncoder

from tests.export.conftest import manifest_of


def method_calls(pte, method: str) -> Counter:
    """Instructions of one method of a .pte: `delegate` calls and each non-delegated operator by name."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = next(p for p in deserialize_pte_binary(pte.read_bytes()).program.execution_plan if p.name == method)
    calls = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if hasattr(args, "delegate_index"):
                calls["delegate"] += 1
            elif hasattr(args, "op_index"):
                calls[plan.operators[args.op_index].name] += 1
    return calls


@torch.inference_mode()
@pytest.mark.parametrize("preset", [None, "synth_student"])
def test_lowered_encoder_equals_the_eager_encoder(official, preset):
    """Same weights, same maths: the official tiny fixture (24x24 grid, avg_pool2d(2)) and the toy grid (12 -> 3)."""
    from alignkd.models.mobilevlm import MobileVLM, get_preset

    torch.manual_seed(0)
    model = official[0] if preset is None else MobileVLM(get_preset(preset)).eval()
    size = model.config.image.size
    pixels = torch.randn(1, 3, size, size)
    ref = VisionEncoder(model)(pixels)
    assert (LoweredVisionEncoder(model)(pixels) - ref).abs().max() < 1e-5
    assert (model.encode_images(pixels) - ref).abs().max() < 1e-5


def test_int8_leaves_the_eager_model_fp32(official):
    """Quantising the exported encoder's linears must not touch the eager model it shares weights with."""
    from alignkd.export.quantize import quantize_vision_dynamic

    model, _ = official
    eager_q = VisionEncoder(model).layers[0].self_attn.q_proj
    weight = eager_q.weight
    lowered = quantize_vision_dynamic(LoweredVisionEncoder(model))
    assert eager_q.weight is weight and type(weight) is torch.nn.Parameter
    assert type(lowered.layers[0].attn.q_proj.weight) is not torch.nn.Parameter  # the copy did get quantised


def test_exported_vision_encoder_is_one_xnnpack_delegate(bundles):
    """Before: 9 XNNPACK segments on the tiny fixture (93 at the 1.7B shape) with layer norms, SDPA's masked
    softmax and expand_copy left to the portable kernels."""
    calls = method_calls(bundles("executorch", "fp32") / "model.pte", "vision_encoder")
    assert calls == Counter({"delegate": 1}), calls


def test_int8_vision_encoder_is_delegated_and_checked(bundles):
    bundle = bundles("executorch", "8da4w", vision_quant="int8")
    calls = method_calls(bundle / "model.pte", "vision_encoder")
    assert calls["delegate"] == 1 and sum(calls.values()) == 1, calls
    m = manifest_of(bundle)
    assert m["parts"]["vision_encoder"]["quant"] == "int8"
    assert m["parity"]["thresholds"]["min_image_token_cosine"] == 0.99
    assert m["parity"]["parts"]["vision_encoder"]["cosine"] >= 0.99
