"""ONNX target: `vision_encoder.onnx`, `token_embedding.onnx`, `text_decoder.onnx` (torch.onnx dynamo exporter).

The decoder takes `inputs_embeds` [1,S,D], `attention_mask` [1,P+S], `position_ids` [1,S] and
`past_key_values.N.key|value` [1,H,P,hd] and returns `logits` [1,S,V] and `present.N.key|value` (optimum /
ORT GenAI names); prefill runs with P = 0. Files above 2 GB keep their weights as external data
(`<file>.data`, the protobuf limit). Schemes: `fp32`; `int8` = onnxruntime quantize_dynamic on all three
parts; `int4` = MatMulNBits (block = group size) on the decoder with the vision encoder and the embedding at
int8 (the embedding is a Gather, which MatMulNBits does not cover).

    alignkd export tests/fixtures/mobilevlm_official_tiny/checkpoint --target onnx --quant int4 -o out/tiny_onnx
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from alignkd.export.parts import PastKVDecoder, TokenEmbedding, VisionEncoder
from alignkd.export.quantize import onnx_quantize

FILES = {"vision_encoder": "vision_encoder.onnx", "token_embedding": "token_embedding.onnx", "text_decoder": "text_decoder.onnx"}
EXTERNAL_DATA_BYTES = 1_800_000_000  # below protobuf's 2 GB hard limit, with room for the graph itself


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes, n_bytes: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=input_names, output_names=output_names,
                          dynamic_shapes=dynamic_shapes, external_data=n_bytes > EXTERNAL_DATA_BYTES, optimize=True,
                          verbose=False)


def _param_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_onnx(model, out: Path, quant: str, *, block_size: int, max_seq_len: int) -> dict:
    """Write the three .onnx files into `out`; returns the manifest's `parts` entries."""
    from torch.export import Dim

    cfg = model.config
    llm = cfg.llm
    dim, n_layers, n_kv = llm.hidden_size, llm.num_hidden_layers, llm.num_key_value_heads
    head_dim = dim // llm.num_attention_heads
    size = cfg.image.size
    # fp32 graphs go to a scratch subfolder first when they are to be quantized.
    stage = out / "_fp32" if quant != "fp32" else out
    stage.mkdir(exist_ok=True)
    seq = Dim("seq", min=1, max=max_seq_len)
    vision, embedding, decoder = VisionEncoder(model).eval(), TokenEmbedding(model).eval(), PastKVDecoder(model).eval()
    _export(vision, (torch.zeros(1, 3, size, size),), stage / FILES["vision_encoder"], ["pixel_values"], ["image_tokens"],
            None, _param_bytes(vision))
    _export(embedding, (torch.ones(1, 4, dtype=torch.long),), stage / FILES["token_embedding"], ["input_ids"],
            ["inputs_embeds"], ({1: seq},), _param_bytes(embedding))
    kv_names = [f"past_key_values.{i}.{k}" for i in range(n_layers) for k in ("key", "value")]
    present = [f"present.{i}.{k}" for i in range(n_layers) for k in ("key", "value")]
    past, total = Dim("past", min=0, max=max_seq_len), Dim("total", min=1, max=2 * max_seq_len)
    # Example sizes >= 2 on every dynamic axis: 0 and 1 would be specialised into the graph.
    example = (torch.randn(1, 3, dim), torch.ones(1, 8, dtype=torch.long), torch.arange(5, 8)[None],
               tuple(torch.randn(1, n_kv, 5, head_dim) for _ in kv_names))
    _export(decoder, example, stage / FILES["text_decoder"], ["inputs_embeds", "attention_mask", "position_ids", *kv_names],
            ["logits", *present], ({1: seq}, {1: total}, {1: seq}, tuple({2: past} for _ in kv_names)),
            _param_bytes(model.llm))
    quants = {"vision_encoder": quant, "token_embedding": quant, "text_decoder": quant}
    if quant != "fp32":
        quants = {"vision_encoder": "int8", "token_embedding": "int8", "text_decoder": quant}
        for part, scheme in quants.items():
            onnx_quantize(stage / FILES[part], out / FILES[part], scheme, block_size)
        import shutil

        shutil.rmtree(stage)
    t = lambda name, shape, dtype="float32": {"name": name, "shape": shape, "dtype": dtype}
    kv_shape = [1, n_kv, "past", head_dim]
    return {
        "vision_encoder": {"file": FILES["vision_encoder"], "quant": quants["vision_encoder"],
                           "inputs": [t("pixel_values", [1, 3, size, size])],
                           "outputs": [t("image_tokens", [1, cfg.num_image_tokens, dim])]},
        "token_embedding": {"file": FILES["token_embedding"], "quant": quants["token_embedding"],
                            "inputs": [t("input_ids", [1, "seq"], "int64")], "outputs": [t("inputs_embeds", [1, "seq", dim])]},
        "text_decoder": {"file": FILES["text_decoder"], "quant": quants["text_decoder"],
                         "inputs": [t("inputs_embeds", [1, "seq", dim]), t("attention_mask", [1, "past+seq"], "int64"),
                                    t("position_ids", [1, "seq"], "int64"), *[t(n, kv_shape) for n in kv_names]],
                         "outputs": [t("logits", [1, "seq", llm.vocab_size]),
                                     *[t(n, [1, n_kv, "past+seq", head_dim]) for n in present]]},
    }
