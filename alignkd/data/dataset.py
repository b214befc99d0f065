"""LLaVA-format training data: records -> (input_ids, labels, images), the length policy, bad-record handling, collation.

Records are LLaVA JSON (a list) or JSONL (one record per line, read lazily through a byte-offset index, so
millions of records never sit in memory): `{"id", "image"?: str | [str], "conversations": [{"from":
"human"|"gpt", "value"}]}` with `<image>` tags. Labels follow the official preprocessing exactly
(`templates.tokenize_conversation`). A bad record is skipped and counted by reason (or, with `strict`, stops
the run with an error naming the record, its 1-based line or item number, and the file); the dataset returns a
`Skipped` marker and the collator drops it, so nothing crashes mid-epoch. Counts are per record, not per pass
over the data: the batch lists its skipped records and the training loop records them in its own collator
(the one in a worker process is a copy). A record whose text is too long for any tokenisation to fit
`max_length` is dropped before it is tokenised.

    ds = LlavaDataset("train/finetune.json", "train/images", tokenizer, ImageConfig(size=336), template="v1")
    loader = DataLoader(ds, batch_size=4, collate_fn=Collator(tokenizer.pad_id))
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from alignkd.data.image import ImageConfig, ImageProcessor, load_image
from alignkd.data.templates import (IGNORE_INDEX, IMAGE_TOKEN, IMAGE_TOKEN_INDEX, get_template, normalize_image_turns,
                                    tokenize_conversation)
from alignkd.errors import AlignKDError

LENGTH_PRESETS = {"short": 512, "long": 2048}  # the paper's two data settings (max embedded tokens)
ROLES = ("human", "gpt")
# A record's text holds at most (longest vocabulary piece) characters per token; the factor leaves room for
# normalisation that merges characters (NFKC, collapsed whitespace), so only hopeless records are cut unread.
CHARS_SLACK = 4

# every reason a record can be skipped for, with what to do about it
SKIP_REASONS = {
    "malformed": "the record is not a JSON object with a 'conversations' list",
    "no_conversations": "missing or empty 'conversations'",
    "unknown_role": "a turn's 'from' is not human/gpt",
    "missing_image": "the image file does not exist",
    "corrupt_image": "the image file cannot be decoded (corrupt, or more pixels than PIL's decompression-bomb limit)",
    "image_outside_root": "the image path is absolute or escapes the image folder",
    "too_many_image_tags": "more <image> tags than images",
    "image_without_tag": "an image is given but no turn holds <image>",
    "plain_needs_image_pair": "the plain template takes one image and two turns",
    "label_mismatch": "the official length bookkeeping disagreed, every label would be masked",
    "too_long": "longer than the maximum embedded length (text + image tokens)",
}


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: object | None  # torch.Tensor [n_images, 3, H, W] or None
    index: int | None = None  # position in the data file: the stable key of the record (e.g. in a teacher cache)

    @property
    def n_images(self) -> int:
        return self.input_ids.count(IMAGE_TOKEN_INDEX)


@dataclass
class Skipped:
    id: str
    reason: str
    detail: str
    index: int | None = None  # position in the data file: one record is counted once however often it is read


def _longest_piece(tokenizer) -> int:
    """Characters in the tokenizer's longest piece (SentencePiece's default cap, 16, if it cannot be read)."""
    sp = getattr(tokenizer, "sp", None)
    try:
        return max(len(sp.id_to_piece(i)) for i in range(sp.get_piece_size()))
    except (AttributeError, TypeError, ValueError):
        return 16


class _Records:
    """Random access to records of a JSON list (loaded) or a JSONL file (byte offsets only)."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise AlignKDError(f"training data {path} does not exist; pass a LLaVA-format .json or .jsonl file")
        self.offsets: list[int] | None = None
        self.line_numbers: list[int] | None = None  # only when blank lines make them differ from index + 1
        self.items: list | None = None
        if path.suffix == ".jsonl":
            self.offsets = []
            with path.open("rb") as f:
                pos = 0
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        self.offsets.append(pos)
                        if self.line_numbers is not None:
                            self.line_numbers.append(number)
                    elif self.line_numbers is None:
                        self.line_numbers = list(range(1, len(self.offsets) + 1))
                    pos += len(line)
        else:
            try:
                self.items = json.loads(path.read_text())
            except ValueError as err:
                raise AlignKDError(f"{path} is not valid JSON ({err}); LLaVA data is a JSON list, or use .jsonl with one record per line") from err
            if not isinstance(self.items, list):
                raise AlignKDError(f"{path} holds a JSON {type(self.items).__name__}, not a list of records")

    def __len__(self) -> int:
        return len(self.offsets) if self.offsets is not None else len(self.items)

    def where(self, i: int) -> str:
        """Where record i is, counted from 1 as editors do: "line 4" (JSONL) or "item 4" (JSON list)."""
        if self.items is not None:
            return f"item {i + 1}"
        return f"line {self.line_numbers[i] if self.line_numbers is not None else i + 1}"

    def __getitem__(self, i: int):
        if self.items is not None:
            return self.items[i]
        with self.path.open("rb") as f:
            f.seek(self.offsets[i])
            line = f.readline()
        try:
            return json.loads(line)
        except ValueError:
            return None  # reported as a malformed record


