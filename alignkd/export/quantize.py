"""Quantization schemes per target, their validation, and the torchao / executorch / PT2E helpers.

Schemes (closed sets, `SCHEMES`):
- executorch: `fp32`; `8da8w` (int8 dynamic activations, int8 per-channel weights, int8 embedding);
  `8da4w` (int4 weights in groups of `group_size`, the lm_head int8 per channel (`LM_HEAD_BITS`), embedding
  int8 or int4 per `embedding_bits`).
  The vision encoder is fp32 or, with `vision_quant="int8"`, int8 linears with dynamic int8 activations
  (`quantize_vision_dynamic`; PT2E static int8 measured slower and less accurate, benchmarks/vision_encoder.py).
- onnx: `fp32`, `int8` (onnxruntime quantize_dynamic), `int4` (MatMulNBits, block = `group_size`; the lm_head
  8-bit MatMulNBits, `LM_HEAD_BITS`).
- coreml: `fp16`, `int8` (per channel), `int4` (per block of `group_size`), `palettize4` (4-bit LUT).
- gguf: `f32`, `f16`, `q8_0`, `q4_0`, `q4_k_s` (llama.cpp's own types and quantiser); the projector GGUF is
  fp16 (default for quantised models) or fp32 (`vision_quant`).

Every user-facing check raises AlignKDError before any heavy work (`check_options`).

    python -m pytest tests/export/test_errors.py
"""

from __future__ import annotations

import torch
from torch import nn

from alignkd.errors import AlignKDError

SCHEMES: dict[str, tuple[str, ...]] = {
    "executorch": ("fp32", "8da8w", "8da4w"),
    "onnx": ("fp32", "int8", "int4"),
    "coreml": ("fp16", "int8", "int4", "palettize4"),
    "gguf": ("f32", "f16", "q8_0", "q4_0", "q4_k_s"),
}
# What `--quant` means when omitted: full precision where the target has it; Core ML's floor is fp16.
DEFAULT_SCHEME = {"executorch": "fp32", "onnx": "fp32", "coreml": "fp16", "gguf": "f32"}
VISION_QUANT = ("fp32", "int8", "fp16")
EMBEDDING_BITS = (4, 8)
# Bits of the decoder's output projection (lm_head) in ExecuTorch 8da4w and ONNX int4. At int4 its rounding error
# shifts each token's logit by the same amount whatever the input, so a trained model whose yes/no answers are
# near ties decided by the language prior flips a whole class of them at once; llama.cpp's Q4_K_S keeps
# output.weight at 6 bits for the same reason. Measured on the shipped toy teacher (docs/export.md, "Accuracy of
# the quantised bundles", `python benchmarks/quant_accuracy.py alignkd/assets/synth_teacher`): with an int4 lm_head
# 8da4w changed 15% of the synthetic suite's answers (11% of POPE's, all towards Yes) and ONNX int4 31% (57% of
# POPE's); with an 8-bit one 2.8% and 3.3%. It costs vocab x hidden / 2 bytes more (33 MB at the 1.7B shape).
LM_HEAD_BITS = 8
EXTRAS = {"executorch": "executorch", "onnx": "onnx", "coreml": "coreml", "gguf": "gguf"}
# Modules each target needs, checked up front so a missing one is named before the model is loaded.
BACKEND_MODULES = {
    "executorch": ("executorch", "torchao"),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "coreml": ("coremltools",),
    "gguf": ("gguf", "llama_cpp"),
}


def check_options(target: str, quant: str, *, group_size: int, embedding_bits: int, vision_quant: str,
                  linear_in_features: tuple[int, ...] | None = None) -> None:
    """Refuse an unknown target/scheme or inconsistent options with one sentence naming the fix."""
    if target not in SCHEMES:
        raise AlignKDError(f"unknown export target {target!r}; valid targets: {', '.join(SCHEMES)}")
    if quant not in SCHEMES[target]:
        raise AlignKDError(f"unknown quantization scheme {quant!r} for target {target}; valid schemes: {', '.join(SCHEMES[target])}")
    if vision_quant not in VISION_QUANT:
        raise AlignKDError(f"unknown vision quantization {vision_quant!r}; valid: {', '.join(VISION_QUANT)}")
    if vision_quant == "int8" and target != "executorch":
        raise AlignKDError(f"--vision-quant int8 is only supported for the executorch target, not {target}; drop the option")
    if vision_quant == "fp16" and target != "gguf":
        raise AlignKDError(f"--vision-quant fp16 is only supported for the gguf target (its projector file), not {target}; drop the option")
    if embedding_bits not in EMBEDDING_BITS:
        raise AlignKDError(f"embedding bits {embedding_bits} are not supported; use one of {EMBEDDING_BITS}")
    if group_size <= 0:
        raise AlignKDError(f"group size {group_size} must be a positive integer such as 32")
    if target == "executorch" and quant == "8da4w" and group_size % 32:
        raise AlignKDError(f"group size {group_size} is not supported by XNNPACK's int4 kernels, which need a multiple of 32; pass --group-size 32, 64, 128 or 256")
    grouped = (target, quant) in {("executorch", "8da4w"), ("onnx", "int4"), ("coreml", "int4")}
    if grouped and linear_in_features:
        bad = sorted({n for n in linear_in_features if n % group_size})
        if bad:
            raise AlignKDError(
                f"group size {group_size} does not divide the model's layer width(s) {', '.join(map(str, bad))}; "
                f"pick a group size that divides them, such as {_common_divisor(linear_in_features)}"
            )


