"""The demo apps' JVM core (android_demo/core): its JUnit tests on export/golden/ run through test.sh, and the
golden manifests the JVM and Swift cores parse are checked against what the exporter writes today.

    python -m pytest tests/apps -q
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "android_demo" / "core"
GOLDEN = ROOT / "export" / "golden"
REGENERATE = "python -m alignkd.export.golden --manifests"

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


def test_manifest_resources_follow_the_current_schema():
    from alignkd.contract.manifest import validate

    manifests = sorted((GOLDEN / "manifests").glob("*.json"))
    assert {p.name for p in manifests} == {"executorch_8da4w.json", "coreml_fp16.json", "gguf_q4_k_s.json"}
    for path in manifests:
        validate(json.loads(path.read_text()), str(path))


@pytest.mark.slow
def test_manifest_resources_are_current(tmp_path):
    """Re-export the tiny bundles and compare their manifests (less timings and parity figures, and file hashes:
    a .mlpackage's Manifest.json holds fresh UUIDs at every export; the file names must agree)."""
    from alignkd.export.golden import manifest_texts

    drop = ("export", "parity", "files")
    for name, text in manifest_texts(tmp_path, ROOT / "tests" / "fixtures" / "mobilevlm_official_tiny" / "checkpoint").items():
        fresh, kept = json.loads(text), json.loads((GOLDEN / "manifests" / name).read_text())
        stale = f"{name} is stale; run {REGENERATE}"
        assert sorted(fresh["files"]) == sorted(kept["files"]), stale
        assert {k: v for k, v in fresh.items() if k not in drop} == {k: v for k, v in kept.items() if k not in drop}, stale
