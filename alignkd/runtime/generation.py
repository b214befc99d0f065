"""One generation loop for every backend: prompt template, tokenization, image splice, prefill, decode, stop.

A backend supplies four operations (`Backend` below); the loop does the rest exactly as the official
MobileVLM inference script: the user turn is `<image>\\n` + question in the `v1` template, greedy decoding
(temperature 0) or sampling, stop on eos or when the stop string (`</s>` for v1) appears in the last
three decoded tokens (`KeywordsStoppingCriteria`), and the answer text is the decoded new tokens, stripped,
without a trailing stop string. The eager PyTorch backend is `EagerBackend`; exported bundles plug in their
own.

    alignkd generate --model CHECKPOINT --image photo.jpg --prompt "What is in the picture?" --json
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from alignkd.data.templates import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, get_template, tokenize_with_image, user_message
from alignkd.errors import AlignKDError

STOP_WINDOW = 3  # the official KeywordsStoppingCriteria decodes at most the last 3 new tokens


class Backend(Protocol):
    """What a model must offer the loop. Tensors are batch 1; logits are fp32 [V] for the last position."""

    max_seq_len: int

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor: ...  # [1,3,H,W] -> [1,Ni,D]

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor: ...  # [1,n] -> [1,n,D]

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor: ...  # [1,L,D] -> [V]; resets the cache

    def decode(self, embeds: torch.Tensor, position: int) -> torch.Tensor: ...  # [1,1,D] at `position` -> [V]


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy, as the official inference and every benchmark
    top_p: float | None = None
    seed: int = 0
    stop_strings: tuple[str, ...] | None = None  # None: the template's stop string
    ignore_eos: bool = False  # profiling: with stop_strings=() every run decodes exactly max_new_tokens


@dataclass
class GenerationResult:
    text: str
    output_ids: list[int]  # the new token ids only
    input_ids: list[int]  # prompt ids with -200 placeholders
    prompt: str
    n_prompt_positions: int  # after the image splice
    stop_reason: str  # "eos", "stop_string", "max_new_tokens" or "context_full"
    timings: dict = field(default_factory=dict)
    kind: str | None = None  # what answered (LoadedModel.kind), where the caller loaded it: e.g. gguf+pytorch-vision

    def to_dict(self) -> dict:
        return asdict(self)


def build_prompt(question: str, n_images: int, template: str = "v1", raw: bool = False) -> str:
    """The full prompt string; checks that placeholders and images agree."""
    prompt = question if raw else get_template(template).prompt(user_message(question, n_images))
    n_tags = prompt.count(IMAGE_TOKEN)
    if n_tags == n_images:
        return prompt
    if n_images and not n_tags:
        raise AlignKDError("an image was given but the raw prompt has no <image> placeholder; put <image> where the image goes")
    if n_tags and not n_images:
        raise AlignKDError(f"the prompt has {n_tags} <image> placeholder(s) but no image was given; pass --image FILE or remove <image>")
    raise AlignKDError(f"the prompt has {n_tags} <image> placeholders but {n_images} images were given; use one per image")


def _next_token(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator) -> int:
    if cfg.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < cfg.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def splice_prompt(backend: Backend, input_ids: list[int], pixel_values: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """Embed the text chunks and put each image's tokens where its -200 stands. Returns embeds and encode time."""
    pieces, chunk, image_i, vision_s = [], [], 0, 0.0
    for tok in input_ids + [None]:
        if tok is None or tok == IMAGE_TOKEN_INDEX:
            if chunk:
                pieces.append(backend.embed_tokens(torch.tensor([chunk], dtype=torch.long)))
                chunk = []
            if tok is not None:
                t0 = time.perf_counter()
                pieces.append(backend.encode_image(pixel_values[image_i:image_i + 1]))
                vision_s += time.perf_counter() - t0
                image_i += 1
        else:
            chunk.append(tok)
    return torch.cat([p.to(pieces[0].dtype) for p in pieces], dim=1), vision_s


def _check_context(n_positions: int, backend: Backend, what: str) -> None:
    if n_positions >= backend.max_seq_len:
        raise AlignKDError(f"the prompt takes {n_positions} positions ({what}) but the model's context is "
                           f"{backend.max_seq_len}, which leaves no room for an answer; shorten the prompt")


