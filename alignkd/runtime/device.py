"""Phones: `alignkd profile --device android|ios`, over adb and Xcode's devicectl.

Android, runner: the arm64 `alignkd-runner` (runtime/android/README.md) and the bundle are pushed to
/data/local/tmp/alignkd/, the runner profiles the bundle there (`--profile --json`, its JSON written to a file on
the phone and pulled back), the `device` block is filled from `getprop`, and what was pushed is removed unless
`keep`. Android, `from_app`: the demo app's benchmark is started on the bundle (`am start ... --ez benchmark true`) and
its JSON pulled when written (or, `start=False`, the JSON it last wrote). iOS: the demo app's benchmark JSON
is copied out of its container with `xcrun devicectl`, or read from a file. Every JSON has `alignkd profile
--json`'s keys, so `alignkd profile-compare` puts host, native and phone runs side by side.

    alignkd profile bundles/tiny_et --device android --runs 3 --json
    alignkd profile bundles/tiny_coreml --device ios --udid 00008110-... --json
    python -m pytest tests/runtime/test_device.py -q     # with adb / xcrun stand-ins, no phone
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from alignkd.errors import AlignKDError
from alignkd.runtime.native import BINARY, REPO_ROOT
from alignkd.runtime.profile_compare import load_profile

REMOTE_DIR = "/data/local/tmp/alignkd"
APP_ID = "org.alignkd.demo"  # both demo apps' application / bundle id
ANDROID_APP_JSON = f"/sdcard/Android/data/{APP_ID}/files/alignkd_profile.json"
IOS_APP_JSON = "Documents/alignkd_profile.json"  # inside the iOS app's data container
RUNNER_ENV = "ALIGNKD_ANDROID_RUNNER"
DEFAULT_ANDROID_RUNNER = REPO_ROOT / "build" / "android" / BINARY
ELF_ABIS = {183: "arm64-v8a", 62: "x86_64", 40: "armeabi-v7a", 3: "x86"}  # ELF e_machine -> Android ABI name
SHORT_S, PUSH_S, RUN_S = 60, 1800, 3600  # adb timeouts: a command, a push of a large bundle, the profile rounds
EXIT_MARK = "alignkd-exit:"
APP_ACTIVITY = f"{APP_ID}/.MainActivity"
APP_LOG_TAG, APP_ERROR_MARK = "alignkd", "ALIGNKD_PROFILE_ERROR"  # the app logs a failed benchmark as this line
POLL_S = 2.0  # how often the app's JSON and log are checked while its benchmark runs


class Adb:
    """One device through the `adb` on PATH; every call has a timeout and fails as one AlignKDError."""

    def __init__(self, serial: str | None = None):
        self.exe = shutil.which("adb")
        if self.exe is None:
            raise AlignKDError("--device android needs adb, which is not on PATH; install Android's platform-tools "
                               "(Debian/Ubuntu: apt-get install adb) and connect a phone with USB debugging on")
        self.serial = pick_serial(self._devices(), serial)

    def _devices(self) -> list[tuple[str, str]]:
        out = self._call(["devices", "-l"], SHORT_S, "listing devices", serial=False).stdout
        rows = []
        for line in out.splitlines()[1:]:  # the first line is "List of devices attached"
            parts = line.split(None, 1)
            if len(parts) == 2 and not line.startswith("*"):  # "* daemon started" notes
                state = "no permissions" if parts[1].startswith("no permissions") else parts[1].split()[0]
                rows.append((parts[0], state))
        return rows

    def _call(self, args: list[str], timeout: float, what: str, serial: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.exe] + (["-s", self.serial] if serial else []) + args
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AlignKDError(f"adb did not finish {what} within {timeout:.0f} s; check the phone is connected and "
                               "unlocked (adb devices), then run again") from None
        if proc.returncode != 0:
            raise AlignKDError(f"adb failed {what} ({_last_line(proc)}); check the phone's storage and connection, "
                               "then run again")
        return proc

    def shell(self, command: str, what: str, timeout: float = SHORT_S) -> str:
        return self._call(["shell", command], timeout, what).stdout

    def exists(self, path: str) -> bool:
        return "yes" in self.shell(f"[ -e {shlex.quote(path)} ] && echo yes || echo no", f"checking {path}")

    def push(self, local: Path, remote: str) -> None:
        self._call(["push", str(local), remote], PUSH_S, f"pushing {local} to {remote} on {self.serial}")

    def pull(self, remote: str, local: Path) -> None:
        self._call(["pull", remote, str(local)], PUSH_S, f"pulling {remote} from {self.serial}")

    def props(self) -> dict[str, str]:
        """All system properties from one `getprop` ("[key]: [value]" lines)."""
        props = {}
        for line in self.shell("getprop", "reading the phone's properties (getprop)").splitlines():
            key, sep, value = line.partition("]: [")
            if sep and key.startswith("["):
                props[key[1:]] = value.rstrip().removesuffix("]")
        return props


def pick_serial(devices: list[tuple[str, str]], serial: str | None) -> str:
    """The one usable device: `serial` if given (and attached), else the only one attached."""
    if serial is not None:
        states = dict(devices)
        if serial not in states:
            listed = ", ".join(s for s, _ in devices) or "none"
            raise AlignKDError(f"no device with serial {serial} is attached (adb devices lists: {listed}); "
                               "pass one of those to --serial")
        return _usable(serial, states[serial])
    if not devices:
        raise AlignKDError("no Android device is attached (adb devices lists none); connect a phone by USB with "
                           "USB debugging on, or start an emulator")
    if len(devices) > 1:
        raise AlignKDError(f"{len(devices)} Android devices are attached ({', '.join(s for s, _ in devices)}); "
                           "pass --serial with one of them")
    return _usable(*devices[0])


def _usable(serial: str, state: str) -> str:
    if state == "device":
        return serial
    fixes = {"unauthorized": "unlock the phone and accept its 'Allow USB debugging' prompt",
             "offline": "reconnect the cable or restart adb (adb kill-server)",
             "no permissions": "give your user access to the USB device (Linux udev rules / plugdev group)"}
    raise AlignKDError(f"device {serial} is {state}; {fixes.get(state, 'boot it normally with USB debugging on')}, then run again")


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()
    return lines[-1].strip()


def elf_abi(path: Path) -> str:
    """The Android ABI name a program was built for, from its ELF header's e_machine."""
    with open(path, "rb") as fh:
        header = fh.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise AlignKDError(f"{path} is not a compiled program (no ELF header); build alignkd-runner for Android as "
                           "runtime/android/README.md says and set ALIGNKD_ANDROID_RUNNER to it")
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return ELF_ABIS.get(machine, f"ELF machine {machine}")


