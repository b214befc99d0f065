"""`alignkd profile --device android|ios` (alignkd.runtime.device) against stand-in adb / xcrun on PATH.

A local folder plays the phone (tests/runtime/standins.py); a stand-in runner script plays alignkd-runner, and
the pushed "binary" is an ELF header for the architecture under test. The real host-built runner on a real
bundle through the same stand-in adb is tests/export/test_device_native.py. No phone has run any of this.
"""

import json
import platform
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alignkd.cli import app
from alignkd.errors import AlignKDError
from alignkd.runtime import device
from tests.runtime.standins import RUNNER, adb_calls, elf_stub, phone, write_script

QUESTION = "What is in the picture?"


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A folder that passes the Python side's manifest read; the stand-in runner checks it arrived."""
    path = tmp_path / "tiny_et"
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"prompt": {"template": "v1"}, "num_image_tokens": 144}))
    (path / "model.pte").write_bytes(b"\0" * 1000)
    return path


@pytest.fixture
def android(tmp_path, monkeypatch):
    """The phone folder, with an arm64 'runner' to push and the stand-in runner answering for it."""
    root = phone(tmp_path, monkeypatch)
    monkeypatch.setenv(device.RUNNER_ENV, str(elf_stub(tmp_path / "alignkd-runner", 183)))
    monkeypatch.setenv("FAKE_ADB_RUNNER_CMD", f"{sys.executable} {write_script(tmp_path / 'runner.py', RUNNER)}")
    return root


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_of(result) -> str:
    assert result.exit_code == 2, result.output
    return result.output.strip().splitlines()[-1]


