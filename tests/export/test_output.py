"""The output folder: --overwrite replaces only a bundle, stale staging folders of killed exports are cleaned,
an unwritable -o is one error. None of these tests runs an export to the end."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignkd.errors import AlignKDError
from alignkd.export import export_bundle
from alignkd.export.output import STALE_AFTER_S, check_replaceable, clean_stale_staging, swap_in

HOST = socket.gethostname().replace("-", "_")


def _fake_bundle(folder: Path, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.pte").write_bytes(b"program")
    manifest = {"format_version": 1, "model": {"family": "mobilevlm_v2"}, "parts": {},
                "files": {"model.pte": {"sha256": "0" * 64, "bytes": 7}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_overwrite_refuses_a_users_folder_and_keeps_it(checkpoint, tmp_path):
    mine = tmp_path / "my-photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    (mine / "manifest.json").write_text('{"mine": true}')  # a manifest that is not ours is not enough
    with pytest.raises(AlignKDError, match=r"my-photos is not an alignkd bundle .*--overwrite will not delete it"):
        export_bundle(checkpoint, "onnx", "fp32", mine, overwrite=True)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-photos"]  # no staging folder left either


def test_overwrite_refuses_a_bundle_holding_other_files(tmp_path):
    bundle = _fake_bundle(tmp_path / "b", {"notes.txt": "my notes"})
    with pytest.raises(AlignKDError, match=r"holds files that are not part of its bundle \(notes.txt\)"):
        check_replaceable(bundle)
    assert (bundle / "notes.txt").read_text() == "my notes"


def test_overwrite_accepts_a_bundle_or_an_empty_folder(tmp_path):
    check_replaceable(_fake_bundle(tmp_path / "b"))
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")


def test_swap_replaces_the_old_bundle_and_leaves_nothing_hidden(tmp_path):
    out = _fake_bundle(tmp_path / "b")
    staging = tmp_path / ".b.partial-new"
    staging.mkdir()
    (staging / "manifest.json").write_text("{}")
    swap_in(staging, out)
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and [p.name for p in out.iterdir()] == ["manifest.json"]


def test_stale_staging_rule(tmp_path):
    """Removed: a dead pid on this host, or (no pid / another host) untouched for a day. Kept: live owners, fresh
    folders whose owner cannot be asked, other outputs' staging folders."""
    out = tmp_path / "bundle"
    made = {}
    for key, name in {
        "dead": f".bundle.partial-{_dead_pid()}@{HOST}-x1",
        "live": f".bundle.partial-{os.getppid()}@{HOST}-x2",
        "own": f".bundle.partial-{os.getpid()}@{HOST}-x3",
        "other_host_fresh": f".bundle.partial-{_dead_pid()}@elsewhere-x4",
        "legacy_fresh": ".bundle.partial-ab12cd34",
        "legacy_old": ".bundle.partial-ef56gh78",
        "other_output": f".bundlex.partial-{_dead_pid()}@{HOST}-x5",
    }.items():
        made[key] = tmp_path / name
        made[key].mkdir()
        (made[key] / "part.bin").write_bytes(b"half")
    old = time.time() - STALE_AFTER_S - 60
    os.utime(made["legacy_old"], (old, old))
    removed = clean_stale_staging(out)
    assert sorted(removed) == sorted([made["dead"], made["legacy_old"]])
    assert {k for k, p in made.items() if p.exists()} == {"live", "own", "other_host_fresh", "legacy_fresh", "other_output"}


def test_kill_9_mid_export_leaves_staging_that_the_next_export_cleans(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "b"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "alignkd", "export", str(checkpoint), "--target", "onnx", "--quant", "fp32",
                             "-o", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".b.partial-*")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the export ended before it could be killed"
    finally:
        proc.kill()  # SIGKILL: no cleanup handler runs
        proc.wait()
    stale = list(tmp_path.glob(".b.partial-*"))
    assert len(stale) == 1 and not out.exists()

    # The next export removes it before its own work (stopped here at the checkpoint load to stay fast).
    def stop(*args, **kwargs):
        assert not stale[0].exists()
        raise AlignKDError("stop here")
    monkeypatch.setattr("alignkd.models.checkpoint.load_checkpoint", stop)
    with pytest.raises(AlignKDError, match="stop here"):
        export_bundle(checkpoint, "onnx", "fp32", out)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_one_error(checkpoint, tmp_path, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(AlignKDError, match=r"cannot write the bundle .*b \(Permission denied\); choose an -o in a folder you can write to"):
        export_bundle(checkpoint, "onnx", "fp32", tmp_path / "b")


def test_cli_output_under_a_file_is_one_line(checkpoint, tmp_path):
    from typer.testing import CliRunner

    from alignkd.cli import app

    (tmp_path / "file.txt").write_text("x")
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--target", "onnx", "--quant", "fp32",
                                      "-o", str(tmp_path / "file.txt" / "b")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot write the bundle") and "Traceback" not in result.output
