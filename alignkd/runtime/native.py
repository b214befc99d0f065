"""The native runner (`runtime/`, C++): build it, find it, and run it on a bundle from Python.

`alignkd runtime build` configures and builds `runtime/` with CMake against the installed executorch wheel
(default folder: build/runtime in the checkout); `alignkd generate --backend native` and
`alignkd profile --device native` run the binary and parse the JSON it prints, which has the keys of the
Python commands' JSON. The binary is looked up in $ALIGNKD_RUNNER first, then in the default build folder.

    alignkd runtime build
    alignkd generate --model out/tiny_et --image photo.png --prompt "What is in the picture?" --backend native --json
    alignkd profile out/tiny_et --device native --runs 3 --json
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from alignkd.errors import AlignKDError

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO_ROOT / "runtime"
DEFAULT_BUILD_DIR = REPO_ROOT / "build" / "runtime"
BINARY = "alignkd-runner"
ENV_VAR = "ALIGNKD_RUNNER"
MIN_CMAKE = (3, 28)  # the executorch wheel's imported targets need it
DEBIAN_PACKAGES = "libsentencepiece-dev nlohmann-json3-dev libstb-dev libssl-dev libgtest-dev pkg-config"


def executorch_root() -> Path:
    """The installed executorch package folder (holds lib/, include/ and the CMake package)."""
    try:
        import executorch
    except ImportError:
        raise AlignKDError("building the native runner needs the executorch package; run: pip install 'alignkd[executorch]'") from None
    root = Path(list(executorch.__path__)[0])
    if not (root / "share" / "cmake" / "executorch-config.cmake").is_file():
        raise AlignKDError(f"the executorch package at {root} has no CMake package (share/cmake/executorch-config.cmake); "
                           "install the executorch 1.5 wheel from PyPI")
    return root


def find_cmake() -> str:
    """A CMake >= 3.28: the PyPI `cmake` package's if installed, else the one on PATH."""
    candidates = []
    try:
        import cmake

        candidates.append(str(Path(cmake.CMAKE_BIN_DIR) / "cmake"))
    except (ImportError, AttributeError):
        pass
    if shutil.which("cmake"):
        candidates.append(shutil.which("cmake"))
    for exe in candidates:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True)
        match = re.search(r"version (\d+)\.(\d+)", out.stdout)
        if match and (int(match[1]), int(match[2])) >= MIN_CMAKE:
            return exe
    raise AlignKDError("building the native runner needs CMake >= 3.28 (the executorch wheel's CMake targets); "
                       "run: pip install cmake")


def build_runner(out: Path | None = None, jobs: int = 2, build_type: str = "Release") -> Path:
    """Configure and build runtime/ into `out` (incremental); returns the binary. The log goes to out/build.log."""
    out = Path(out) if out is not None else DEFAULT_BUILD_DIR
    if not (SOURCE_DIR / "CMakeLists.txt").is_file():
        raise AlignKDError(f"the runner's sources ({SOURCE_DIR}) are not beside this alignkd installation; "
                           "build from a clone of the repository installed with pip install -e")
    root = executorch_root()
    cmake = find_cmake()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    steps = [
        ("configure", [cmake, "-S", str(SOURCE_DIR), "-B", str(out), f"-DCMAKE_BUILD_TYPE={build_type}",
                       f"-DCMAKE_PREFIX_PATH={root}"] + (["-G", "Ninja"] if shutil.which("ninja") and not (out / "CMakeCache.txt").exists() else [])),
        ("build", [cmake, "--build", str(out), "-j", str(jobs)]),
    ]
    with open(log, "w") as fh:
        for name, cmd in steps:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode != 0:
                raise AlignKDError(f"the native runner's CMake {name} step failed (log: {log}); on Debian/Ubuntu install "
                                   f"its libraries with: apt-get install -y {DEBIAN_PACKAGES}")
    binary = out / BINARY
    if not binary.is_file():
        raise AlignKDError(f"the build finished but {binary} is missing (log: {log}); rebuild with `alignkd runtime build`")
    return binary


