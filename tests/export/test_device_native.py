"""The real host-built alignkd-runner through the stand-in adb (tests/runtime/standins.py): every step of
`alignkd profile --device android` (push, run on "the phone", pull, getprop, clean up) on a real tiny bundle,
and the pulled JSON read side by side with the same runner's host profile. The stand-in phone reports the
runner's own ABI (x86_64 here), so the architecture check passes as it would on an x86_64 emulator.

Uses the runner the session builds (the `runner` fixture of tests/export/conftest.py); a failed build fails
the test. Nothing here ran on a phone.
"""

import json

import pytest

from tests.runtime.standins import adb_calls, phone

pytest.importorskip("executorch", reason="the native runner runs ExecuTorch bundles (alignkd[executorch])")


@pytest.fixture(scope="module")
def host_runner(runner):
    return runner  # the session's build (tests/export/conftest.py)


def test_real_runner_round_trip_through_standin_adb(host_runner, bundles, tmp_path, monkeypatch):
    from alignkd.runtime import device
    from alignkd.runtime.native import profile_native
    from alignkd.runtime.profile_compare import compare, format_compare

    bundle = bundles("executorch", "fp32")
    root = phone(tmp_path, monkeypatch, props={"ro.product.cpu.abi": device.elf_abi(host_runner)})
    monkeypatch.setenv(device.RUNNER_ENV, str(host_runner))
    out = device.profile_android(bundle, runs=1, warmup=0, max_new_tokens=4)
    host = profile_native(bundle, runs=1, warmup=0, max_new_tokens=4)

    assert set(host) <= set(out) and out["runtime"] == "native"  # every key of the host JSON came back
    assert (out["prefill_tokens"], out["decode_tokens"]) == (host["prefill_tokens"], host["decode_tokens"]) == (
        host["prefill_tokens"], 3)
    assert out["prompt"] == host["prompt"] and out["size_mb"] == pytest.approx(host["size_mb"])
    assert out["device"]["name"] == "android" and out["device"]["runner"] == host["device"]["runner"]
    assert out["decode_tok_s"] > 0 and len(out["raw"]) == 1
    pushed = [c[3] for c in adb_calls(root) if c[2:3] == ["push"]]
    assert pushed[:2] == [str(host_runner), str(bundle)] and pushed[2].endswith("profile_image.png")
    assert list((root / "data/local/tmp").iterdir()) == []  # pushed runner, bundle, image and JSON removed

    files = []
    for name, data in (("native", host), ("android", out)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(data))
    labels = [run["label"] for run in compare(files)["runs"]]
    assert labels == ["host (native)", "android Pixel 8 (native)"]
    assert "android Pixel 8" in format_compare(compare(files))
