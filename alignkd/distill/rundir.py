"""The run folder (`output_dir`) of `alignkd distill` / `alignkd train`: one run per folder, and its history.

A new run refuses a folder that already holds files unless `--resume` (continue that run) or `--overwrite`
(replace it) is given, so an old run's student, history and checkpoints are never mixed with a new one's.
`--overwrite` removes only what a training run writes (RUN_ENTRIES) and only in a folder that holds a
training run; a folder with no sign of one is refused even with `--overwrite`, and files a user put next
to a run are left alone. `history.jsonl` is appended one line per optimizer step as training goes, and
cut back to the resumed step on `--resume`, so a killed run keeps its history and a resumed one has no
duplicate lines.

    alignkd distill -c alignkd/configs/synth_distill.yaml output_dir=runs/kd --overwrite
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from alignkd.errors import AlignKDError

HISTORY = "history.jsonl"
# everything a run writes into its folder ("alignkd" is the TensorBoard tracker's subfolder)
RUN_ENTRIES = ("config.json", HISTORY, "train_summary.json", "adapters.safetensors", "student", "student.tmp", "checkpoints",
               "alignkd")


def _entries(folder: Path) -> list[Path]:
    # hidden files (.DS_Store, editor state) do not make a folder "used"
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def is_training_run(folder: Path) -> bool:
    """True when the folder holds an alignkd training run: its config.json, or a resumable checkpoint."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and {"student", "data", "output_dir"} <= set(config):
        return True
    return any((p / "train_state.json").is_file() for p in (folder / "checkpoints").glob("step-*"))


def check_flags(resume, overwrite: bool) -> None:
    if resume and overwrite:
        raise AlignKDError("--resume and --overwrite exclude each other: --resume continues the run in output_dir, "
                           "--overwrite deletes it; pass one of them")


def prepare_output_dir(out_dir: Path, resume: bool, overwrite: bool, main: bool) -> list[str]:
    """Check (every process) and make ready (main process) the run folder before any model is loaded.

    Returns the names removed by --overwrite. Every process runs the checks so that all of them stop together."""
    if out_dir.exists() and not out_dir.is_dir():
        raise AlignKDError(f"output_dir {out_dir} is a file; set output_dir to a folder")
    removed = []
    if _entries(out_dir) and not resume:
        if not is_training_run(out_dir):
            raise AlignKDError(f"output_dir {out_dir} is not empty and holds no alignkd training run (no run config.json "
                               "or checkpoint); choose a new or empty output_dir (--overwrite only replaces an earlier run)")
        if not overwrite:
            raise AlignKDError(f"output_dir {out_dir} already holds a training run; pass --resume to continue it, "
                               "--overwrite to replace it, or choose another output_dir")
        removed = [name for name in RUN_ENTRIES if (out_dir / name).exists()]
        if main:
            for name in removed:
                path = out_dir / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    _check_writable(out_dir)
    return removed


def _check_writable(out_dir: Path) -> None:
    """Fail now, in one line, rather than after loading models or at the first checkpoint."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise AlignKDError(f"output_dir {out_dir} is not writable ({err.strerror or err}); choose a folder you can write "
                           "to, or fix its permissions") from err


def truncate_history(out_dir: Path, step: int) -> None:
    """Keep the history lines up to `step` (the resumed checkpoint): later ones are redone, a torn last line dropped."""
    path = out_dir / HISTORY
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill during its write
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


class History:
    """Appends one JSON line per optimizer step and flushes it, so a killed run keeps what it did."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.last: dict | None = None
        self._file = (out_dir / HISTORY).open("a") if enabled else None

    def append(self, entry: dict) -> None:
        self.last = entry
        if self._file is not None:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