def find_android_runner() -> Path:
    """$ALIGNKD_ANDROID_RUNNER, else build/android/alignkd-runner (the folder runtime/android/README.md builds into)."""
    env = os.environ.get(RUNNER_ENV)
    path = Path(env) if env else DEFAULT_ANDROID_RUNNER
    if not path.is_file():
        where = f"{RUNNER_ENV}={env} is not a file" if env else f"{path} is missing"
        raise AlignKDError(f"no alignkd-runner built for Android ({where}); build one with the NDK as "
                           f"runtime/android/README.md says and set {RUNNER_ENV} to it")
    return path


def check_runner_abi(runner: Path, device_abi: str, serial: str) -> None:
    """A runner runs only on the ABI it was compiled for (the host build is x86_64, phones are arm64-v8a)."""
    built = elf_abi(runner)
    if built != device_abi:
        raise AlignKDError(f"{runner} is built for {built} but device {serial} is {device_abi or 'of unknown ABI'}; "
                           f"build alignkd-runner for {device_abi or 'arm64-v8a'} with the Android NDK "
                           f"(runtime/android/README.md) and set {RUNNER_ENV} to it")


def android_device_block(props: dict[str, str], serial: str, runner_block: dict | None = None) -> dict:
    """`alignkd profile`'s device block for a phone: name, os, cpu (the SoC), plus model, SoC, Android version, ABI."""
    soc = props.get("ro.soc.model") or props.get("ro.board.platform") or props.get("ro.hardware", "")
    if props.get("ro.soc.manufacturer") and props.get("ro.soc.model"):
        soc = f"{props['ro.soc.manufacturer']} {soc}"
    release, sdk = props.get("ro.build.version.release", "?"), props.get("ro.build.version.sdk", "?")
    block = dict(runner_block or {})
    if "os" in block:
        block["kernel"] = block.pop("os")  # the runner's uname: Linux-<kernel>-aarch64
    block.update({"name": "android", "os": f"Android {release} (API {sdk})", "cpu": soc, "model": props.get("ro.product.model", ""),
                  "manufacturer": props.get("ro.product.manufacturer", ""), "soc": soc, "android_version": release,
                  "sdk": int(sdk) if sdk.isdigit() else sdk, "abi": props.get("ro.product.cpu.abi", ""), "serial": serial})
    return block