def generate(backend: Backend, tokenizer, prompt: str, pixel_values: torch.Tensor | None = None,
             config: GenerationConfig | None = None, template: str = "v1", on_token=None) -> GenerationResult:
    """Run the loop on a full prompt string (see `build_prompt`). `on_token(id, text_so_far)` streams."""
    cfg = config or GenerationConfig()
    stops = cfg.stop_strings if cfg.stop_strings is not None else (get_template(template).stop_str,)
    input_ids = tokenize_with_image(prompt, tokenizer)
    # The text alone is checked before any part runs: a bundle's runtime fails on an over-long chunk with
    # only an error code (ExecuTorch: "set_inputs ... error 0x10").
    _check_context(sum(t != IMAGE_TOKEN_INDEX for t in input_ids), backend, "its text alone")
    embeds, vision_s = splice_prompt(backend, input_ids, pixel_values)
    n_prompt = embeds.shape[1]
    _check_context(n_prompt, backend, "text plus image tokens")
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    logits = backend.prefill(embeds)
    prefill_s = time.perf_counter() - t0
    new_ids: list[int] = []
    stop_reason = "max_new_tokens"
    t1 = time.perf_counter()
    first_token_s = None
    for step in range(cfg.max_new_tokens):
        tok = _next_token(logits, cfg, gen)
        new_ids.append(tok)
        if first_token_s is None:
            first_token_s = time.perf_counter() - t0
        if on_token is not None:
            on_token(tok, tokenizer.decode(new_ids))
        if tok == tokenizer.eos_id and not cfg.ignore_eos:
            stop_reason = "eos"
            break
        tail = tokenizer.decode(new_ids[-STOP_WINDOW:])
        if any(s and s in tail for s in stops):
            stop_reason = "stop_string"
            break
        if step == cfg.max_new_tokens - 1:
            break
        position = n_prompt + len(new_ids) - 1
        if position >= backend.max_seq_len:
            stop_reason = "context_full"
            break
        logits = backend.decode(backend.embed_tokens(torch.tensor([[tok]])), position)
    decode_s = time.perf_counter() - t1
    text = tokenizer.decode(new_ids).strip()
    for s in stops:
        if s and text.endswith(s):
            text = text[: -len(s)]
    n_decoded = max(len(new_ids) - 1, 0)
    timings = {
        "vision_encode_s": vision_s,
        "prefill_s": prefill_s,
        "ttft_s": vision_s + (first_token_s or prefill_s),
        "decode_s": decode_s,
        "prefill_tokens": n_prompt,
        "decode_tokens": n_decoded,
        "prefill_tok_s": n_prompt / prefill_s if prefill_s > 0 else None,
        "decode_tok_s": n_decoded / decode_s if n_decoded and decode_s > 0 else None,
    }
    return GenerationResult(text.strip(), new_ids, input_ids, prompt, n_prompt, stop_reason, timings)


class EagerBackend:
    """The PyTorch model as a backend: transformers' LLaMA with a DynamicCache."""

    def __init__(self, model):
        self.model = model.eval()
        self.max_seq_len = model.config.context_length
        self.cache = None

    @torch.inference_mode()
    def encode_image(self, pixel_values):
        return self.model.encode_images(pixel_values.to(self.model.device, self.model.dtype))

    @torch.inference_mode()
    def embed_tokens(self, ids):
        return self.model.llm.get_input_embeddings()(ids.to(self.model.device))

    @torch.inference_mode()
    def prefill(self, embeds):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config.llm)
        out = self.model.llm(inputs_embeds=embeds.to(self.model.dtype), cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float()

    @torch.inference_mode()
    def decode(self, embeds, position):
        pos = torch.tensor([[position]], device=embeds.device)
        out = self.model.llm(inputs_embeds=embeds.to(self.model.dtype), cache=self.cache, use_cache=True,
                             position_ids=pos, cache_position=pos[0])
        return out.logits[0, -1].float()


@dataclass
class LoadedModel:
    """A model ready for the loop, whatever it came from (checkpoint folder or exported bundle)."""

    backend: Backend
    tokenizer: object  # alignkd.data.tokenizer.Tokenizer
    image_config: object  # alignkd.data.image.ImageConfig
    kind: str  # "checkpoint", "executorch", "onnx", "coreml" or "gguf"
    path: str
    template: str = "v1"
    size_bytes: int = 0  # on disk
    info: dict = field(default_factory=dict)
