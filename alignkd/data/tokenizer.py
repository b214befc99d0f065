"""The MobileVLM tokenizer: SentencePiece with the legacy slow `LlamaTokenizer` behaviour, id for id.

The official code tokenizes with transformers 4.33's slow `LlamaTokenizer` in its default legacy mode: the
text is split on the special-token strings (`<s>`, `</s>`, `<unk>`), every remaining chunk is encoded by
SentencePiece on its own (so each chunk gets SentencePiece's dummy-prefix `▁`), and BOS is prepended.
transformers 5 no longer ships that slow class (its `LlamaTokenizer` is the converted fast tokenizer, whose
handling of the dummy prefix around special tokens and the image placeholder is not the legacy one), so we
drive the `sentencepiece` library directly with the same chunking. `tests/data/test_tokenizer.py` checks
it against the official tokenizer's outputs (the fixture's `tokenizer_probe` and prompt chunks).

    tok = Tokenizer.from_folder(checkpoint_dir)
    tok("USER: hi")            # [1, ...] like tokenizer(text).input_ids
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from alignkd.errors import AlignKDError

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def _token_content(value) -> str | None:
    """tokenizer_config.json stores special tokens as a string or as an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    return value.get("content")


@dataclass
class Tokenizer:
    """SentencePiece model plus the special-token settings read from tokenizer_config.json."""

    sp: object  # sentencepiece.SentencePieceProcessor
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    add_bos: bool = True
    add_eos: bool = False
    model_max_length: int = 2048

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Tokenizer":
        import sentencepiece as spm

        folder = Path(folder)
        model_file = folder / "tokenizer.model"
        if not model_file.is_file():
            raise AlignKDError(
                f"{model_file} is missing: a MobileVLM checkpoint folder needs the SentencePiece "
                "tokenizer.model next to config.json (copy it from the published checkpoint)."
            )
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(model_file))
        except (OSError, RuntimeError) as err:
            raise AlignKDError(f"{model_file} is not a SentencePiece model ({err}); replace it with the checkpoint's tokenizer.model.") from err
        cfg = {}
        cfg_file = folder / "tokenizer_config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
        bos = _token_content(cfg.get("bos_token")) or "<s>"
        eos = _token_content(cfg.get("eos_token")) or "</s>"
        unk = _token_content(cfg.get("unk_token")) or "<unk>"
        # MobileVLM trains and evaluates with pad = unk (train.py sets it for the v1 template).
        pad = _token_content(cfg.get("pad_token")) or unk
        ids = {name: sp.PieceToId(piece) for name, piece in (("bos", bos), ("eos", eos), ("unk", unk), ("pad", pad))}
        # Some tokenizer configs carry transformers' "no limit" sentinel (1e30) here.
        max_length = cfg.get("model_max_length", 2048)
        return cls(
            sp=sp,
            bos_id=ids["bos"],
            eos_id=ids["eos"],
            unk_id=ids["unk"],
            pad_id=ids["pad"],
            add_bos=cfg.get("add_bos_token", True),
            add_eos=cfg.get("add_eos_token", False),
            model_max_length=int(max_length) if max_length < 10**9 else 2048,
        )

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    @property
    def special_ids(self) -> set[int]:
        return {self.bos_id, self.eos_id, self.unk_id}

    def _special_pattern(self) -> re.Pattern:
        pieces = sorted({self.sp.IdToPiece(i) for i in self.special_ids}, key=len, reverse=True)
        return re.compile("(" + "|".join(re.escape(p) for p in pieces) + ")")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """`tokenizer(text).input_ids` of the legacy slow LlamaTokenizer."""
        ids: list[int] = []
        specials = {self.sp.IdToPiece(i): i for i in self.special_ids}
        for chunk in self._special_pattern().split(text):
            if not chunk:
                continue
            if chunk in specials:
                ids.append(specials[chunk])
            else:
                ids.extend(self.sp.EncodeAsIds(chunk))
        if add_special_tokens:
            ids = ([self.bos_id] if self.add_bos else []) + ids + ([self.eos_id] if self.add_eos else [])
        return ids

    __call__ = encode

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.IdToPiece(int(i)) for i in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; with skip_special_tokens, as the official `batch_decode(..., skip_special_tokens=True)`."""
        ids = [int(i) for i in ids if i >= 0]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
            return self.sp.DecodeIds(ids)
        out, run = [], []
        for i in ids:
            if i in self.special_ids:
                out.append(self.sp.DecodeIds(run) + self.sp.IdToPiece(i))
                run = []
            else:
                run.append(i)
        return "".join(out) + self.sp.DecodeIds(run)

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.model, tokenizer_config.json and special_tokens_map.json as the official checkpoints have them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.model").write_bytes(self.sp.serialized_model_proto())
        token = lambda i: {"__type": "AddedToken", "content": self.sp.IdToPiece(i), "lstrip": False,
                           "normalized": True, "rstrip": False, "single_word": False}
        config = {
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "bos_token": token(self.bos_id),
            "clean_up_tokenization_spaces": False,
            "eos_token": token(self.eos_id),
            "legacy": None,
            "model_max_length": self.model_max_length,
            "pad_token": None,
            "padding_side": "right",
            "sp_model_kwargs": {},
            "spaces_between_special_tokens": False,
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": token(self.unk_id),
            "use_default_system_prompt": True,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        plain = lambda i: {k: v for k, v in token(i).items() if k != "__type"}
        special = {"bos_token": plain(self.bos_id), "eos_token": plain(self.eos_id),
                   "pad_token": self.sp.IdToPiece(self.pad_id), "unk_token": plain(self.unk_id)}
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
