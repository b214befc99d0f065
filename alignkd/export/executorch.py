"""ExecuTorch target: one multi-method `model.pte` (XNNPACK) in the layout ExecuTorch's MultimodalRunner reads.

Methods: `vision_encoder` (pixels [1,3,S,S] fp32 -> [1,144,D]), `token_embedding` (ids [1,n] -> [1,n,D]) and
`text_decoder` (embeddings [1,n,D], input_pos [1] -> last-position logits [1,V]), plus the runner's constant
methods (`get_max_seq_len`, `get_max_context_len`, `get_vocab_size`, `get_bos_id`, `get_eos_ids`,
`use_kv_cache`, `use_sdpa_with_kv_cache`, `enable_dynamic_shape`). The decoder is ExecuTorch's own llama
transformer with HF rope and the custom SDPA / KV-cache ops (the fast path; about 1.6x faster per decode
token than transformers' StaticCache decoder), with the checkpoint's LLaMA weights copied in by name.

    alignkd export tests/fixtures/mobilevlm_official_tiny/checkpoint --target executorch --quant 8da4w -o out/tiny_et
"""

from __future__ import annotations

import copy
import gc
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from alignkd.export.parts import TokenEmbedding
from alignkd.export.quantize import is_plain, quantize_decoder_linears, quantize_embedding, quantize_vision_dynamic
from alignkd.export.vision_lowered import LoweredVisionEncoder

PTE_FILE = "model.pte"
LM_HEAD = "transformer.output"  # the llama transformer's output projection in TextDecoder (int8: quantize.LM_HEAD_BITS)
METHODS = ("vision_encoder", "token_embedding", "text_decoder")
# transformers LLaMA key -> ExecuTorch llama_transformer key (the llava example's map)
_KEY_MAP = [
    (r"^model\.layers\.(\d+)\.self_attn\.q_proj\.", r"layers.\1.attention.wq."),
    (r"^model\.layers\.(\d+)\.self_attn\.k_proj\.", r"layers.\1.attention.wk."),
    (r"^model\.layers\.(\d+)\.self_attn\.v_proj\.", r"layers.\1.attention.wv."),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.", r"layers.\1.attention.wo."),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj\.", r"layers.\1.feed_forward.w1."),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj\.", r"layers.\1.feed_forward.w2."),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj\.", r"layers.\1.feed_forward.w3."),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"layers.\1.attention_norm."),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"layers.\1.ffn_norm."),
    (r"^model\.norm\.", "norm."),
    (r"^lm_head\.", "output."),
]


class StoredLayoutKVCache(nn.Module):
    """ExecuTorch's CustomKVCache without its layout round trip: `update` returns the caches as stored,
    [B, C, Hkv, D], which is what llama::custom_sdpa reads. CustomKVCache returns them transposed to
    [B, Hkv, C, D] and SDPACustom transposes them back: in the exported graph that pair is two copies of the
    whole cache per layer and step (about a third of a decode step at the 1.7B shape, ETDump)."""

    def __init__(self, cache: nn.Module):
        super().__init__()
        self.register_buffer("k_cache", cache.k_cache)  # the same tensors: nothing is copied
        self.register_buffer("v_cache", cache.v_cache)

    def update(self, input_pos: torch.Tensor, k_val: torch.Tensor, v_val: torch.Tensor):
        start_pos = input_pos[0].item()
        # k_val, v_val [B, Hkv, S, D]: only this step's rows are transposed
        torch.ops.llama.update_cache(k_val.transpose(1, 2), self.k_cache, start_pos)
        torch.ops.llama.update_cache(v_val.transpose(1, 2), self.v_cache, start_pos)
        return self.k_cache, self.v_cache