class LlavaDataset:
    """Map-style dataset of `Example`s (or `Skipped` markers) for one template and length limit."""

    def __init__(self, data_path, image_root, tokenizer, image_config: ImageConfig, template: str = "v1",
                 max_length: int | str = "long", num_image_tokens: int = 144, strict: bool = False):
        self.data_path = Path(data_path)
        self.records = _Records(self.data_path)
        self.image_root = Path(image_root) if image_root is not None else self.data_path.parent
        self.tokenizer = tokenizer
        self.template = get_template(template)
        if isinstance(max_length, str) and max_length.strip().isdigit():
            max_length = int(max_length)
        self.max_length = LENGTH_PRESETS.get(max_length, max_length) if isinstance(max_length, str) else int(max_length)
        if not isinstance(self.max_length, int):
            raise AlignKDError(f"max_length {max_length!r} is neither a number nor one of {', '.join(LENGTH_PRESETS)}")
        self.num_image_tokens = num_image_tokens
        self.strict = strict
        self.processor = ImageProcessor(image_config)
        self.max_chars = self.max_length * _longest_piece(tokenizer) * CHARS_SLACK

    def __len__(self) -> int:
        return len(self.records)

    def _skip(self, i: int, rec_id: str, reason: str, detail: str = "") -> Skipped:
        if self.strict:
            raise AlignKDError(f"record {rec_id!r} ({self.records.where(i)}) in {self.data_path}: {SKIP_REASONS[reason]}"
                               f"{': ' + detail if detail else ''} (fix or remove the record, or run without --strict to "
                               "skip and count such records)")
        return Skipped(rec_id, reason, detail, i)

    def _image_paths(self, record, i, rec_id):
        names = record.get("image")
        names = [] if names is None else [names] if isinstance(names, str) else list(names)
        root = self.image_root.resolve()
        paths = []
        for name in names:
            path = Path(name)
            full = (root / path).resolve()
            if path.is_absolute() or not full.is_relative_to(root):
                return None, self._skip(i, rec_id, "image_outside_root", str(name))
            if not full.is_file():
                return None, self._skip(i, rec_id, "missing_image", str(full))
            paths.append(full)
        return paths, None

    def __getitem__(self, i: int) -> Example | Skipped:
        record = self.records[i]
        if not isinstance(record, dict):
            return self._skip(i, f"#{i + 1}", "malformed", self.records.where(i))
        rec_id = str(record.get("id", f"#{i + 1}"))
        turns = record.get("conversations")
        if not isinstance(turns, list) or not turns:
            return self._skip(i, rec_id, "no_conversations")
        if any(not isinstance(t, dict) or t.get("from") not in ROLES or not isinstance(t.get("value"), str) for t in turns):
            bad = next(t for t in turns if not isinstance(t, dict) or t.get("from") not in ROLES or not isinstance(t.get("value"), str))
            return self._skip(i, rec_id, "unknown_role", repr(bad.get("from") if isinstance(bad, dict) else bad))
        paths, skipped = self._image_paths(record, i, rec_id)
        if skipped:
            return skipped
        n_tags = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
        if n_tags > len(paths):
            return self._skip(i, rec_id, "too_many_image_tags", f"{n_tags} tags, {len(paths)} images")
        if paths and n_tags < len(paths):
            return self._skip(i, rec_id, "image_without_tag", f"{len(paths)} images, {n_tags} tags")
        if self.template.style == "plain" and (len(paths) != 1 or len(turns) != 2):
            return self._skip(i, rec_id, "plain_needs_image_pair")
        chars = sum(len(t["value"]) for t in turns)
        if chars > self.max_chars:  # tokenising a 10 MB record to find it too long costs gigabytes
            return self._skip(i, rec_id, "too_long", f"{chars} characters, more than {self.max_length} tokens can hold")
        if paths:
            turns = normalize_image_turns(turns)
        try:
            ex = tokenize_conversation(turns, self.template, self.tokenizer, has_image=bool(paths))
        except AlignKDError as err:
            return self._skip(i, rec_id, "unknown_role", str(err))
        if ex.mismatch:
            return self._skip(i, rec_id, "label_mismatch")
        embedded = len(ex.input_ids) + len(paths) * (self.num_image_tokens - 1)
        if embedded > self.max_length:
            return self._skip(i, rec_id, "too_long", f"{embedded} > {self.max_length}")
        pixels = None
        if paths:
            images, failed = self._load_images(paths)
            if failed:
                return self._skip(i, rec_id, "corrupt_image", failed)
            pixels = self.processor(images)
        return Example(rec_id, ex.input_ids, ex.labels, pixels, i)

    @staticmethod
    def _load_images(paths):
        """(images, None), or (None, why) for the first image that cannot be decoded."""
        from PIL import Image

        images = []
        for path in paths:
            try:
                images.append(load_image(path))
            except (AlignKDError, Image.DecompressionBombError) as err:  # a pixel bomb is a bad record, not a crash
                return None, str(err)
        return images, None


