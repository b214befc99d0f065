"""Training a small LLaMA-style SentencePiece BPE tokenizer on the synthetic world's text, offline.

Tiny models need a tiny vocabulary (the real MobileVLM one has 32000 pieces); this trains ~1000 pieces with
LLaMA's settings (byte fallback, identity normalisation, dummy prefix, split digits, unk/bos/eos = 0/1/2,
no pad piece) and writes a folder shaped like a Hugging Face LLaMA checkpoint's tokenizer files
(tokenizer.model, tokenizer_config.json, special_tokens_map.json), which `alignkd.data.tokenizer` loads.
Deterministic: one thread, no input sampling or shuffling, so equal text gives an equal model file.

    train_tokenizer(lines, Path("out/tokenizer"), vocab_size=1024)   # exercised by `alignkd data synth`
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece as spm

from alignkd.data.synth_questions import OPTION_LETTER, SHORT_ANSWER
from alignkd.data.synth_scene import COLORS, SHAPES, WORDS

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# Strings every prompt of the project contains, so they become whole pieces whatever the data mix.
FIXED_TEXT = (
    VICUNA_SYSTEM, "USER", "ASSISTANT", "USER:", "ASSISTANT:", SHORT_ANSWER, OPTION_LETTER,
    "Reference OCR token:", "Please answer yes or no.", "Context:", "Yes", "No", "yes", "no",
    " ".join(COLORS), " ".join(SHAPES), " ".join(WORDS), " ".join(str(n) for n in range(100)),
    " ".join(f"{c}." for c in "ABCD"),
)


def _special(content: str, with_type: bool) -> dict:
    token = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **token} if with_type else token


def tokenizer_config() -> dict:
    """The LLaMA slow-tokenizer config, structured like the official MobileVLM checkpoints' file."""
    return {
        "add_bos_token": True, "add_eos_token": False,
        "bos_token": _special("<s>", True), "clean_up_tokenization_spaces": False,
        "eos_token": _special("</s>", True), "legacy": None, "model_max_length": 2048, "pad_token": None,
        "padding_side": "right", "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer", "unk_token": _special("<unk>", True),
        "use_default_system_prompt": True,
    }


def special_tokens_map() -> dict:
    # pad = <unk>, as MobileVLM's training sets it for the v1 template (there is no pad piece).
    return {"bos_token": _special("<s>", False), "eos_token": _special("</s>", False), "pad_token": "<unk>",
            "unk_token": _special("<unk>", False)}


def corpus_lines(texts) -> list[str]:
    """Training sentences: every text split at newlines (a newline is a byte-fallback piece, as in LLaMA).

    A line that followed a newline starts without a space in real prompts ("\nAnswer ..."), but as a
    sentence it gets the dummy-prefix space; feeding it once more behind a "." (a separate piece, by
    script) lets BPE also learn its first word without the space, so prompts tokenize as short as they can.
    """
    lines = []
    for text in list(FIXED_TEXT) + list(texts):
        parts = text.split("\n")
        lines.extend(part for part in parts if part.strip())
        lines.extend("." + part for part in parts[1:] if part.strip())
    return lines


def train_model(lines: list[str], vocab_size: int) -> bytes:
    """The serialized SentencePiece model trained on `lines`."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out,
        model_type="bpe", vocab_size=vocab_size,
        # A small corpus may not support `vocab_size` merges; accept fewer instead of failing.
        hard_vocab_limit=False,
        character_coverage=1.0, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_by_unicode_script=True, split_by_number=True,
        split_by_whitespace=True, max_sentence_length=1 << 16,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def train_tokenizer(texts, out_dir: Path, vocab_size: int) -> dict:
    """Train on `texts` and write the tokenizer folder; returns {"vocab_size", "corpus_lines"}."""
    lines = corpus_lines(texts)
    model = train_model(lines, vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_tokens_map(), indent=2) + "\n")
    sp = spm.SentencePieceProcessor(model_proto=model)
    return {"vocab_size": sp.get_piece_size(), "corpus_lines": len(lines)}