class StoredLayoutSDPA(nn.Module):
    """SDPACustom for `StoredLayoutKVCache`: only the query ([B, H, S, D] -> [B, S, H, D]) is transposed."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, input_pos, q, k, v, bsz, seqlen, mask):
        out = torch.ops.llama.custom_sdpa(q.transpose(1, 2), k, v, input_pos[0].item(), None, 0, True)
        return out.view(bsz, seqlen, self.dim)


def _keep_cache_layout(transformer: nn.Module) -> None:
    """Swap each attention's CustomKVCache / SDPACustom pair for the stored-layout pair."""
    from executorch.examples.models.llama.source_transformation.custom_kv_cache import CustomKVCache
    from executorch.examples.models.llama.source_transformation.sdpa import SDPACustom

    for module in transformer.modules():
        cache, sdpa = getattr(module, "kv_cache", None), getattr(module, "SDPA", None)
        if type(cache) is CustomKVCache and type(sdpa) is SDPACustom and not sdpa.use_attention_mask:
            module.kv_cache, module.SDPA = StoredLayoutKVCache(cache), StoredLayoutSDPA(sdpa.dim)


class TextDecoder(nn.Module):
    """forward(embeddings [1,n,D], input_pos [1] int64) -> logits [1,V] of the last position."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, embeddings: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.transformer(None, {"input_pos": input_pos}, embeddings)


def build_decoder(model, max_seq_len: int) -> TextDecoder:
    """ExecuTorch's llama transformer (custom KV cache + SDPA ops) holding the checkpoint's LLaMA weights."""
    from executorch.examples.models.llama.llama_transformer import construct_transformer
    from executorch.examples.models.llama.model_args import ModelArgs
    from executorch.examples.models.llama.source_transformation.custom_kv_cache import replace_kv_cache_with_custom_kv_cache
    from executorch.examples.models.llama.source_transformation.sdpa import replace_sdpa_with_custom_op

    cfg = model.config.llm
    args = ModelArgs(
        dim=cfg.hidden_size, n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
        n_kv_heads=cfg.num_key_value_heads, vocab_size=cfg.vocab_size, hidden_dim=cfg.intermediate_size,
        norm_eps=cfg.rms_norm_eps, max_batch_size=1, max_seq_len=max_seq_len, max_context_len=max_seq_len,
        use_kv_cache=True, enable_dynamic_shape=True, use_sdpa_with_kv_cache_op=True, use_hf_rope=True,
        rope_theta=float(cfg.rope_parameters["rope_theta"]), apply_embedding=False,
    )
    # Build the skeleton without allocating random weights (the checkpoint's tensors are assigned below).
    with torch.device("meta"):
        transformer = construct_transformer(args)
    state = {}
    for key, value in model.llm.state_dict().items():
        for pattern, repl in _KEY_MAP:
            new = re.sub(pattern, repl, key)
            if new != key:
                state[new] = value
                break
    if cfg.tie_word_embeddings:
        state["output.weight"] = model.llm.get_input_embeddings().weight
    missing, unexpected = transformer.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise RuntimeError(f"unmapped decoder weights: {unexpected[:4]}")
    _materialise(transformer, args, [k for k in missing])
    transformer = replace_kv_cache_with_custom_kv_cache(transformer)
    transformer = replace_sdpa_with_custom_op(transformer)
    _keep_cache_layout(transformer)
    return TextDecoder(transformer).eval()


def _materialise(transformer: nn.Module, args, missing: list[str]) -> None:
    """Buffers that are not weights (KV caches, rope tables) are still on meta: rebuild them on CPU."""
    from executorch.examples.models.llama.rope import Rope

    weights = [k for k in missing if not re.search(r"(k_cache|v_cache|freqs_cos|freqs_sin|mask)$", k)]
    if weights:
        raise RuntimeError(f"decoder weights not found in the checkpoint: {weights[:4]}")
    transformer.rope = Rope(args)
    for module in transformer.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                if name == "mask":  # the causal mask of the reference attention: lower-triangular ones
                    value = torch.tril(torch.ones(buf.shape, dtype=torch.bool))
                else:
                    value = torch.zeros(buf.shape, dtype=buf.dtype)
                module.register_buffer(name, value, persistent=name in module.state_dict())


def constant_methods(model, tokenizer, max_seq_len: int) -> dict:
    """The metadata the ExecuTorch LLM runners read (extension/llm/runner/constants.h)."""
    return {
        "get_max_seq_len": max_seq_len,
        "get_max_context_len": max_seq_len,
        "get_vocab_size": model.config.llm.vocab_size,
        "get_bos_id": tokenizer.bos_id,
        "get_eos_ids": [tokenizer.eos_id],
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
    }


def trace_executorch(model, tokenizer, quant: str, *, group_size: int, embedding_bits: int, vision_quant: str,
                     max_seq_len: int, calibration: list[torch.Tensor], stages) -> dict:
    """Quantise and torch.export the three methods. Returns {"programs", "constants", "parts"}; the programs hold
    only what the bundle needs (quantised copies, the fp32 weights the bundle keeps), not the eager model, so the
    caller can drop the model before lowering."""
    from torch.export import Dim

    cfg = model.config
    size, dim = cfg.image.size, cfg.llm.hidden_size
    pixels = calibration[0] if calibration else torch.zeros(1, 3, size, size)
    with stages("quantise", f"decoder {quant}, vision {vision_quant}"):
        # The XNNPACK-shaped encoder: one delegate for the whole graph (alignkd.export.vision_lowered).
        vision = LoweredVisionEncoder(model).eval()
        if vision_quant == "int8":
            quantize_vision_dynamic(vision)
        # Deep copy: quantization replaces modules in place and the eager model must stay the fp32 reference.
        embedding = copy.deepcopy(TokenEmbedding(model)).eval()
        decoder = build_decoder(model, max_seq_len)
        if quant != "fp32":
            # Layer by layer, each layer's fp32 pages leaving the RSS once it is quantised (release_mapped_pages).
            for layer in decoder.transformer.layers:
                weights = [m.weight for m in layer.modules() if isinstance(m, nn.Linear)]
                quantize_decoder_linears(layer, quant, group_size)
                release_mapped_pages(weights)
            quantize_decoder_linears(decoder, quant, group_size, lm_head=LM_HEAD)  # the output projection (int8)
            quantize_embedding(embedding, embedding_bits if quant == "8da4w" else 8, group_size)
        own_tensors([vision, embedding, decoder], model)
        release_mapped_pages([*model.parameters(), *model.buffers()])  # the bundle's parts own what they keep

    seq = Dim("seq", min=1, max=max_seq_len - 1)
    ids = torch.ones(1, 4, dtype=torch.long)
    with stages("export", "torch.export of vision_encoder, token_embedding, text_decoder"), torch.no_grad():
        programs = {
            "vision_encoder": torch.export.export(vision, (pixels,), strict=False),
            "token_embedding": torch.export.export(embedding, (ids,), dynamic_shapes=({1: seq},), strict=False),
            # strict=True: the KV caches are module buffers mutated in place, which strict export tracks.
            "text_decoder": _export_strict(decoder, (torch.zeros(1, 4, dim), torch.tensor([0])), ({1: seq}, None)),
        }
    return {"programs": programs, "constants": constant_methods(model, tokenizer, max_seq_len),
            "parts": _parts(cfg, quant, embedding_bits, vision_quant)}


def own_tensors(modules: list[nn.Module], model: nn.Module) -> int:
    """In place: give `modules` their own copy of every tensor they still share with `model`; returns the bytes.

    The bundle keeps some of the model's tensors as they are (norms, biases, the patch convolution, position
    embeddings; every weight of an fp32 part), and the model's tensors are views of the memory-mapped checkpoint,
    one mapping for the whole file: while one of them lives, dropping the model unmaps nothing, the file's pages
    read while quantising (6.3 GB at 1.7B) stay in the RSS through lowering, and parity's reload maps the file
    a second time next to them. Copied, the caller can drop the model and the mapping goes with it."""
    shared = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers()) if is_plain(t)}
    copies: dict[int, torch.Tensor] = {}
    for module in (m for root in modules for m in root.modules()):
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None or not is_plain(t) or t.untyped_storage().data_ptr() not in shared:
                    continue
                if id(t) not in copies:  # a tensor two modules share stays shared
                    clone = t.detach().clone()
                    copies[id(t)] = nn.Parameter(clone, requires_grad=False) if isinstance(t, nn.Parameter) else clone
                table[name] = copies[id(t)]
    return sum(t.nbytes for t in copies.values())


MADV_DONTNEED = 4  # linux/mman.h


def _private_file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's private mappings of files (/proc/self/maps); [] off Linux."""
    try:
        lines = open("/proc/self/maps").read().splitlines()
    except OSError:
        return []
    spans = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/") and fields[1].startswith("r") and fields[1][3] == "p":
            start, end = fields[0].split("-")
            spans.append((int(start, 16), int(end, 16)))
    return spans