@dataclass
class Collator:
    """Right-pads ids (pad id), labels (-100) and the attention mask; stacks images in placeholder order.

    A batch may mix image and text-only samples. Skipped records are dropped and counted in `skipped`.
    """

    pad_id: int
    seen: dict = field(default_factory=dict)  # record key -> skip reason, each record once

    @property
    def skipped(self) -> Counter:
        """Skipped records by reason (a record skipped in every epoch counts once)."""
        return Counter(self.seen.values())

    def record(self, skipped) -> None:
        """Count (key, reason) pairs; counting the same record again changes nothing."""
        for key, reason in skipped:
            self.seen.setdefault(key, reason)

    def merge(self, seen: dict) -> None:
        self.record(seen.items())

    def __call__(self, items: list[Example | Skipped]) -> dict:
        import torch

        examples = [x for x in items if isinstance(x, Example)]
        skipped = [(x.index if x.index is not None else x.id, x.reason) for x in items if isinstance(x, Skipped)]
        self.record(skipped)
        if not examples:
            return {"input_ids": None, "n_skipped": len(items), "skipped": skipped}
        width = max(len(x.input_ids) for x in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.bool)
        for row, x in enumerate(examples):
            n = len(x.input_ids)
            ids[row, :n] = torch.tensor(x.input_ids)
            labels[row, :n] = torch.tensor(x.labels)
            mask[row, :n] = True
        pixels = [x.pixel_values for x in examples if x.pixel_values is not None]
        return {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "images": torch.cat(pixels) if pixels else None,
            "ids": [x.id for x in examples],
            "indices": [x.index for x in examples],
            "n_skipped": len(items) - len(examples),
            "skipped": skipped,
        }

    def summary(self) -> str:
        if not self.skipped:
            return "no records skipped"
        total = sum(self.skipped.values())
        parts = ", ".join(f"{n} {reason} ({SKIP_REASONS[reason]})" for reason, n in self.skipped.most_common())
        return f"skipped {total} records: {parts}"
