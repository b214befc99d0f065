"""GGUF target: a llama.cpp bundle (language model GGUF + MobileVLM V2 `ldpv2` multimodal projector GGUF).

- `model.gguf`: the LLaMA decoder as llama.cpp's `llama` architecture, with our SentencePiece tokenizer as
  llama.cpp reads one (`tokenizer.ggml.model = llama`: pieces, scores, token types, bos/eos/unk/pad ids,
  add_bos). Written in f32 with the `gguf` package (q/k rows permuted to llama.cpp's RoPE layout, as its own
  `convert_hf_to_gguf.py` does), then, for `f16`, `q8_0`, `q4_0`, `q4_k_s`, quantised by llama.cpp's own
  quantiser (`llama_model_quantize` through llama-cpp-python), so the file is the one `llama-quantize` writes.
- `mmproj.gguf`: CLIP up to `mm_vision_select_layer` and the LDPv2 projector, as llama.cpp's clip/mtmd loads
  MobileVLM V2 (`clip.projector_type = ldpv2`, the tensor names of its legacy `convert_image_encoder_to_gguf.py`),
  f32 or f16 (2-D and 4-D weights in f16, the rest f32, as that converter does).
- With `--vision-runtime pytorch`, for a model whose vision side mtmd cannot run (a CLIP patch grid other than
  24x24, such as the synthetic world's toy teacher): `vision_encoder.safetensors` instead of `mmproj.gguf`, the
  CLIP tower and LDPv2 projector in fp32, which the GGUF runtime runs in eager PyTorch (the checkpoint's own
  `MobileVLM.encode_images`) next to llama.cpp's decoder. The manifest says so (`parts.vision_encoder.runtime:
  pytorch`) and so do `alignkd generate` / `eval` (kind `gguf+pytorch-vision`): the image tokens are not llama.cpp's.

    alignkd export tests/fixtures/mobilevlm_official_tiny/checkpoint --target gguf --quant q4_k_s -o out/tiny_gguf
    alignkd export alignkd/assets/synth_teacher --target gguf --quant q8_0 --vision-runtime pytorch -o out/teacher_gguf
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from alignkd.errors import AlignKDError

MODEL_FILE = "model.gguf"
PROJECTOR_FILE = "mmproj.gguf"
VISION_FILE = "vision_encoder.safetensors"  # --vision-runtime pytorch
# Who computes the image tokens: llama.cpp's mtmd on mmproj.gguf (the default), or eager PyTorch.
VISION_RUNTIMES = ("llama.cpp", "pytorch")
# llama.cpp's LDPv2 graph (tools/mtmd/models/llava.cpp) hard-codes a 24x24 CLIP patch grid before the 2x2 pool.
LDPV2_GRID = 24
# --quant -> llama.cpp's `enum llama_ftype` (include/llama.h); f32 is written directly, never quantised.
FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_s": 14}
PROJECTOR_DTYPES = ("fp32", "fp16")
# sentencepiece piece kinds -> llama.cpp token types (llama_token_type / gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def check_vision_runtime(target: str, vision_runtime: str | None, vision_quant: str | None) -> str:
    """The vision runtime to use (llama.cpp unless given); refuses one that does not fit the target or options."""
    if vision_runtime is None:
        return "llama.cpp"
    if vision_runtime not in VISION_RUNTIMES:
        raise AlignKDError(f"unknown vision runtime {vision_runtime!r}; valid: {', '.join(VISION_RUNTIMES)}")
    if target != "gguf":
        raise AlignKDError(f"--vision-runtime is only for the gguf target, not {target} (its vision encoder is always its own "
                           "runtime's); drop the option")
    if vision_runtime == "pytorch" and vision_quant not in (None, "fp32"):
        raise AlignKDError(f"--vision-runtime pytorch keeps the vision encoder in fp32, not {vision_quant}; drop --vision-quant")
    return vision_runtime


def check_model(config, vision_runtime: str = "llama.cpp") -> None:
    """Refuse, before any work, a model llama.cpp's MobileVLM V2 path cannot run (with the PyTorch vision runtime,
    only what the language model needs)."""
    vision = config.vision
    if config.projector_type != "ldpnetv2":
        raise AlignKDError(f"the gguf target needs MobileVLM V2's ldpnetv2 projector (llama.cpp type ldpv2), not "
                           f"{config.projector_type!r}; export this model with --target executorch or onnx")
    grid = vision.image_size // vision.patch_size
    if grid != LDPV2_GRID and vision_runtime == "llama.cpp":
        raise AlignKDError(f"llama.cpp's ldpv2 projector needs a {LDPV2_GRID}x{LDPV2_GRID} CLIP patch grid but this model has "
                           f"{grid}x{grid} (image {vision.image_size}, patch {vision.patch_size}); use another target")
    if config.select_feature != "patch" and vision_runtime == "llama.cpp":
        raise AlignKDError(f"llama.cpp's llava graph takes patch features only, not mm_vision_select_feature "
                           f"{config.select_feature!r}; use another target")
    rope = _rope(config.llm)
    if rope.get("rope_type", "default") != "default":
        raise AlignKDError(f"the gguf target writes plain RoPE but this model's config has rope type {rope['rope_type']!r}; "
                           "use another target")


def _rope(llm_config) -> dict:
    # transformers 5 keeps theta and scaling in rope_parameters; 4.x configs have rope_theta / rope_scaling.
    params = getattr(llm_config, "rope_parameters", None)
    if params:
        return dict(params)
    return {"rope_theta": getattr(llm_config, "rope_theta", 10000.0), **(getattr(llm_config, "rope_scaling", None) or {})}


def vision_blocks(config) -> int:
    """CLIP layers llama.cpp runs: hidden_states[select_layer] is the output of this many layers."""
    n = config.vision.num_hidden_layers
    return config.select_layer % (n + 1)


# ---- language model -----------------------------------------------------------------------------------------


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved RoPE rows (convert_hf_to_gguf's LlamaModel.permute)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _vocab(tokenizer) -> tuple[list[bytes], list[float], list[int]]:
    sp = tokenizer.sp
    tokens, scores, types = [], [], []
    for i in range(sp.GetPieceSize()):
        kind = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                else BYTE if sp.IsByte(i) else NORMAL)
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(float(sp.GetScore(i)))
        types.append(kind)
    return tokens, scores, types


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    tokens, scores, types = _vocab(tokenizer)
    if len(tokens) != vocab_size:
        raise AlignKDError(f"the tokenizer has {len(tokens)} pieces but the model's vocabulary is {vocab_size}; "
                           "llama.cpp needs them equal: fix the checkpoint's tokenizer.model")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_unk_token_id(tokenizer.unk_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    writer.add_add_bos_token(bool(tokenizer.add_bos))
    writer.add_add_eos_token(bool(tokenizer.add_eos))
    spec = tokenizer.sp.serialized_model_proto()
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spec)
    writer.add_add_space_prefix(bool(proto.normalizer_spec.add_dummy_prefix))


def write_language_model(llm, tokenizer, path: Path, name: str) -> None:
    """The LLaMA decoder in f32 as llama.cpp's `llama` architecture."""
    import gguf

    cfg = llm.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type("model")
    writer.add_name(name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(cfg.hidden_size // n_head)
    writer.add_key_length(cfg.hidden_size // n_head)
    writer.add_value_length(cfg.hidden_size // n_head)
    writer.add_rope_freq_base(float(_rope(cfg)["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(FTYPES["f32"])
    _add_tokenizer(writer, tokenizer, cfg.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for key, tensor in llm.state_dict().items():
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise AlignKDError(f"the language model has a weight {key!r} llama.cpp's llama architecture has no place for; use another target")
        data = tensor.detach().float().numpy()
        if key.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif key.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        writer.add_tensor(target, data)
    _write(writer)


def _write(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
    """llama.cpp's own quantiser (what `llama-quantize SRC DST TYPE` runs) on an f32 GGUF."""
    import logging

    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # one INFO line per tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise AlignKDError(f"llama.cpp's quantiser failed on {src.name} for {quant} (code {rc}); see its log above")


# ---- vision encoder + projector --------------------------------------------------------------------------


def _clip_name(key: str, n_blocks: int) -> str | None:
    """HF CLIPVisionModel key -> llama.cpp clip tensor name (None: not used up to the selected layer)."""
    key = key.removeprefix("vision_model.")
    fixed = {"embeddings.class_embedding": "v.class_embd", "embeddings.patch_embedding.weight": "v.patch_embd.weight",
             "embeddings.position_embedding.weight": "v.position_embd.weight",
             "pre_layrnorm.weight": "v.pre_ln.weight", "pre_layrnorm.bias": "v.pre_ln.bias"}
    if key in fixed:
        return fixed[key]
    if not key.startswith("encoder.layers."):
        return None  # post_layernorm: after the selected layer, never used
    layer, rest = key.removeprefix("encoder.layers.").split(".", 1)
    if int(layer) >= n_blocks:
        return None
    # fc1 -> ffn_down, fc2 -> ffn_up is the legacy llava naming; clip.cpp detects it by shape and swaps back.
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.out_proj": "attn_out", "layer_norm1": "ln1", "layer_norm2": "ln2", "mlp.fc1": "ffn_down",
             "mlp.fc2": "ffn_up"}
    module, suffix = rest.rsplit(".", 1)
    return f"v.blk.{layer}.{parts[module]}.{suffix}"


def _projector_tensors(projector) -> dict[str, torch.Tensor]:
    state = projector.state_dict()
    return {"mm.model.mlp.0.weight": state["mlp.0.weight"], "mm.model.mlp.0.bias": state["mlp.0.bias"],
            "mm.model.mlp.2.weight": state["mlp.2.weight"], "mm.model.mlp.2.bias": state["mlp.2.bias"],
            "mm.model.peg.0.weight": state["peg.weight"].squeeze(1), "mm.model.peg.0.bias": state["peg.bias"]}


# ggml's CPU depthwise conv (ggml_conv_2d_dw: im2col to f16) has no f32-kernel path: an f32 PEG kernel aborts
# mtmd's warm-up with GGML_ASSERT(*cur_backend_id != -1). llama.cpp's converter stores it in f16 for that reason.
F16_ALWAYS = ("mm.model.peg.0.weight",)


def _cast(name: str, data: np.ndarray, dtype: str) -> np.ndarray:
    # As llama.cpp's converter: matrices and conv kernels in f16, vectors (norms, biases, class token) in f32.
    if name in F16_ALWAYS or (dtype == "fp16" and name.endswith(".weight") and data.ndim >= 2):
        return data.astype(np.float16)
    return data.astype(np.float32)


def write_projector(model, config, image_config, path: Path, dtype: str, name: str) -> None:
    """CLIP to `mm_vision_select_layer` + LDPv2 as the `ldpv2` projector GGUF llama.cpp's mtmd loads."""
    import gguf

    vision, n_blocks = config.vision, vision_blocks(config)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name(name)
    writer.add_file_type(1 if dtype == "fp16" else 0)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_string("clip.projector_type", "ldpv2")
    writer.add_uint32("clip.vision.image_size", vision.image_size)
    writer.add_uint32("clip.vision.patch_size", vision.patch_size)
    writer.add_uint32("clip.vision.embedding_length", vision.hidden_size)
    writer.add_uint32("clip.vision.feed_forward_length", vision.intermediate_size)
    writer.add_uint32("clip.vision.projection_dim", getattr(vision, "projection_dim", None) or vision.hidden_size)
    writer.add_uint32("clip.vision.attention.head_count", vision.num_attention_heads)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", vision.layer_norm_eps)
    writer.add_uint32("clip.vision.block_count", n_blocks)
    # hidden_states[n_blocks] explicitly: without it clip.cpp runs block_count - 1 layers.
    writer.add_array("clip.vision.feature_layer", [n_blocks])
    writer.add_array("clip.vision.image_mean", [float(m) for m in image_config.mean])
    writer.add_array("clip.vision.image_std", [float(s) for s in image_config.std])
    writer.add_bool("clip.use_gelu", vision.hidden_act == "gelu")  # false: quick_gelu, as CLIP
    for key, tensor in model.vision_tower.state_dict().items():
        target = _clip_name(key, n_blocks)
        if target is not None:
            writer.add_tensor(target, _cast(target, tensor.detach().float().numpy(), dtype))
    for target, tensor in _projector_tensors(model.mm_projector).items():
        writer.add_tensor(target, _cast(target, tensor.detach().float().numpy(), dtype))
    _write(writer)


def llama_cpp_info() -> dict:
    """Which llama.cpp wrote and checked the files: the binding's version (it pins the vendored llama.cpp) and
    the CPU features the build uses (a wrong build crashes with "Illegal instruction", see docs/export.md)."""
    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode().strip()}


# ---- the bundle's parts ------------------------------------------------------------------------------------


def write_vision_encoder(model, path: Path) -> None:
    """The CLIP tower and LDPv2 projector in fp32 safetensors under the official key names (what a checkpoint holds
    of them), run by the GGUF runtime through `MobileVLM.encode_images`, the eager model's own code."""
    from safetensors.torch import save_file

    from alignkd.models.checkpoint import to_official_key
    from alignkd.runtime.gguf_backend import VISION_PREFIXES

    state = {to_official_key(k): v.detach().float().contiguous() for k, v in model.state_dict().items()
             if k.startswith(VISION_PREFIXES)}
    save_file(state, str(path), metadata={"function": "MobileVLM.encode_images"})


def export_gguf(model, tokenizer, config, image_config, folder: Path, quant: str, *, vision_quant: str,
                vision_runtime: str = "llama.cpp", threads: int | None = None) -> dict:
    """Write model.gguf and the vision side (mmproj.gguf, or vision_encoder.safetensors for the PyTorch vision
    runtime) into `folder`; returns the manifest's `parts`."""
    folder = Path(folder)
    name = "MobileVLM V2 (alignkd)"
    if vision_runtime == "pytorch":
        write_vision_encoder(model, folder / VISION_FILE)
    else:
        write_projector(model, config, image_config, folder / PROJECTOR_FILE, vision_quant, f"{name} vision")
    model_path = folder / MODEL_FILE
    if quant == "f32":
        write_language_model(model.llm, tokenizer, model_path, name)
    else:
        source = folder / ".model-f32.gguf.tmp"
        try:
            write_language_model(model.llm, tokenizer, source, name)
            quantize(source, model_path, quant, threads)
        finally:
            source.unlink(missing_ok=True)
    return parts_entry(config, quant, vision_quant, vision_runtime)


def parts_entry(config, quant: str, vision_quant: str, vision_runtime: str = "llama.cpp") -> dict:
    vision, d = config.vision, config.llm.hidden_size
    image_tokens = [{"name": "image_embeddings", "shape": [1, config.num_image_tokens, d], "dtype": "float32"}]
    if vision_runtime == "pytorch":  # normalised pixels, as the other targets' vision encoders take them
        encoder = {"file": VISION_FILE, "quant": "fp32", "function": "MobileVLM.encode_images", "runtime": "pytorch",
                   "inputs": [{"name": "pixel_values", "shape": [1, 3, vision.image_size, vision.image_size], "dtype": "float32"}],
                   "outputs": image_tokens}
    else:
        pixels = {"name": "pixel_values", "shape": [1, 3, vision.image_size, vision.image_size], "dtype": "uint8"}
        encoder = {"file": PROJECTOR_FILE, "quant": vision_quant, "function": "mtmd_encode_chunk", "inputs": [pixels],
                   "outputs": image_tokens}
    return {
        "vision_encoder": encoder,
        "token_embedding": {"file": MODEL_FILE, "quant": quant, "function": "token_embd.weight",
                            "inputs": [{"name": "input_ids", "shape": [1, "seq"], "dtype": "int32"}],
                            "outputs": [{"name": "embeddings", "shape": [1, "seq", d], "dtype": "float32"}]},
        "text_decoder": {"file": MODEL_FILE, "quant": quant, "function": "llama_decode",
                         "inputs": [{"name": "embd", "shape": [1, "seq", d], "dtype": "float32"},
                                    {"name": "pos", "shape": [1, "seq"], "dtype": "int32"}],
                         "outputs": [{"name": "logits", "shape": [1, config.llm.vocab_size], "dtype": "float32"}]},
    }


class EagerImages:
    """The GGUF language model fed the eager model's image tokens (through `llama_batch.embd`), the rest llama.cpp.

    What export judges: llama.cpp 0c1e570's llava graph (used for ldpv2) puts CLIP's class token after the
    patches while its inputs still assume it first (llama.cpp issue 25814, fix proposed in PR 25844), so every
    patch gets its neighbour's position embedding, patch 0 is dropped and the class token is fed as the last
    image token. No GGUF can undo that, so llama.cpp's own image path cannot reproduce the official tokens;
    it is measured and reported (`image_path_parity`), and the decoder, tokenizer and quantisation are judged
    here."""

    def __init__(self, eager, bundle):
        self.eager, self.bundle, self.max_seq_len = eager, bundle, bundle.max_seq_len

    def encode_image(self, pixel_values):
        return self.eager.encode_image(pixel_values)

    def embed_tokens(self, ids):
        return self.bundle.embed_tokens(ids)

    def prefill(self, embeds):
        return self.bundle.prefill(embeds)

    def decode(self, embeds, position):
        return self.bundle.decode(embeds, position)


@torch.inference_mode()
def cls_last_reference(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The image tokens llama.cpp 0c1e570 computes (see EagerImages), emulated in PyTorch on the eager modules:
    class token appended after the patches, position embeddings 0..N in that order, rows 1..N kept."""
    tower, n_blocks = model.vision_tower, vision_blocks(model.config)
    tower = getattr(tower, "vision_model", tower)  # transformers 4.x nests the modules one level deeper
    emb = tower.embeddings
    patches = emb.patch_embedding(pixel_values.to(emb.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
    x = torch.cat([patches, emb.class_embedding.expand(patches.shape[0], 1, -1)], 1) + emb.position_embedding.weight[None]
    x = tower.pre_layrnorm(x)
    for layer in tower.encoder.layers[:n_blocks]:
        out = layer(x, None)
        x = out[0] if isinstance(out, tuple) else out
    return model.mm_projector(x[:, 1:])


def image_path_parity(eager, bundle, model, tokenizer, config, pixel_values) -> dict:
    """llama.cpp's own image path (mtmd), reported, not judged: its image tokens against eager and against the
    emulated class-token-last graph, end-to-end agreement with it, and llama.cpp's own preprocessing."""
    from alignkd.export.parity import end_to_end, metrics

    got = bundle.encode_image(pixel_values)
    e2e = end_to_end(eager, bundle, tokenizer, config.image)
    return {"llama_cpp_image_path": {
        "vision_vs_eager": metrics(eager.encode_image(pixel_values), got),
        "vision_vs_cls_last_emulation": metrics(cls_last_reference(model, pixel_values), got),
        "end_to_end": {k: e2e[k] for k in ("exact_match", "token_agreement", "logit_cosine", "min_logit_cosine")},
        "preprocessing": preprocessing_parity(eager, bundle, config.image)}}


def preprocessing_parity(eager, bundle, image_config) -> dict:
    """llama.cpp's image tokens from its own pad/resize of the raw golden images against those from the official
    preprocessing (both through mtmd): what a llama.cpp user feeding image files changes. Reported, never judged."""
    from alignkd.data.image import ImageProcessor
    from alignkd.export.parity import golden_images, metrics

    processor, rows = ImageProcessor(image_config), []
    with torch.inference_mode():
        for image in golden_images():
            ours = bundle.encode_image(processor([image]))  # the same graph: only the preprocessing differs
            rows.append({"size": list(image.size), **metrics(ours, bundle.encode_pil(image))})
    return {"images": rows, "min_cosine": min(r["cosine"] for r in rows)}