def release_mapped_pages(tensors) -> int:
    """Drop from the resident set the pages of `tensors` that lie in a memory-mapped file; returns the bytes advised.

    A memory-mapped checkpoint's pages, once read (quantising reads every weight), count in the process's RSS for
    as long as the file is mapped: 6.8 GB at 1.7B, on top of the quantised copies. madvise(MADV_DONTNEED) on a
    private file mapping drops them from this process (the page cache keeps them) and a later read maps the file's
    bytes again, so the tensors stay valid. Only file-backed ranges are touched (on anonymous memory the same call
    would zero the data), and the checkpoint's tensors are never written, so no private copy of a page is lost."""
    import ctypes
    import mmap

    spans = _private_file_mappings()
    if not spans:
        return 0
    libc, page = ctypes.CDLL(None, use_errno=True), mmap.PAGESIZE
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or not is_plain(t) or t.nbytes == 0:
            continue
        lo, hi = t.data_ptr(), t.data_ptr() + t.nbytes
        span = next(((a, b) for a, b in spans if a <= lo and hi <= b), None)
        if span is None:
            continue
        start, end = max(span[0], lo // page * page), min(span[1], -(-hi // page) * page)
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            advised += end - start
    return advised


@contextmanager
def _no_dynamo_leftovers():
    """Strict torch.export leaves its compiled graph module, holding every weight it saw, as a global of
    torch._dynamo.functional_export (`__compiled_fn_*`): drop the globals this export added, so the traced
    weights can be freed once lowered."""
    import torch._dynamo.functional_export as fx

    before = set(vars(fx))
    try:
        yield
    finally:
        for name in set(vars(fx)) - before:
            if name.startswith("__compiled_fn"):
                delattr(fx, name)


def _export_strict(module: nn.Module, args: tuple, dynamic_shapes):
    with _no_dynamo_leftovers():
        return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=True)