def test_android_round_trip_fills_device_and_cleans_up(android, bundle):
    result = cli("profile", bundle, "--device", "android", "--runs", 2, "--warmup", 0, "--max-new-tokens", 8,
                 "--prompt", QUESTION, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert {k: out["device"][k] for k in ("name", "model", "soc", "android_version", "sdk", "abi", "serial")} == {
        "name": "android", "model": "Pixel 8", "soc": "Google Tensor G3", "android_version": "14", "sdk": 34,
        "abi": "arm64-v8a", "serial": "emulator-5554"}
    assert out["device"]["os"] == "Android 14 (API 34)" and out["device"]["kernel"] == "Linux-6.1-aarch64"
    assert out["device"]["runner"] == "alignkd-runner 0.1.0"  # the runner's own keys survive
    args = out["args"]  # what the stand-in runner was called with, on the phone
    assert args[args.index("--runs") + 1] == "2" and args[args.index("--warmup") + 1] == "0"
    assert args[args.index("--prompt") + 1] == QUESTION and args[args.index("--bundle") + 1] == "tiny_et"
    assert out["model"] == str(bundle) and out["device_path"] == "/data/local/tmp/alignkd/tiny_et"
    pushed = [c[-2:] for c in adb_calls(android) if "push" in c]
    assert [Path(src).name for src, _ in pushed] == ["alignkd-runner", "tiny_et", "profile_image.png"]
    assert list((android / "data/local/tmp").iterdir()) == []  # everything it pushed is gone


def test_android_table_without_json(android, bundle):
    result = cli("profile", bundle, "--device", "android", "--runs", 1, "--prompt", QUESTION)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the table's title wraps
    assert "on android: Google Tensor G3" in text and "decode (tok/s)" in text


def test_keep_leaves_what_was_pushed(android, bundle):
    assert cli("profile", bundle, "--device", "android", "--runs", 1, "--prompt", QUESTION, "--keep").exit_code == 0
    there = android / "data/local/tmp/alignkd"
    assert (there / "alignkd-runner").is_file() and (there / "tiny_et" / "model.pte").is_file()
    assert json.loads((there / "profile.json").read_text())["runtime"] == "native"


def test_files_already_on_the_phone_are_kept(android, bundle):
    mine = android / "data/local/tmp/alignkd/other_bundle/model.pte"
    mine.parent.mkdir(parents=True)
    mine.write_text("the user's own")
    assert cli("profile", bundle, "--device", "android", "--runs", 1, "--prompt", QUESTION).exit_code == 0
    assert mine.read_text() == "the user's own"
    assert sorted(p.name for p in mine.parents[1].iterdir()) == ["other_bundle"]


def test_serial_picks_one_of_several(tmp_path, monkeypatch, bundle):
    phone(tmp_path, monkeypatch, devices=(("A1", "device"), ("B2", "device")))
    monkeypatch.setenv(device.RUNNER_ENV, str(elf_stub(tmp_path / "alignkd-runner", 183)))
    monkeypatch.setenv("FAKE_ADB_RUNNER_CMD", f"{sys.executable} {write_script(tmp_path / 'runner.py', RUNNER)}")
    out = device.profile_android(bundle, serial="B2", runs=1, warmup=0, prompt=QUESTION)
    assert out["device"]["serial"] == "B2"
    assert all(c[:2] == ["-s", "B2"] for c in adb_calls(tmp_path / "phone" / "root") if c[0] != "devices")


@pytest.mark.parametrize("devices,serial,message", [
    ((), None, r"no Android device is attached \(adb devices lists none\); connect a phone"),
    ((("A1", "device"), ("B2", "device")), None, r"2 Android devices are attached \(A1, B2\); pass --serial"),
    ((("A1", "device"),), "C3", r"no device with serial C3 is attached \(adb devices lists: A1\)"),
    ((("A1", "unauthorized"),), None, r"device A1 is unauthorized; unlock the phone and accept"),
    ((("A1", "offline"),), None, r"device A1 is offline; reconnect"),
])
def test_device_choice_errors(tmp_path, monkeypatch, bundle, devices, serial, message):
    phone(tmp_path, monkeypatch, devices=devices)
    monkeypatch.setenv(device.RUNNER_ENV, str(elf_stub(tmp_path / "alignkd-runner", 183)))
    with pytest.raises(AlignKDError, match=message):
        device.profile_android(bundle, serial=serial, prompt=QUESTION)


def test_no_adb_on_path(tmp_path, monkeypatch, bundle):
    monkeypatch.setenv(device.RUNNER_ENV, str(elf_stub(tmp_path / "alignkd-runner", 183)))
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no adb
    assert "needs adb, which is not on PATH; install Android's platform-tools" in error_of(
        cli("profile", bundle, "--device", "android", "--prompt", QUESTION))


def test_host_runner_refused_for_an_arm64_phone(android, tmp_path, monkeypatch, bundle):
    monkeypatch.setenv(device.RUNNER_ENV, str(elf_stub(tmp_path / "host-runner", 62)))
    line = error_of(cli("profile", bundle, "--device", "android", "--prompt", QUESTION))
    assert "is built for x86_64 but device emulator-5554 is arm64-v8a; build alignkd-runner for arm64-v8a with the " \
           "Android NDK (runtime/android/README.md)" in line
    assert adb_calls(android) and not any("push" in c for c in adb_calls(android))  # refused before pushing


def test_runner_abi_follows_the_device(tmp_path, monkeypatch, bundle):
    """An x86_64 emulator (or the stand-in phone) takes an x86_64 runner: the rule compares with the device's ABI."""
    phone(tmp_path, monkeypatch, props={"ro.product.cpu.abi": "x86_64"})
    monkeypatch.setenv(device.RUNNER_ENV, str(elf_stub(tmp_path / "alignkd-runner", 62)))
    monkeypatch.setenv("FAKE_ADB_RUNNER_CMD", f"{sys.executable} {write_script(tmp_path / 'runner.py', RUNNER)}")
    assert device.profile_android(bundle, runs=1, warmup=0, prompt=QUESTION)["device"]["abi"] == "x86_64"


def test_script_is_not_a_runner(android, tmp_path, monkeypatch, bundle):
    monkeypatch.setenv(device.RUNNER_ENV, str(write_script(tmp_path / "runner.sh", "print('hi')")))
    with pytest.raises(AlignKDError, match="is not a compiled program .no ELF header.; build alignkd-runner for Android"):
        device.profile_android(bundle, prompt=QUESTION)


def test_missing_android_runner(android, tmp_path, monkeypatch, bundle):
    monkeypatch.delenv(device.RUNNER_ENV)
    monkeypatch.setattr(device, "DEFAULT_ANDROID_RUNNER", tmp_path / "build" / "android" / "alignkd-runner")
    with pytest.raises(AlignKDError, match="no alignkd-runner built for Android .* runtime/android/README.md"):
        device.profile_android(bundle, prompt=QUESTION)


def test_not_a_bundle_fails_before_adb(android, tmp_path):
    with pytest.raises(AlignKDError, match="cannot read .*manifest.json"):
        device.profile_android(tmp_path / "nothing", prompt=QUESTION)
    assert adb_calls(android) == []


def test_failed_push_names_the_cause_and_cleans_up(android, monkeypatch, bundle):
    monkeypatch.setenv("FAKE_ADB_FULL", "1")
    line = error_of(cli("profile", bundle, "--device", "android", "--prompt", QUESTION))
    assert "adb failed pushing" in line and "No space left on device" in line and "check the phone's storage" in line
    assert list((android / "data/local/tmp").iterdir()) == []


def test_runner_error_line_is_shown_and_cleaned_up(android, monkeypatch, bundle):
    monkeypatch.setenv("FAKE_RUNNER_FAIL", "bundle file tiny_et/model.pte does not match its sha256 in the manifest")
    line = error_of(cli("profile", bundle, "--device", "android", "--prompt", QUESTION))
    assert line == ("error: alignkd-runner failed on emulator-5554: bundle file tiny_et/model.pte does not match "
                    "its sha256 in the manifest")
    assert list((android / "data/local/tmp").iterdir()) == []


def test_runner_crash_without_message(android, monkeypatch, bundle):
    monkeypatch.setenv("FAKE_RUNNER_CRASH", "1")
    with pytest.raises(AlignKDError, match=r"exited with status 139 on emulator-5554 \(Segmentation fault\)"):
        device.profile_android(bundle, prompt=QUESTION, keep=True)
    assert (android / "data/local/tmp/alignkd/runner.err").is_file()  # --keep: left there to look at


def test_adb_that_hangs_times_out(android, monkeypatch, bundle):
    monkeypatch.setattr(device, "SHORT_S", 1)
    monkeypatch.setenv("FAKE_ADB_SLEEP", "5")
    with pytest.raises(AlignKDError, match="adb did not finish listing devices within 1 s"):
        device.profile_android(bundle, prompt=QUESTION)


def app_profile(**changes) -> dict:
    """What the demo apps' ProfileReport writes (android_demo/core), for a phone."""
    metrics = {"load_s": 1.2, "preprocess_s": 0.01, "vision_encode_s": 0.9, "prefill_s": 0.4, "ttft_s": 1.3,
               "prefill_tok_s": 120.0, "decode_s": 1.5, "decode_tok_s": 20.7, "peak_rss_mb": 1900.0}
    out = {"model": "/data/local/tmp/alignkd/mvlm2-8da4w", "kind": "executorch", "runs": 3, "warmup": 1,
           "dtype": "float32", "max_new_tokens": 32, "prompt": QUESTION, "prefill_tokens": 190, "decode_tokens": 31,
           "size_mb": 900.0, **metrics, "p90": metrics, "raw": [metrics] * 3,
           "device": {"name": "android", "os": "Android 14 (API 34)", "cpu": "Google Tensor G3", "cores": 9,
                      "threads": "auto", "model": "Pixel 8", "runtime": "executorch-android 1.5.1"}}
    out.update(changes)
    return out


@pytest.fixture
def app_json(tmp_path, monkeypatch):
    """What the stand-in app writes when its benchmark is started; polled quickly."""
    path = tmp_path / "app_profile.json"
    path.write_text(json.dumps(app_profile()))
    monkeypatch.setenv("FAKE_APP_JSON", str(path))
    monkeypatch.setattr(device, "POLL_S", 0.05)
    return path


APP_FILE = "sdcard/Android/data/org.alignkd.demo/files/alignkd_profile.json"


def test_from_app_starts_the_apps_benchmark_and_pulls_its_json(android, app_json, bundle):
    result = cli("profile", bundle, "--device", "android", "--from-app", "--runs", 3, "--warmup", 1, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["decode_tok_s"] == 20.7 and out["device"]["serial"] == "emulator-5554"
    assert out["runtime"] == "executorch-android 1.5.1"
    am = (android.parent / "am.log").read_text()
    assert (f"start -n org.alignkd.demo/.MainActivity --es bundle {android}/data/local/tmp/alignkd/tiny_et "
            "--ez benchmark true --ei runs 3 --ei warmup 1 --ei max_new_tokens 32") in am
    pushed = [Path(c[3]).name for c in adb_calls(android) if c[2:3] == ["push"]]
    assert pushed == ["tiny_et"]  # the bundle only: the app brings its own runtime
    assert list((android / "data/local/tmp").iterdir()) == []


def test_from_app_uses_a_bundle_already_on_the_phone(android, app_json, bundle):
    there = android / "data/local/tmp/alignkd/tiny_et"
    there.mkdir(parents=True)
    (there / "manifest.json").write_text("{}")
    assert cli("profile", bundle, "--device", "android", "--from-app").exit_code == 0
    assert not any(c[2:3] == ["push"] for c in adb_calls(android)) and (there / "manifest.json").is_file()


def test_from_app_failure_is_the_apps_message_not_a_stale_json(android, app_json, monkeypatch, bundle):
    stale = android / APP_FILE
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps(app_profile(decode_tok_s=1.0)))
    __import__("os").utime(stale, (1_600_000_000, 1_600_000_000))  # written long ago
    monkeypatch.setenv("FAKE_APP_FAIL", "bundle file model.pte does not match its sha256 in manifest.json")
    line = error_of(cli("profile", bundle, "--device", "android", "--from-app"))
    assert line == ("error: the demo app's benchmark failed on emulator-5554: bundle file model.pte does not match its "
                    "sha256 in manifest.json")
    assert not (android / "data/local/tmp/alignkd").exists()  # the pushed bundle is removed


def test_from_app_not_installed(android, app_json, monkeypatch, bundle):
    monkeypatch.setenv("FAKE_APP_MISSING", "1")
    line = error_of(cli("profile", bundle, "--device", "android", "--from-app"))
    assert "the demo app (org.alignkd.demo) could not be started on emulator-5554 (Error: Activity class" in line
    assert "install it as android_demo/README.md says" in line


def test_from_app_that_never_writes_times_out(android, app_json, monkeypatch, bundle):
    monkeypatch.setattr(device, "RUN_S", 0.3)
    monkeypatch.setenv("FAKE_APP_SILENT", "1")
    with pytest.raises(AlignKDError, match="the demo app wrote no benchmark JSON on emulator-5554 within 0.3 s"):
        device.profile_android_app(bundle)


def test_from_app_no_start_pulls_the_last_json(android, bundle):
    app_file = android / APP_FILE
    app_file.parent.mkdir(parents=True)
    app_file.write_text(json.dumps(app_profile()))
    result = cli("profile", bundle, "--device", "android", "--from-app", "--no-start", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["decode_tok_s"] == 20.7
    assert not (android.parent / "am.log").exists() and not any(c[2:3] == ["push"] for c in adb_calls(android))


def test_from_app_no_start_without_a_benchmark(android, bundle):
    assert "the demo app has written no benchmark JSON on emulator-5554" in error_of(
        cli("profile", bundle, "--device", "android", "--from-app", "--no-start"))


def test_ios_from_json_reports_like_a_host_profile(tmp_path, bundle):
    path = tmp_path / "alignkd_profile.json"
    path.write_text(json.dumps(app_profile(device={"name": "ios", "os": "iOS 18.1", "cpu": "iPhone16,1", "threads": "auto",
                                                   "model": "iPhone16,1", "runtime": "coreml"}, kind="coreml")))
    result = cli("profile", bundle, "--device", "ios", "--from-json", path)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the table's title wraps
    assert "(coreml, float32) on ios: iPhone16,1" in text and "20.700" in text


def test_ios_copies_from_the_app_container(tmp_path, monkeypatch, bundle):
    phone(tmp_path, monkeypatch)
    source = tmp_path / "on_phone.json"
    source.write_text(json.dumps(app_profile(device={"name": "ios", "cpu": "iPhone16,1", "threads": "auto"})))
    monkeypatch.setenv("FAKE_XCRUN_FILE", str(source))
    out = device.profile_ios(bundle, udid="00008110-000A")
    assert out["device"]["udid"] == "00008110-000A" and out["decode_tok_s"] == 20.7
    call = json.loads((tmp_path / "xcrun.log").read_text().splitlines()[0])
    assert call[:7] == ["devicectl", "device", "copy", "from", "--device", "00008110-000A", "--domain-type"]
    assert call[call.index("--source") + 1] == "Documents/alignkd_profile.json"
    assert call[call.index("--domain-identifier") + 1] == "org.alignkd.demo"


@pytest.mark.parametrize("setup,message", [
    ("no_udid", "--device ios needs --udid UDID"),
    ("no_xcrun", "needs Xcode's xcrun"),
    ("no_file", r"xcrun devicectl could not copy Documents/alignkd_profile.json from the demo app on U1 \(ERROR: The file"),
    ("not_json", "is not readable JSON"),
    ("not_profile", r"is not an alignkd profile \(missing .*decode_tok_s"),
    ("missing_json", "does not exist"),
])
def test_ios_errors(tmp_path, monkeypatch, bundle, setup, message):
    phone(tmp_path, monkeypatch)
    udid, from_json = "U1", None
    if setup == "no_udid":
        udid = None
    elif setup == "no_xcrun":
        monkeypatch.setenv("PATH", str(tmp_path / "phone"))
    elif setup in ("not_json", "not_profile", "missing_json"):
        from_json = tmp_path / "given.json"
        if setup != "missing_json":
            from_json.write_text("{oops" if setup == "not_json" else json.dumps({"text": "an answer, not a profile"}))
    line = error_of(cli("profile", bundle, "--device", "ios", *(["--udid", udid] if udid else []),
                        *(["--from-json", from_json] if from_json else [])))
    assert __import__("re").search(message, line), line


def test_elf_abi_of_a_real_program():
    expected = {"x86_64": "x86_64", "aarch64": "arm64-v8a"}.get(platform.machine())
    if expected is None:
        pytest.skip(f"no Android ABI name for this host ({platform.machine()})")
    assert device.elf_abi(Path(sys.executable).resolve()) == expected


def test_device_block_without_soc_properties():
    block = device.android_device_block({"ro.board.platform": "msmnile", "ro.build.version.release": "11",
                                         "ro.build.version.sdk": "30", "ro.product.cpu.abi": "arm64-v8a"}, "S")
    assert block["soc"] == "msmnile" and block["cpu"] == "msmnile" and block["sdk"] == 30


@pytest.mark.parametrize("device_name,option", [("host", "--keep"), ("native", "--serial"), ("ios", "--from-app"),
                                                ("android", "--udid")])
def test_phone_option_for_another_device(bundle, device_name, option):
    extra = [option] if option in ("--keep", "--from-app") else [option, "X"]
    line = error_of(cli("profile", bundle, "--device", device_name, *extra))
    owner = "ios" if option == "--udid" else "android"
    assert line == f"error: {option} belongs to --device {owner}, not --device {device_name}; drop it or use --device {owner}"


@pytest.mark.parametrize("from_app", [False, True])
def test_one_new_token_is_refused_before_pushing(android, bundle, from_app):
    line = error_of(cli("profile", bundle, "--device", "android", "--max-new-tokens", 1,
                        *(["--from-app"] if from_app else ["--prompt", QUESTION])))
    assert "max_new_tokens=1: need runs >= 1, warmup >= 0 and max_new_tokens >= 2" in line
    assert not any(c[2:3] == ["push"] for c in adb_calls(android))


@pytest.mark.parametrize("args", [["--device", "android", "--from-app", "--prompt", "Q"], ["--device", "ios", "--image", "x.png"]])
def test_app_runs_take_no_prompt_or_image(android, bundle, args):
    line = error_of(cli("profile", bundle, *args))
    assert " is not used with " in line and "the demo app profiles its own picture and question" in line
    assert adb_calls(android) == []


def test_plot_without_matplotlib_fails_before_the_phone(android, bundle, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    line = error_of(cli("profile", bundle, "--device", "android", "--prompt", QUESTION, "--plot", tmp_path / "p.png"))
    assert "--plot needs matplotlib" in line and adb_calls(android) == []


def test_android_plot(android, bundle, tmp_path):
    plot = tmp_path / "phone.png"
    result = cli("profile", bundle, "--device", "android", "--runs", 2, "--prompt", QUESTION, "--plot", plot, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["plot"] == str(plot) and plot.read_bytes()[:4] == b"\x89PNG"
