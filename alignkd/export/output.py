"""The bundle's output folder: what `--overwrite` may replace, the hidden staging folder, the final swap.

An export writes into a hidden staging folder next to `out` (`.NAME.partial-PID@HOST-XXXXXX`) and renames it
to `out` only when the bundle is complete, so a failed or killed export never leaves a half bundle at `out`.
`--overwrite` replaces only a folder that holds an alignkd bundle and nothing else (or an empty folder): a
user's folder with their own files is refused, never deleted. Staging folders left by a killed export
(kill -9, power loss) are removed by the next export to the same `out` once their owner is gone: the pid
in the name is dead on this host, or, for a folder from another host or an older alignkd without a pid, it
has not been touched for STALE_AFTER_S.

    python -m pytest tests/export/test_output.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

from alignkd.errors import AlignKDError

MANIFEST = "manifest.json"
STALE_AFTER_S = 24 * 3600  # longer than any export; only for staging folders whose owner cannot be asked


def _prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def _owner_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname().replace('-', '_')}"


def bundle_manifest(folder: Path) -> dict | None:
    """The folder's manifest.json when it parses as one `alignkd export` wrote; else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ours = (isinstance(manifest, dict) and isinstance(manifest.get("format_version"), int)
            and isinstance(manifest.get("model"), dict) and manifest["model"].get("family") == "mobilevlm_v2"
            and isinstance(manifest.get("files"), dict) and isinstance(manifest.get("parts"), dict))
    return manifest if ours else None


def check_replaceable(out: Path) -> None:
    """Refuse to let --overwrite delete anything that is not a bundle's own file."""
    contents = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_symlink() or not p.is_dir())
    if not contents:
        return  # an empty folder: nothing to lose
    manifest = bundle_manifest(out)
    if manifest is None:
        raise AlignKDError(f"output folder {out} is not an alignkd bundle (no manifest.json written by `alignkd export`), "
                           "so --overwrite will not delete it; choose another -o or move its files away first")
    foreign = [rel for rel in contents if rel != MANIFEST and rel not in manifest["files"]]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise AlignKDError(f"output folder {out} holds files that are not part of its bundle ({shown}); --overwrite would "
                           "delete them, so move them out or choose another -o")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _is_stale(folder: Path, tag: str) -> bool:
    pid, _, host = tag.partition("@")
    if pid.isdigit() and host == socket.gethostname().replace("-", "_"):
        return int(pid) != os.getpid() and not _pid_alive(int(pid))
    try:
        return time.time() - folder.stat().st_mtime > STALE_AFTER_S
    except OSError:
        return False


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove staging folders of `out` left by exports that no longer run; returns what was removed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    prefix = _prefix(out)
    for entry in out.parent.iterdir():
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        if _is_stale(entry, entry.name[len(prefix):].split("-", 1)[0]):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def make_staging(out: Path) -> Path:
    """Create the hidden staging folder next to `out`; an unwritable place is one error, before any work."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{_prefix(out)}{_owner_tag()}-", dir=out.parent))
    except OSError as err:
        raise AlignKDError(f"cannot write the bundle {out} ({err.strerror or err}); choose an -o in a folder you can "
                           "write to") from None


def swap_in(staging: Path, out: Path) -> None:
    """Put the finished bundle at `out`; an old bundle there is moved aside under a staging name, then removed."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f"{_prefix(out)}{_owner_tag()}-old-{uuid.uuid4().hex[:8]}"
        out.rename(old)  # a kill after this leaves the old bundle in a staging folder, cleaned by a later export
    staging.rename(out)
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
