"""Stand-ins for the phone tools, written into a test's folder and put first on PATH.

`adb`: a local folder plays the phone (device path /x is ROOT/x). It answers `devices [-l]`, `-s SERIAL`,
`push` (a folder into an existing folder lands inside it, as adb does), `pull`, and `shell CMD`, which runs CMD
with bash after mapping /data/local/tmp and /sdcard into ROOT, with `getprop` answering from the test's
properties. `./alignkd-runner` runs what was pushed (the real host-built runner) unless FAKE_ADB_RUNNER_CMD
replaces it with a stand-in runner. Behaviour is set through environment variables (see `phone`).
`am start` plays the demo app's scripted benchmark (writes the app's JSON from FAKE_APP_JSON, or logs
ALIGNKD_PROFILE_ERROR as the app does); `logcat -d` prints what it logged.
`xcrun`: answers `devicectl device copy from ...` by copying a file the test names, or failing.
`runner`: prints a profile JSON (its arguments inside), or fails with an error line or a crash.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

ADB = r'''
import json, os, shutil, subprocess, sys, time
from pathlib import Path

time.sleep(float(os.environ.get("FAKE_ADB_SLEEP", "0")))  # a phone that stops answering
root = Path(os.environ["FAKE_ADB_ROOT"])
devices = json.loads(os.environ.get("FAKE_ADB_DEVICES", '[["emulator-5554", "device"]]'))
args = sys.argv[1:]
with open(root.parent / "adb.log", "a") as log:
    log.write(json.dumps(args) + "\n")


def local(path):
    return root / path.lstrip("/")


def fail(message):
    print("adb: error: " + message, file=sys.stderr)
    sys.exit(1)


serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
if args[0] == "devices":
    print("List of devices attached")
    for name, state in devices:
        print(f"{name}\t{state}" + (" product:fake model:Fake_Phone device:fake transport_id:1" if "-l" in args else ""))
    print()
    sys.exit(0)
if serial is None:
    if len(devices) != 1:
        fail("more than one device/emulator" if devices else "no devices/emulators found")
    serial = devices[0][0]
if dict(map(tuple, devices)).get(serial) != "device":
    fail(f"device '{serial}' not found")
if args[0] == "push":
    src, dst = Path(args[1]), local(args[2])
    if os.environ.get("FAKE_ADB_FULL"):
        fail(f"failed to copy '{src}' to '{args[2]}': remote couldn't create file: No space left on device")
    if dst.is_dir():
        dst = dst / src.name
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    print(f"{src}: pushed")
elif args[0] == "pull":
    src = local(args[1])
    if not src.exists():
        fail(f"failed to stat remote object '{args[1]}': No such file or directory")
    shutil.copy2(src, args[2])
elif args[0] == "shell":
    command = " ".join(args[1:])
    if os.environ.get("FAKE_ADB_RUNNER_CMD"):
        command = command.replace("./alignkd-runner", os.environ["FAKE_ADB_RUNNER_CMD"])
    for prefix in ("/data/local/tmp", "/sdcard"):
        command = command.replace(prefix, str(local(prefix)))
    props = root.parent / "props.txt"
    prelude = (f'getprop() {{ if [ $# -eq 0 ]; then cat "{props}"; '
               f'else sed -n "s/^\\[$1\\]: \\[\\(.*\\)\\]$/\\1/p" "{props}"; fi; }}\n'
               f'logcat() {{ cat "{root.parent}/logcat.txt" 2>/dev/null; true; }}\n'
               f'am() {{ echo "$*" >> "{root.parent}/am.log"; "{sys.executable}" "{root.parent}/app.py" "$@"; }}\n')
    sys.exit(subprocess.run(["bash", "-c", prelude + command]).returncode)
else:
    fail(f"unknown command {args[0]}")
'''

XCRUN = r'''
import json, os, shutil, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_XCRUN_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
opts = dict(zip(args[4::2], args[5::2]))
if args[:5] != ["devicectl", "device", "copy", "from", "--device"] or "--destination" not in opts:
    print("ERROR: unexpected arguments", file=sys.stderr)
    sys.exit(64)
source = os.environ.get("FAKE_XCRUN_FILE")
if not source or opts.get("--domain-identifier") != "org.alignkd.demo" or opts.get("--source") != "Documents/alignkd_profile.json":
    print("ERROR: The file couldn't be opened because there is no such file. (NSCocoaErrorDomain error 260.)", file=sys.stderr)
    sys.exit(1)
shutil.copy2(source, opts["--destination"])
print("Copied 1 file")
'''

APP = r'''
# the demo app's scripted benchmark (am start -n org.alignkd.demo/.MainActivity --es bundle PATH --ez benchmark true)
import os, shutil, sys
from pathlib import Path

args = sys.argv[1:]
root = Path(os.environ["FAKE_ADB_ROOT"])
if os.environ.get("FAKE_APP_MISSING") or "org.alignkd.demo/.MainActivity" not in args:
    print("Starting: Intent { cmp=org.alignkd.demo/.MainActivity }")
    print("Error type 3")
    print("Error: Activity class {org.alignkd.demo/org.alignkd.demo.MainActivity} does not exist.")
    sys.exit(0)
if os.environ.get("FAKE_APP_SILENT"):  # started, but never finishes (stuck, or killed by the system)
    sys.exit(0)
bundle = Path(args[args.index("bundle") + 1])
failure = os.environ.get("FAKE_APP_FAIL") or (None if (bundle / "manifest.json").is_file() else f"{bundle} has no manifest.json")
if failure:
    with open(root.parent / "logcat.txt", "a") as log:
        log.write(f"11-30 15:00:00.000  1234  1250 E alignkd : ALIGNKD_PROFILE_ERROR {failure}\n")
    sys.exit(0)
out = root / "sdcard/Android/data/org.alignkd.demo/files/alignkd_profile.json"
out.parent.mkdir(parents=True, exist_ok=True)
shutil.copy(os.environ["FAKE_APP_JSON"], out)
os.utime(out)  # written now
'''

RUNNER = r'''
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
if os.environ.get("FAKE_RUNNER_FAIL"):
    print("error: " + os.environ["FAKE_RUNNER_FAIL"], file=sys.stderr)
    sys.exit(2)
if os.environ.get("FAKE_RUNNER_CRASH"):
    print("Segmentation fault", file=sys.stderr)
    sys.exit(139)
flags = ("--profile", "--json")
rest = [a for a in args if a not in flags]
opts = dict(zip(rest[::2], rest[1::2]))
assert Path(opts["--bundle"], "manifest.json").is_file() and Path(opts["--image"]).is_file(), args
assert "--profile" in args and "--json" in args, args
runs, warmup = int(opts["--runs"]), int(opts["--warmup"])
metrics = {"load_s": 0.01, "preprocess_s": 0.002, "vision_encode_s": 0.1, "prefill_s": 0.003, "ttft_s": 0.105,
           "prefill_tok_s": 60000.0, "decode_s": 0.015, "decode_tok_s": 2000.0, "peak_rss_mb": 48.0}
print(json.dumps({"model": opts["--bundle"], "kind": "executorch", "runtime": "native", "runs": runs, "warmup": warmup,
                  "dtype": "float32", "max_new_tokens": int(opts["--max-new-tokens"]), "prompt": opts["--prompt"],
                  "prefill_tokens": 188, "decode_tokens": 31, "size_mb": 1.5, **metrics, "p90": metrics,
                  "raw": [dict(metrics, prefill_tokens=188, decode_tokens=31)] * runs, "args": args,
                  "device": {"name": "host", "os": "Linux-6.1-aarch64", "cpu": "aarch64", "cores": 8, "threads": 4,
                             "runner": "alignkd-runner 0.1.0", "executorch": "1.5.1"}}))
'''

PROPS = {"ro.product.model": "Pixel 8", "ro.product.manufacturer": "Google", "ro.soc.manufacturer": "Google",
         "ro.soc.model": "Tensor G3", "ro.board.platform": "zuma", "ro.build.version.release": "14",
         "ro.build.version.sdk": "34", "ro.product.cpu.abi": "arm64-v8a"}


def write_script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def elf_stub(path: Path, machine: int) -> Path:
    """A file with just an ELF header for `machine` (183 aarch64, 62 x86_64): what the architecture check reads."""
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")
    path.write_bytes(header + bytes(64 - len(header)))
    return path


def phone(tmp_path: Path, monkeypatch, devices=(("emulator-5554", "device"),), props=None) -> Path:
    """Stand-in adb and xcrun first on PATH, an empty phone folder; returns the phone's root (device path /)."""
    bin_dir, root = tmp_path / "bin", tmp_path / "phone" / "root"
    bin_dir.mkdir()
    root.mkdir(parents=True)
    (root / "data" / "local" / "tmp").mkdir(parents=True)
    write_script(bin_dir / "adb", ADB)
    write_script(bin_dir / "xcrun", XCRUN)
    (root.parent / "app.py").write_text(APP)
    props = {**PROPS, **(props or {})}
    (root.parent / "props.txt").write_text("".join(f"[{k}]: [{v}]\n" for k, v in props.items()))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_DEVICES", json.dumps([list(d) for d in devices]))
    monkeypatch.setenv("FAKE_XCRUN_LOG", str(tmp_path / "xcrun.log"))
    return root


def adb_calls(root: Path) -> list[list[str]]:
    log = root.parent / "adb.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
