"""The demo apps' JVM core (android_demo/core): its JUnit tests on export/golden/ run through test.sh, and the
test resources it shares with the Swift core are checked against what the Python side produces today.

    python -m pytest tests/apps -q
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "android_demo" / "core"
RESOURCES = CORE / "src" / "test" / "resources"
SWIFT_RESOURCES = ROOT / "ios_demo" / "AlignKDCore" / "Tests" / "AlignKDCoreTests" / "Resources"
TOOLS = CORE / "tools"

needs_javac = pytest.mark.skipif(shutil.which("javac") is None,
                                 reason="javac (JDK 17) is not installed; the JVM core of android_demo cannot be compiled")


@pytest.fixture(scope="module")
def core_run(tmp_path_factory):
    """Run test.sh once: its output and the profile JSON it writes as the app would."""
    sample = tmp_path_factory.mktemp("apps") / "profile.json"
    proc = subprocess.run(["bash", str(CORE / "test.sh")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PROFILE_SAMPLE": str(sample)})
    return proc, sample


@needs_javac
def test_jvm_core_junit_tests_pass(core_run):
    proc, _ = core_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "OK (" in proc.stdout


@needs_javac
def test_phone_profile_json_reads_like_a_host_profile(core_run):
    """The JSON the apps write has alignkd profile's keys, and alignkd's own formatter prints it."""
    from alignkd.runtime.profile import METRICS, format_profile

    proc, sample = core_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(sample.read_text())
    assert set(METRICS) <= set(result)
    assert list(result["p90"]) == list(METRICS)
    assert {"name", "os", "cpu", "cores", "threads"} <= set(result["device"])
    for run in result["raw"]:
        assert set(METRICS) <= set(run)
    table = format_profile(result)
    assert "on android" in table and "decode (tok/s)" in table


def test_shared_resources_are_identical_for_java_and_swift():
    for path in sorted(RESOURCES.rglob("*.json")):
        twin = SWIFT_RESOURCES / path.relative_to(RESOURCES)
        assert twin.is_file(), f"{twin} is missing; run {TOOLS / 'make_manifest_fixtures.py'}"
        assert twin.read_text() == path.read_text(), f"{twin} differs from {path}"


def test_manifest_resources_follow_the_current_schema():
    from alignkd.contract.manifest import validate

    manifests = sorted((RESOURCES / "manifests").glob("*.json"))
    assert {p.name for p in manifests} == {"executorch_8da4w.json", "coreml_fp16.json"}
    for path in manifests:
        validate(json.loads(path.read_text()), str(path))


def test_profile_prompt_resource_is_current():
    sys.path.insert(0, str(TOOLS))
    try:
        import make_manifest_fixtures as tool
    finally:
        sys.path.remove(str(TOOLS))
    assert json.loads((RESOURCES / "profile_prompt.json").read_text()) == tool.profile_prompt_vectors()


@pytest.mark.slow
def test_manifest_resources_are_current(tmp_path):
    """Re-export the tiny bundles and compare their manifests (less timings and parity figures, and file hashes:
    a .mlpackage's Manifest.json holds fresh UUIDs at every export; the file names must agree)."""
    sys.path.insert(0, str(TOOLS))
    try:
        import make_manifest_fixtures as tool
    finally:
        sys.path.remove(str(TOOLS))
    drop = ("export", "parity", "files")
    for name, text in tool.manifest_texts(tmp_path).items():
        fresh, kept = json.loads(text), json.loads((RESOURCES / "manifests" / name).read_text())
        stale = f"{name} is stale; run {TOOLS / 'make_manifest_fixtures.py'}"
        assert sorted(fresh["files"]) == sorted(kept["files"]), stale
        assert {k: v for k, v in fresh.items() if k not in drop} == {k: v for k, v in kept.items() if k not in drop}, stale