def profile_android(bundle: Path, serial: str | None = None, keep: bool = False, runs: int = 5, warmup: int = 1,
                    image=None, prompt: str | None = None, max_new_tokens: int = 32) -> dict:
    """Push the Android runner and `bundle`, profile it on the phone, pull the JSON; see the module docstring."""
    from alignkd.runtime.native import _fitted_prompt, _manifest
    from alignkd.runtime.profile import synthetic_image

    bundle = Path(bundle)
    _check_rounds(runs, warmup, max_new_tokens)
    _manifest(bundle)  # a folder that is not a bundle fails here, before anything is pushed
    runner = find_android_runner()
    adb = Adb(serial)
    props = adb.props()
    check_runner_abi(runner, props.get("ro.product.cpu.abi", ""), adb.serial)
    prompt = prompt if prompt is not None else _fitted_prompt(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        local_image = Path(tmp) / "profile_image.png"
        (image if image is not None else synthetic_image()).save(local_image)
        created = []
        try:
            _push_all(adb, runner, bundle, local_image, created)
            args = ["--bundle", bundle.name, "--image", local_image.name, "--prompt", prompt, "--profile", "--runs", runs,
                    "--warmup", warmup, "--max-new-tokens", max_new_tokens, "--json"]
            result = _run_on_phone(adb, args, Path(tmp))
        except BaseException:
            if not keep:
                _remove(adb, created, quiet=True)  # the first error is the one to report
            raise
        if not keep:
            _remove(adb, created)
    result["device"] = android_device_block(props, adb.serial, result.get("device"))
    result["model"], result["device_path"] = str(bundle), f"{REMOTE_DIR}/{bundle.name}"
    return result


def _check_rounds(runs: int, warmup: int, max_new_tokens: int) -> None:
    """The runner's and the app's own rule, checked before a large bundle is pushed only to be refused."""
    if runs < 1 or warmup < 0 or max_new_tokens < 2:
        raise AlignKDError(f"runs={runs}, warmup={warmup}, max_new_tokens={max_new_tokens}: need runs >= 1, "
                           "warmup >= 0 and max_new_tokens >= 2 (decode speed needs a second token).")


def _push_all(adb: Adb, runner: Path, bundle: Path, image: Path, created: list[str]) -> None:
    """Push into REMOTE_DIR, recording in `created` each path that was not there before (only those are removed)."""
    targets = [REMOTE_DIR] + [f"{REMOTE_DIR}/{name}" for name in (BINARY, bundle.name, image.name, "profile.json", "runner.err")]
    created += [path for path in targets if not adb.exists(path)]
    adb.shell(f"mkdir -p {REMOTE_DIR}", f"creating {REMOTE_DIR}")
    adb.push(runner, f"{REMOTE_DIR}/{BINARY}")
    adb.shell(f"chmod 755 {REMOTE_DIR}/{BINARY}", "making the runner executable")
    adb.push(bundle, REMOTE_DIR)  # a folder pushed into an existing folder lands at REMOTE_DIR/<bundle name>
    adb.push(image, f"{REMOTE_DIR}/{image.name}")


def _run_on_phone(adb: Adb, args: list, tmp: Path) -> dict:
    """Run the pushed runner in REMOTE_DIR; its JSON goes to a file on the phone (pulled), its stderr to another."""
    command = (f"cd {REMOTE_DIR} && LD_LIBRARY_PATH={REMOTE_DIR}:$LD_LIBRARY_PATH ./{BINARY} "
               + " ".join(shlex.quote(str(a)) for a in args) + f" > profile.json 2> runner.err; echo {EXIT_MARK}$?")
    out = adb.shell(command, "running alignkd-runner on the phone", timeout=RUN_S)
    status = [line for line in out.splitlines() if line.startswith(EXIT_MARK)]
    if not status:
        raise AlignKDError(f"adb shell ended before alignkd-runner reported its exit status on {adb.serial}; "
                           "check the phone stayed connected and run again")
    code = status[-1].removeprefix(EXIT_MARK).strip()
    if code != "0":
        err = adb.shell(f"cat {REMOTE_DIR}/runner.err", "reading the runner's error")
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        if lines:
            raise AlignKDError(f"alignkd-runner failed on {adb.serial}: {lines[-1].removeprefix('error: ')}")
        last = err.strip().splitlines()[-1] if err.strip() else "no message"
        raise AlignKDError(f"alignkd-runner exited with status {code} on {adb.serial} ({last}); "
                           f"run it there by hand with --keep and adb shell to see why")
    adb.pull(f"{REMOTE_DIR}/profile.json", tmp / "profile.json")
    return load_profile(tmp / "profile.json", f"the profile JSON alignkd-runner wrote on {adb.serial}")


def _remove(adb: Adb, created: list[str], quiet: bool = False) -> None:
    """Remove what this run created, deepest first; the folder itself only if it is then empty (rmdir)."""
    for path in reversed(created):
        command = f"rmdir {REMOTE_DIR} 2>/dev/null; true" if path == REMOTE_DIR else f"rm -rf {shlex.quote(path)}"
        try:
            adb.shell(command, f"removing {path} (remove it by hand: adb shell rm -rf {path})")
        except AlignKDError:
            if not quiet:
                raise


def profile_android_app(bundle: Path, serial: str | None = None, start: bool = True, keep: bool = False, runs: int = 5,
                        warmup: int = 1, max_new_tokens: int = 32) -> dict:
    """The demo app's benchmark JSON (android_demo/README.md, Benchmark), pulled from the app's files folder:
    after starting its benchmark on `bundle` (pushed to REMOTE_DIR if not there) when `start`, else as last written."""
    adb = Adb(serial)
    if start:
        _app_benchmark(adb, Path(bundle), keep, runs, warmup, max_new_tokens)
    elif not adb.exists(ANDROID_APP_JSON):
        raise AlignKDError(f"the demo app has written no benchmark JSON on {adb.serial} ({ANDROID_APP_JSON} is missing); "
                           "drop --no-start to run its benchmark, or tap Benchmark in the app")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "alignkd_profile.json"
        adb.pull(ANDROID_APP_JSON, local)
        result = load_profile(local, f"the demo app's benchmark JSON on {adb.serial}")
    result["device"].setdefault("serial", adb.serial)
    result.setdefault("runtime", result["device"].get("runtime", "app"))
    return result


def _app_benchmark(adb: Adb, bundle: Path, keep: bool, runs: int, warmup: int, max_new_tokens: int) -> None:
    """Start the app's benchmark on the phone's copy of `bundle` and wait until it writes its JSON or logs a failure."""
    from alignkd.runtime.native import _manifest

    _check_rounds(runs, warmup, max_new_tokens)
    _manifest(bundle)
    remote = f"{REMOTE_DIR}/{bundle.name}"
    created = [path for path in (REMOTE_DIR, remote) if not adb.exists(path)]
    try:
        if remote in created:  # a copy already there is used as it is (the app checks every file's sha256)
            adb.shell(f"mkdir -p {REMOTE_DIR}", f"creating {REMOTE_DIR}")
            adb.push(bundle, REMOTE_DIR)
        before = _app_state(adb)
        out = adb.shell(f"am start -n {APP_ACTIVITY} --es bundle {shlex.quote(remote)} --ez benchmark true "
                        f"--ei runs {int(runs)} --ei warmup {int(warmup)} --ei max_new_tokens {int(max_new_tokens)}",
                        "starting the demo app's benchmark")
        if "Error" in out:  # am reports a missing app on stdout with status 0
            raise AlignKDError(f"the demo app ({APP_ID}) could not be started on {adb.serial} ({out.strip().splitlines()[-1]}); "
                               "install it as android_demo/README.md says")
        _wait_for_app(adb, before)
    except BaseException:
        if not keep:
            _remove(adb, created, quiet=True)
        raise
    if not keep:
        _remove(adb, created)


def _app_state(adb: Adb) -> tuple[str, int]:
    """(the app JSON's modification time or '', how many benchmark failures the app has logged so far)."""
    out = adb.shell(f'echo "mtime=$(stat -c %Y {ANDROID_APP_JSON} 2>/dev/null)"; '
                    f'echo "errors=$(logcat -d -s {APP_LOG_TAG} | grep -c {APP_ERROR_MARK})"', "watching the demo app")
    values = dict(line.strip().split("=", 1) for line in out.splitlines() if "=" in line)
    errors = values.get("errors", "0")
    return values.get("mtime", ""), int(errors) if errors.isdigit() else 0


def _wait_for_app(adb: Adb, before: tuple[str, int]) -> None:
    deadline = time.monotonic() + RUN_S
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        mtime, errors = _app_state(adb)
        if errors > before[1]:
            log = adb.shell(f"logcat -d -s {APP_LOG_TAG}", "reading the demo app's log")
            message = [line.split(APP_ERROR_MARK, 1)[1].strip() for line in log.splitlines() if APP_ERROR_MARK in line][-1]
            raise AlignKDError(f"the demo app's benchmark failed on {adb.serial}: {message}")
        if mtime and mtime != before[0]:
            return
    raise AlignKDError(f"the demo app wrote no benchmark JSON on {adb.serial} within {RUN_S} s; look at the app's "
                       "screen (it shows why), or run fewer rounds")


def profile_ios(bundle: Path, udid: str | None = None, from_json: Path | None = None) -> dict:
    """The iOS demo app's benchmark JSON: from `from_json`, else copied out of the app's container on `udid`."""
    if from_json is not None:
        result = load_profile(Path(from_json), str(from_json))
    else:
        if not udid:
            raise AlignKDError("--device ios needs --udid UDID (listed by `xcrun devicectl list devices`) or "
                               "--from-json FILE (the alignkd_profile.json the demo app wrote)")
        xcrun = shutil.which("xcrun")
        if xcrun is None:
            raise AlignKDError("--device ios without --from-json needs Xcode's xcrun (a Mac with Xcode 15 or newer); "
                               "copy Documents/alignkd_profile.json off the phone and pass it with --from-json")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "alignkd_profile.json"
            _devicectl_copy(xcrun, udid, local)
            result = load_profile(local, f"the demo app's benchmark JSON on {udid}")
        result["device"].setdefault("udid", udid)
    result.setdefault("runtime", result["device"].get("runtime", "app"))
    return result


def _devicectl_copy(xcrun: str, udid: str, local: Path) -> None:
    cmd = [xcrun, "devicectl", "device", "copy", "from", "--device", udid, "--domain-type", "appDataContainer",
           "--domain-identifier", APP_ID, "--source", IOS_APP_JSON, "--destination", str(local)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SHORT_S)
    except subprocess.TimeoutExpired:
        raise AlignKDError(f"xcrun devicectl did not copy {IOS_APP_JSON} from {udid} within {SHORT_S} s; check the "
                           "iPhone is connected and unlocked, then run again") from None
    if proc.returncode != 0 or not local.is_file():
        raise AlignKDError(f"xcrun devicectl could not copy {IOS_APP_JSON} from the demo app on {udid} ({_last_line(proc)}); "
                           "run the app's benchmark first (ios_demo/README.md) or pass --from-json FILE")