def find_runner() -> Path:
    """$ALIGNKD_RUNNER, else the default build folder's binary."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise AlignKDError(f"{ENV_VAR}={env} is not an executable file; point it at a built alignkd-runner or unset it")
        return path
    path = DEFAULT_BUILD_DIR / BINARY
    if not path.is_file():
        raise AlignKDError(f"the native runner is not built ({path} is missing); run `alignkd runtime build` "
                           f"or set {ENV_VAR} to an alignkd-runner binary")
    return path


def run_runner(args: list[str], timeout: float | None = None) -> dict:
    """Run the binary with `args` (which must include --json) and return its JSON; its error line as an AlignKDError."""
    cmd = [str(find_runner())] + [str(a) for a in args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AlignKDError(f"the native runner did not finish within {timeout:.0f} s; run it by hand to see where it stops: "
                           + " ".join(cmd)) from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        if lines:  # the runner's own one-line message
            raise AlignKDError(lines[-1].removeprefix("error: "))
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with status {proc.returncode}"
        raise AlignKDError(f"the native runner {how} without a message; run it by hand to see why: {' '.join(cmd)}")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AlignKDError(f"the native runner printed no JSON (got {proc.stdout[:80]!r}); rebuild it with `alignkd runtime build`") from None


def generate_native(bundle: Path, question: str, image: Path, *, max_new_tokens: int = 512, raw_prompt: bool = False,
                    temperature: float = 0.0, seed: int = 0, threads: int | None = None, template: str | None = None) -> dict:
    """`alignkd generate --json`'s object, computed by the native runner (greedy: the same tokens as Python;
    sampling uses the runner's own generator, so sampled tokens differ from Python's)."""
    if image is None:
        raise AlignKDError("--backend native needs --image FILE (the runner answers questions about an image)")
    if template is not None and not raw_prompt:
        bundle_template = _manifest(Path(bundle))["prompt"]["template"]
        if template != bundle_template:
            raise AlignKDError(f"--template {template} differs from the bundle's prompt template {bundle_template}; "
                               "the native runner uses the bundle's, so drop --template or use --raw-prompt")
    args = ["--bundle", bundle, "--image", image, "--prompt", question, "--max-new-tokens", max_new_tokens,
            "--temperature", temperature, "--seed", seed, "--json"]
    if raw_prompt:
        args.append("--raw-prompt")
    if threads:
        args += ["--threads", threads]
    return run_runner(args)


def profile_native(bundle: Path, runs: int = 5, warmup: int = 1, image=None, prompt: str | None = None,
                   max_new_tokens: int = 32, threads: int | None = None) -> dict:
    """`alignkd profile --json`'s object from the native runner; the same default picture and ~190-position prompt."""
    from alignkd.runtime.profile import synthetic_image

    bundle = Path(bundle)
    if prompt is None:
        prompt = _fitted_prompt(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        if image is None or not isinstance(image, (str, Path)):
            path = Path(tmp) / "image.png"
            (image if image is not None else synthetic_image()).save(path)
            image = path
        args = ["--bundle", bundle, "--image", image, "--prompt", prompt, "--profile", "--runs", runs,
                "--warmup", warmup, "--max-new-tokens", max_new_tokens, "--json"]
        if threads:
            args += ["--threads", threads]
        return run_runner(args)


def _fitted_prompt(bundle: Path) -> str:
    """profile.py's default question (padded to ~190 prefill positions), from the bundle's tokenizer and manifest."""
    from types import SimpleNamespace

    from alignkd.data.tokenizer import Tokenizer
    from alignkd.runtime.profile import fit_prompt

    manifest = _manifest(bundle)
    loaded = SimpleNamespace(template=manifest["prompt"]["template"], tokenizer=Tokenizer.from_folder(bundle))
    return fit_prompt(loaded, manifest["num_image_tokens"])


def _manifest(bundle: Path) -> dict:
    """The bundle's manifest, read just enough for the Python side's own choices (the runner checks it fully)."""
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["prompt"]["template"], manifest["num_image_tokens"]  # noqa: B018  (the keys used here)
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AlignKDError(f"cannot read {bundle / 'manifest.json'} ({err}); pass a bundle folder written by `alignkd export`") from None
