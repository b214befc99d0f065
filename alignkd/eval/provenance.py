"""What answers in an eval `--out` folder were made with: the model's identity and the generation settings.

`alignkd eval` resumes by reusing the answers already in `--out`. That is only sound when they came from
the same model with the same settings, so the folder carries `eval-key.json`, written before the first
answer: the model's fingerprint plus every setting that changes an answer. A later run into the folder
reuses its answers only when its own key is equal; otherwise it refuses (or, with `overwrite`, removes
the old answers and starts afresh) instead of scoring answers another model or budget produced.

Fingerprint (sha256), chosen to be content-based yet cheap on multi-GB weights:
- an exported bundle: the bytes of its manifest.json, which records the sha256 of every part file;
- a checkpoint folder: every config/tokenizer/index file in full (`*.json`, `*.model`, and all of
  `vision_tower/`), and for each weights file its size plus, for safetensors, the whole header (names,
  dtypes, shapes, offsets) and a 16 KiB sample at the start and the middle of every tensor's data; other
  weights files (`*.bin`, `*.pt`) are hashed in full below 64 MiB, else by 256 evenly spaced 16 KiB samples.
  File sizes and modification times are not used: a copy keeps its identity, a retrained model does not.

What is *not* in the key: `--limit` (an answer does not depend on how many questions were asked, so a larger
limit extends a run) and the benchmark list (every benchmark has its own answer file).

    python -m pytest tests/eval/test_provenance.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

from alignkd.errors import AlignKDError

KEY_FILE = "eval-key.json"
# Bump when the prompt building or the decoding in alignkd.eval.run changes what a model answers.
PROTOCOL = 1

_SAMPLE = 16 * 1024
_FULL_HASH_LIMIT = 64 * 1024 * 1024
_SPREAD_SAMPLES = 256
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SMALL_SUFFIXES = (".json", ".model", ".txt")


def _sample(f, h, offset: int, size: int) -> None:
    f.seek(offset)
    h.update(f.read(size))


def _hash_safetensors(path: Path, h) -> None:
    """Size, the whole header, and the start and middle of every tensor's data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
        if len(raw) < 8 or n > size - 8:
            raise AlignKDError(f"{path} is not a safetensors file (bad header length); re-save or re-download the checkpoint.")
        header = f.read(n)
        h.update(size.to_bytes(8, "little") + header)
        try:
            entries = json.loads(header)
        except ValueError as err:
            raise AlignKDError(f"{path} has a corrupt safetensors header ({err}); re-save or re-download the checkpoint.") from None
        base = 8 + n
        for name in sorted(k for k in entries if k != "__metadata__"):
            start, end = entries[name].get("data_offsets", (0, 0))
            for offset in (start, start + (end - start) // 2):
                _sample(f, h, base + offset, min(_SAMPLE, end - offset))


def _hash_other(path: Path, h) -> None:
    size = path.stat().st_size
    h.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            h.update(f.read())
            return
        step = (size - _SAMPLE) // (_SPREAD_SAMPLES - 1)
        for i in range(_SPREAD_SAMPLES):
            _sample(f, h, i * step, _SAMPLE)


def _checkpoint_files(folder: Path) -> list[Path]:
    # A teacher's teacher_record.json (alignkd.quickstart) says how it was trained and what it scored, which is
    # written after its evaluation: it does not change the model's answers, so it is not part of its identity.
    top = [p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES + _SMALL_SUFFIXES
           and p.name != "teacher_record.json"]
    tower = [p for p in (folder / "vision_tower").rglob("*") if p.is_file()] if (folder / "vision_tower").is_dir() else []
    return sorted(top + tower)


def model_fingerprint(model_path) -> dict:
    """{"kind": "bundle" | "checkpoint", "sha256": ...} of the model at `model_path` (see the module docstring)."""
    path = Path(model_path)
    if not path.is_dir():
        raise AlignKDError(f"model folder {path} does not exist (or is not a folder); pass a MobileVLM checkpoint "
                           "folder or a folder written by `alignkd export`.")
    h = hashlib.sha256()
    if (path / "manifest.json").is_file():
        h.update((path / "manifest.json").read_bytes())
        return {"kind": "bundle", "sha256": h.hexdigest()}
    if not (path / "config.json").is_file():
        raise AlignKDError(f"{path} is neither a checkpoint folder (config.json) nor an exported bundle (manifest.json); "
                           "pass a MobileVLM checkpoint folder or a folder written by `alignkd export`.")
    for file in _checkpoint_files(path):
        h.update(file.relative_to(path).as_posix().encode() + b"\0")
        if file.suffix == ".safetensors":
            _hash_safetensors(file, h)
        else:
            _hash_other(file, h)
    return {"kind": "checkpoint", "sha256": h.hexdigest()}


def generation_key(model_path, *, dtype: str, max_new_tokens: int | None, blind: bool, shuffled: bool) -> dict:
    """Everything that decides the answers: the model's fingerprint and the generation settings."""
    model = model_fingerprint(model_path)
    return {
        "protocol": PROTOCOL,
        "model": model,
        # A bundle runs in the precision it was exported in; --dtype only applies to checkpoints.
        "dtype": dtype if model["kind"] == "checkpoint" else None,
        "max_new_tokens_cap": max_new_tokens,
        "decoding": "greedy",  # temperature 0, as LLaVA's eval scripts
        "control": "blind" if blind else "shuffled" if shuffled else None,
    }


def _differences(old: dict, new: dict) -> list[str]:
    names = {"model": "model", "dtype": "--dtype", "max_new_tokens_cap": "--max-new-tokens", "control": "control (--blind/--shuffled)",
             "decoding": "decoding", "protocol": "answer protocol version"}
    return [names.get(k, k) for k in names if old.get(k) != new.get(k)]


def check_writable(folder: Path, files=()) -> None:
    """Create `folder` and prove a file can be written in it (and each of `files` appended to), before any
    model work; a read-only place is one sentence, not a PermissionError after the model load."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        for file in files:
            if Path(file).exists():
                with open(file, "ab"):
                    pass
    except OSError as err:
        raise _cannot_write(folder, err) from None


def claim_folder(out_dir: Path, key: dict, answer_files: list[Path], *, overwrite: bool) -> None:
    """Make `out_dir` hold answers of `key` only: keep matching answers (resume), refuse others unless
    `overwrite`, which removes the answer files (and nothing else) first."""
    key_path = out_dir / KEY_FILE
    existing = [p for p in answer_files if p.exists() and p.stat().st_size]
    old = None
    if key_path.is_file():
        try:
            old = json.loads(key_path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if not isinstance(old, dict):
            old = {"protocol": "unreadable"}
    if overwrite:
        for p in answer_files:
            _write(out_dir, p.unlink, missing_ok=True)
    elif old is not None and old != key and existing:  # a key with no answers yet (killed at once) binds nothing
        raise AlignKDError(f"{out_dir} holds answers made with another {', '.join(_differences(old, key)) or 'setting'}; "
                           "pass another --out folder, or --overwrite to delete those answers and start afresh.")
    elif old is None and existing:
        raise AlignKDError(f"{out_dir} holds answers ({existing[0].name}) with no {KEY_FILE} saying which model and settings "
                           "made them; pass another --out folder, or --overwrite to delete those answers and start afresh.")
    if old != key or overwrite:
        tmp = key_path.with_name(KEY_FILE + ".tmp")
        _write(out_dir, tmp.write_text, json.dumps(key, indent=2) + "\n", encoding="utf-8")
        _write(out_dir, os.replace, tmp, key_path)  # a kill never leaves a half-written key behind


def _write(folder: Path, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except OSError as err:
        raise _cannot_write(folder, err) from None


def _cannot_write(folder: Path, err: OSError) -> AlignKDError:
    return AlignKDError(f"cannot write to {folder} ({err.strerror or err}); pass an --out folder you can write to.")
