"""A non-editable install carries the bundle schema: build the wheel, install it apart, read the schema from it."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from alignkd.errors import AlignKDError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_IN_WHEEL = "alignkd/contract/manifest.schema.json"


def test_wheel_ships_the_schema_and_an_installed_copy_reads_it(tmp_path):
    src = tmp_path / "src"  # build from a copy, so the worktree gets no build/ or egg-info
    shutil.copytree(ROOT / "alignkd", src / "alignkd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("alignkd-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        assert SCHEMA_IN_WHEEL in zf.namelist()
        zf.extractall(site)  # a pure-Python wheel installs by unpacking
    code = ("import alignkd; from alignkd.contract.manifest import load_schema; "
            "print(alignkd.__file__); print(load_schema()['title'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    where, title = out.stdout.splitlines()
    assert Path(where).is_relative_to(site)  # the unpacked wheel, not this checkout
    assert title == "alignkd exported bundle manifest"


def test_one_schema_copy_in_the_repository():
    assert (ROOT / SCHEMA_IN_WHEEL).is_file()
    assert not (ROOT / "export" / "manifest.schema.json").exists()


def test_export_checks_the_schema_before_loading_the_checkpoint(checkpoint, tmp_path, monkeypatch):
    from alignkd.contract import manifest
    from alignkd.export import export_bundle

    monkeypatch.setattr(manifest, "SCHEMA_NAME", "gone.schema.json")
    monkeypatch.setattr("alignkd.models.checkpoint.load_checkpoint", lambda *a, **k: pytest.fail("checkpoint loaded"))
    with pytest.raises(AlignKDError, match="gone.schema.json of the installed alignkd package cannot be read.*reinstall alignkd"):
        export_bundle(checkpoint, "onnx", "fp32", tmp_path / "b")
    assert not (tmp_path / "b").exists()
