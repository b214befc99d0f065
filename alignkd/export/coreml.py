"""Core ML target: `vision_encoder.mlpackage`, `token_embedding.mlpackage`, `text_decoder.mlpackage` (iOS 18).

The decoder is `parts.StatefulDecoder`: the KV cache lives in two fp16 Core ML states (`keyCache`,
`valueCache` [L,1,H,max_seq_len,hd]) updated in place by slice_update, inputs `inputs_embeds` [1,S,D] and an
additive `causal_mask` [1,1,S,past+S], output `logits` [1,S,V]; compute precision fp16. Compression via
coremltools.optimize: `int8` (per channel), `int4` (per block of `group_size`), `palettize4` (4-bit k-means
LUT). Conversion runs on Linux; prediction needs macOS 15+, so parity here is measured on the PyTorch module
that was converted (`module_parity`) and the produced programs are inspected (`program_summary`).

    alignkd export tests/fixtures/mobilevlm_official_tiny/checkpoint --target coreml --quant int4 -o out/tiny_coreml
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from alignkd.contract.decoder import causal_mask
from alignkd.export.parts import StatefulDecoder, TokenEmbedding, VisionEncoder
from alignkd.export.quantize import coreml_compress

FILES = {"vision_encoder": "vision_encoder.mlpackage", "token_embedding": "token_embedding.mlpackage",
         "text_decoder": "text_decoder.mlpackage"}
STATES = ("keyCache", "valueCache")


def _convert(module, example, inputs, outputs, states=None):
    import coremltools as ct

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example)
        return ct.convert(traced, inputs=inputs, outputs=outputs, states=states or None, convert_to="mlprogram",
                          minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT16,
                          skip_model_load=True)


def export_coreml(model, out: Path, quant: str, *, block_size: int, max_seq_len: int) -> dict:
    """Convert, compress and save the three packages into `out`; returns the manifest's `parts` entries."""
    import coremltools as ct

    cfg = model.config
    dim, vocab, size = cfg.llm.hidden_size, cfg.llm.vocab_size, cfg.image.size
    seq, total = ct.RangeDim(1, max_seq_len, default=1), ct.RangeDim(1, max_seq_len, default=1)
    vision = _convert(VisionEncoder(model).eval(), (torch.zeros(1, 3, size, size),),
                      [ct.TensorType(name="pixel_values", shape=(1, 3, size, size), dtype=np.float32)],
                      [ct.TensorType(name="image_tokens", dtype=np.float32)])
    embedding = _convert(TokenEmbedding(model).eval(), (torch.ones(1, 4, dtype=torch.int32),),
                         [ct.TensorType(name="input_ids", shape=(1, seq), dtype=np.int32)],
                         [ct.TensorType(name="embeddings", dtype=np.float32)])
    decoder_module = StatefulDecoder(model, max_seq_len).eval()
    cache_shape = tuple(decoder_module.keyCache.shape)
    decoder = _convert(
        decoder_module, (torch.zeros(1, 4, dim), causal_mask(6, 4)),
        [ct.TensorType(name="inputs_embeds", shape=(1, seq, dim), dtype=np.float32),
         ct.TensorType(name="causal_mask", shape=(1, 1, seq, total), dtype=np.float32)],
        [ct.TensorType(name="logits", dtype=np.float32)],
        [ct.StateType(wrapped_type=ct.TensorType(shape=cache_shape, dtype=np.float16), name=n) for n in STATES],
    )
    for part, mlmodel in (("vision_encoder", vision), ("token_embedding", embedding), ("text_decoder", decoder)):
        coreml_compress(mlmodel, quant, block_size).save(str(out / FILES[part]))
    t = lambda name, shape, dtype="float32": {"name": name, "shape": shape, "dtype": dtype}
    return {
        "vision_encoder": {"file": FILES["vision_encoder"], "function": "main", "quant": quant,
                           "inputs": [t("pixel_values", [1, 3, size, size])],
                           "outputs": [t("image_tokens", [1, cfg.num_image_tokens, dim])]},
        "token_embedding": {"file": FILES["token_embedding"], "function": "main", "quant": quant,
                            "inputs": [t("input_ids", [1, "seq"], "int32")], "outputs": [t("embeddings", [1, "seq", dim])]},
        "text_decoder": {"file": FILES["text_decoder"], "function": "main", "quant": quant,
                         "inputs": [t("inputs_embeds", [1, "seq", dim]), t("causal_mask", [1, 1, "seq", "past+seq"])],
                         "outputs": [t("logits", [1, "seq", vocab])],
                         "states": [t(n, list(cache_shape), "float16") for n in STATES]},
    }


def program_summary(package: Path) -> dict:
    """Inputs, outputs, states and the MIL op counts of a saved .mlpackage (no prediction, works on Linux)."""
    import coremltools as ct

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    desc = spec.description
    ops = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
    return {
        "spec_version": spec.specificationVersion,
        "inputs": [i.name for i in desc.input],
        "outputs": [o.name for o in desc.output],
        "states": [s.name for s in desc.state],
        "ops": dict(ops),
    }


@torch.inference_mode()
def module_parity(model, max_seq_len: int, n_prompt: int = 24, n_steps: int = 8, seed: int = 0) -> dict:
    """The converted PyTorch decoder (fp16 cache) vs eager: prefill + teacher-forced decode steps."""
    from alignkd.export.parity import metrics
    from alignkd.runtime.generation import EagerBackend

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.llm.vocab_size, (1, n_prompt + n_steps), generator=gen)
    eager, module = EagerBackend(model), StatefulDecoder(model, max_seq_len).eval()
    embeds = eager.embed_tokens(ids)
    ref = [eager.prefill(embeds[:, :n_prompt])]
    got = [module(embeds[:, :n_prompt], causal_mask(0, n_prompt))[0, -1]]
    for i in range(n_prompt, n_prompt + n_steps - 1):
        ref.append(eager.decode(embeds[:, i:i + 1], i))
        got.append(module(embeds[:, i:i + 1], causal_mask(i, 1))[0, -1])
    ref_t, got_t = torch.stack(ref), torch.stack(got)
    agree = float((ref_t.argmax(-1) == got_t.argmax(-1)).float().mean())
    return {"text_decoder_module": {**metrics(ref_t, got_t), "argmax_agreement": agree, "steps": len(ref)}}