def _shape_envs(programs) -> list:
    """The symbolic-shape environments the programs were traced in (one per torch.export call)."""
    envs = {}
    for program in programs:
        for node in program.graph.nodes:
            env = getattr(getattr(node.meta.get("val"), "fake_mode", None), "shape_env", None)
            if env is not None:
                envs[id(env)] = env
    return list(envs.values())


def _forget_traced_tensors(envs) -> None:
    """Free what tracing and lowering kept after the .pte is written. Each ShapeEnv lists the real tensors it traced
    (`tracked_fakes`: every quantised weight of the decoder) and outlives the export in torch's lru caches, so at
    1.7B about 6 GB stayed allocated into parity, where the eager reference was loaded next to it (13.2 GB peak).
    Then hand the freed heap back to the system (glibc keeps it otherwise)."""
    for env in envs:
        if getattr(env, "tracked_fakes", None):
            env.tracked_fakes = []
        getattr(env, "fake_tensor_cache", {}).clear()  # its keys hold the lowered delegate modules
    _forget_lowered_graphs()
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


XNNPACK_WHY_MODULES = ("gemm_configs", "generic_node_configs", "node_configs", "xnnpack_config")


def _forget_lowered_graphs() -> None:
    """Drop the library caches that keep the lowered graphs alive after the export, and with each one (through its
    delegates' original programs) the quantised weights: ExecuTorch's `is_same_node` (an unbounded lru_cache keyed
    by fx nodes), the fake-tensor dispatch cache (keys hold the lowered modules), and the last node each XNNPACK
    partitioner config module's `why` logger was told about."""
    import importlib

    from executorch.exir.backend.utils import WhyNoPartition, is_same_node
    from torch._subclasses.fake_tensor import FakeTensorMode

    is_same_node.cache_clear()
    FakeTensorMode.cache_clear()
    for name in XNNPACK_WHY_MODULES:
        why = getattr(importlib.import_module(f"executorch.backends.xnnpack.partition.config.{name}"), "why", None)
        if isinstance(why, WhyNoPartition):
            why.node = None


