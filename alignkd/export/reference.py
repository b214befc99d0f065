"""The eager model's answers for the parity check, recorded once while the model is loaded at the start of an
ExecuTorch export, so that parity needs no eager model next to the loaded bundle.

The 1.7B export dropped the eager fp32 model before lowering and loaded it again for parity: 6.7 GB of its
memory-mapped pages next to the bundle and what lowering left, a 12.7 GB peak. `record` makes, on the eager
model, every call that `parity.part_parity`, `parity.end_to_end` and `parity.answer_parity` make on their
`eager` argument, and keeps the answers (image tokens, embeddings, logits: tens of MB at 1.7B). A `Reference`
then stands in for the eager backend: it answers the same calls from what it kept, keyed by the call and its
inputs (and, for decode, by the calls since the last prefill, which is what the eager KV cache holds), so the
parity figures are the same numbers as against the model itself. A call it did not record is a programming
error, raised as such, never answered with something else.

    reference = record(model, tokenizer, config.image)   # then drop the model
    parity.part_parity(reference, bundle, pixels, ids)
"""

from __future__ import annotations

import hashlib

import torch


def _digest(*parts) -> str:
    """One hash of tensors (dtype, shape and bytes) and plain values."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


class Reference:
    """A backend (alignkd.runtime.generation.Backend) answering from recorded eager answers. While `eager` is
    set it records: every call goes to the eager backend and its answer is kept; `stop_recording` drops the eager
    backend (and so the model), and from then on only recorded calls are answered."""

    def __init__(self, eager):
        self.eager, self.max_seq_len, self.answers = eager, eager.max_seq_len, {}
        self._cache = None  # the prefill and decodes so far: what the eager KV cache would hold

    def stop_recording(self) -> "Reference":
        self.eager = None
        return self

    def _answer(self, key: str, call: str, *args) -> torch.Tensor:
        if self.eager is not None:
            self.answers[key] = getattr(self.eager, call)(*args).detach().clone()
        elif key not in self.answers:
            raise RuntimeError(f"the parity reference holds no eager answer for this {call} call: "
                               "alignkd.export.reference.record no longer makes every eager call parity makes")
        return self.answers[key]

    def encode_image(self, pixel_values):
        return self._answer(_digest("encode_image", pixel_values), "encode_image", pixel_values)

    def embed_tokens(self, ids):
        return self._answer(_digest("embed_tokens", ids), "embed_tokens", ids)

    def prefill(self, embeds):
        self._cache = _digest("prefill", embeds)
        return self._answer(self._cache, "prefill", embeds)

    def decode(self, embeds, position):
        self._cache = _digest("decode", self._cache, embeds, int(position))
        return self._answer(self._cache, "decode", embeds, position)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.answers.values())


def record(model, tokenizer, image_config, template: str = "v1") -> Reference:
    """Every eager call of `parity.part_parity` (on `parity.probe`'s prompt), `parity.end_to_end` and
    `parity.answer_parity`, made on `model` and kept; the returned Reference holds no reference to the model."""
    from alignkd.data.image import ImageProcessor
    from alignkd.data.templates import tokenize_with_image
    from alignkd.export import parity
    from alignkd.runtime.generation import EagerBackend, GenerationConfig, build_prompt, generate, splice_prompt

    reference = Reference(EagerBackend(model))
    with torch.inference_mode():
        pixels, ids = parity.probe(tokenizer, image_config, template)  # part_parity's calls
        reference.encode_image(pixels)
        reference.embed_tokens(torch.tensor([[i for i in ids if i >= 0]]))
        reference.prefill(splice_prompt(reference, ids, pixels)[0])
        processor, cfg = ImageProcessor(image_config), GenerationConfig(max_new_tokens=parity.MAX_NEW_TOKENS)
        for image, question in parity.golden_pairs():
            prompt, pixels = build_prompt(question, 1, template), processor([image])
            tokens = generate(reference, tokenizer, prompt, pixels, cfg, template).output_ids
            parity.eager_reference(reference, tokenize_with_image(prompt, tokenizer), pixels, tokens)
        for image, question in parity.yes_no_pairs():
            ids, pixels = tokenize_with_image(build_prompt(question, 1, template), tokenizer), processor([image])
            reference.prefill(splice_prompt(reference, ids, pixels)[0])
    return reference.stop_recording()