def _common_divisor(sizes) -> int:
    for g in (256, 128, 64, 32, 16, 8):
        if all(n % g == 0 for n in sizes):
            return g
    return 1


def check_backend(target: str) -> None:
    """Import the target's packages now, naming the pip extra if one is missing."""
    import importlib

    for name in BACKEND_MODULES[target]:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise AlignKDError(
                f"the {target} export needs the {name!r} package, which is not installed ({err}); "
                f"run: pip install 'alignkd[{EXTRAS[target]}]'"
            ) from err


# ---- ExecuTorch (torchao / executorch APIs) ---------------------------------------------------------------


def is_plain(t) -> bool:
    """A plain tensor or parameter: not yet a quantised tensor subclass (nor a fake or functional wrapper)."""
    return type(t) in (torch.Tensor, nn.Parameter)


def quantize_decoder_linears(module: nn.Module, scheme: str, group_size: int, lm_head: str | None = None) -> nn.Module:
    """In place: every nn.Linear to int8 dynamic activations + int4 (grouped) or int8 (per channel) weights; the
    linear named `lm_head` (its qualified name in `module`), if given, to int8 per-channel weights whatever the
    scheme (`LM_HEAD_BITS`)."""
    from torchao.quantization import quantize_

    # Linears whose weight is already a quantised tensor subclass are left as they are (layer-by-layer callers).
    plain = lambda m: isinstance(m, nn.Linear) and is_plain(m.weight)  # noqa: E731
    quantize_(module, _weight_config(scheme, group_size), filter_fn=lambda m, fqn: plain(m) and fqn != lm_head)
    if lm_head is not None:
        quantize_(module, _weight_config("8da8w", group_size), filter_fn=lambda m, fqn: plain(m) and fqn == lm_head)
    return module


def _weight_config(scheme: str, group_size: int):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))


def quantize_embedding(module: nn.Module, bits: int, group_size: int) -> nn.Module:
    """In place: nn.Embedding -> executorch's grouped int8 / packed int4 embedding (quantized_decomposed ops)."""
    from executorch.examples.models.llama.source_transformation.quantize import EmbeddingQuantHandler

    return EmbeddingQuantHandler(module, bitwidth=bits, group_size=group_size, packed=bits == 4).quantized_model()


def quantize_vision_pt2e(module: nn.Module, example: torch.Tensor, calibration: list[torch.Tensor]) -> nn.Module:
    """PT2E static int8 (per-channel weights) for XNNPACK, calibrated on `calibration` pixel tensors."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(module, (example,), strict=False).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for pixels in calibration:
            prepared(pixels)
    return convert_pt2e(prepared)


def quantize_vision_dynamic(module: nn.Module) -> nn.Module:
    """In place: the encoder's nn.Linear layers to int8 dynamic activations + int8 per-channel weights (XNNPACK's
    dynamically quantised fully-connected); everything else, the layer-norm statistics included, stays fp32."""
    return quantize_decoder_linears(module, "8da8w", group_size=0)


def synthetic_calibration(size: int, n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """Normalised-pixel-like tensors for calibration when no images are given (standard normal, clipped)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, size, size, generator=gen).clamp(-2, 2) for _ in range(n)]


# ---- ONNX (onnxruntime.quantization) ----------------------------------------------------------------------


def onnx_quantize(src, dst, scheme: str, block_size: int) -> None:
    """Quantize one .onnx file: int8 dynamic (MatMul/Gemm/Gather) or int4 MatMulNBits."""
    import os

    import onnx

    # A graph that needed external data (> 2 GB) may still need it after int8; int4 is ~8x smaller.
    external = os.path.exists(f"{src}.data")
    if scheme == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                         use_external_data_format=external)
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    # The decoder's output projection (the node writing `logits`) at LM_HEAD_BITS, as the ExecuTorch lm_head.
    head = [n.name for n in model.graph.node if "logits" in n.output and n.op_type == "MatMul"]
    quant = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True, nodes_to_exclude=head)
    quant.process()
    if head:
        quant = MatMulNBitsQuantizer(quant.model.model, bits=LM_HEAD_BITS, block_size=block_size, is_symmetric=True,
                                     nodes_to_include=head)
        quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=external)


# ---- Core ML (coremltools.optimize) -----------------------------------------------------------------------


def coreml_compress(mlmodel, scheme: str, block_size: int):
    """Weight compression of a converted mlprogram; `fp16` returns it unchanged."""
    if scheme == "fp16":
        return mlmodel
    import coremltools.optimize.coreml as oc

    if scheme == "int8":
        op = oc.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
        return oc.linear_quantize_weights(mlmodel, oc.OptimizationConfig(global_config=op))
    if scheme == "int4":
        op = oc.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=block_size)
        return oc.linear_quantize_weights(mlmodel, oc.OptimizationConfig(global_config=op))
    op = oc.OpPalettizerConfig(nbits=4, mode="kmeans")
    return oc.palettize_weights(mlmodel, oc.OptimizationConfig(global_config=op))