def lower_executorch(traced: dict, out: Path, stages) -> None:
    """XNNPACK lowering and serialisation of `trace_executorch`'s programs into out/model.pte. Consumes
    `traced["programs"]`: each stage drops what the next one no longer needs (the exported programs once
    lowered, the edge programs once serialised), so their weights never sit in memory twice over."""
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.quant_fusion_pass import QuantFusionPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    # Dynamic-quant linears first, one per partition (keeps packed and unpacked weights from coexisting).
    partitioners = [XnnpackPartitioner(config_precisions=ConfigPrecisionType.DYNAMIC_QUANT, per_op_mode=True),
                    XnnpackPartitioner()]
    envs = _shape_envs(traced["programs"].values())
    with stages("lower", "to_edge_transform_and_lower (XNNPACK); the longest stage"):
        edge = to_edge_transform_and_lower(
            traced.pop("programs"),
            partitioner={"vision_encoder": [XnnpackPartitioner()], "token_embedding": [], "text_decoder": partitioners},
            constant_methods=traced["constants"],
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
        )
        gc.collect()
    with stages("serialise", f"to_executorch and {PTE_FILE}"):
        program = edge.to_executorch(ExecutorchBackendConfig(
            extract_delegate_segments=True, passes=[QuantFusionPass()],
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
        ))
        del edge
        gc.collect()
        with open(out / PTE_FILE, "wb") as f:
            program.write_to_file(f)
        del program
        _forget_traced_tensors(envs)


def export_executorch(model, tokenizer, out: Path, quant: str, *, group_size: int, embedding_bits: int,
                      vision_quant: str, max_seq_len: int, calibration: list[torch.Tensor], stages=None) -> dict:
    """Write out/model.pte; returns the manifest's `parts` entries (trace and lower in one call)."""
    from alignkd.export.progress import Stages

    stages = stages or Stages()
    traced = trace_executorch(model, tokenizer, quant, group_size=group_size, embedding_bits=embedding_bits,
                              vision_quant=vision_quant, max_seq_len=max_seq_len, calibration=calibration, stages=stages)
    lower_executorch(traced, out, stages)
    return traced["parts"]


def _parts(cfg, quant: str, embedding_bits: int, vision_quant: str) -> dict:
    size, dim, n_img, vocab = cfg.image.size, cfg.llm.hidden_size, cfg.num_image_tokens, cfg.llm.vocab_size
    t = lambda name, shape, dtype: {"name": name, "shape": shape, "dtype": dtype}
    return {
        "vision_encoder": {"file": PTE_FILE, "method": "vision_encoder", "quant": vision_quant,
                           "inputs": [t("pixel_values", [1, 3, size, size], "float32")],
                           "outputs": [t("image_tokens", [1, n_img, dim], "float32")]},
        "token_embedding": {"file": PTE_FILE, "method": "token_embedding",
                            "quant": "fp32" if quant == "fp32" else f"int{embedding_bits if quant == '8da4w' else 8}",
                            "inputs": [t("input_ids", [1, "seq"], "int64")],
                            "outputs": [t("embeddings", [1, "seq", dim], "float32")]},
        "text_decoder": {"file": PTE_FILE, "method": "text_decoder", "quant": quant,
                         "inputs": [t("embeddings", [1, "seq", dim], "float32"), t("input_pos", [1], "int64")],
                         "outputs": [t("logits", [1, vocab], "float32")]},
    }
