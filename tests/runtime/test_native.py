"""alignkd.runtime.native without building anything: finding the runner, and turning its failures into one
AlignKDError (a stand-in runner script plays the binary). The real runner is tested on bundles in
tests/export/test_native_runner.py."""

import stat
import sys

import pytest

from alignkd.errors import AlignKDError
from alignkd.runtime import native


def _fake_runner(tmp_path, body: str):
    path = tmp_path / "alignkd-runner"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_missing_runner_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.delenv(native.ENV_VAR, raising=False)
    monkeypatch.setattr(native, "DEFAULT_BUILD_DIR", tmp_path / "nothing")
    with pytest.raises(AlignKDError, match="not built .* run `alignkd runtime build`"):
        native.find_runner()


def test_env_var_must_name_an_executable(tmp_path, monkeypatch):
    plain = tmp_path / "runner.txt"
    plain.write_text("not a program")
    monkeypatch.setenv(native.ENV_VAR, str(plain))
    with pytest.raises(AlignKDError, match="is not an executable file"):
        native.find_runner()


@pytest.mark.parametrize("body,message", [
    ('echo "some log" >&2; echo "error: bundle file X is missing; copy it" >&2; exit 2', "^bundle file X is missing; copy it$"),
    ("kill -9 $$", "killed by signal 9 without a message"),
    ("exit 3", "exited with status 3 without a message"),
    ('echo "not json"', "printed no JSON"),
])
def test_runner_failures_become_one_error(tmp_path, monkeypatch, body, message):
    monkeypatch.setenv(native.ENV_VAR, str(_fake_runner(tmp_path, body)))
    with pytest.raises(AlignKDError, match=message):
        native.run_runner(["--json"])


def test_runner_json_is_returned_and_arguments_passed(tmp_path, monkeypatch):
    monkeypatch.setenv(native.ENV_VAR, str(_fake_runner(tmp_path, 'printf \'{"args": "%s"}\' "$*"')))
    out = native.generate_native(tmp_path, "Q?", tmp_path / "img.png", max_new_tokens=5, raw_prompt=True)
    assert out["args"].startswith(f"--bundle {tmp_path} --image {tmp_path / 'img.png'} --prompt Q? --max-new-tokens 5")
    assert out["args"].endswith("--json --raw-prompt")


def test_generate_native_needs_an_image_and_the_bundle_template(tmp_path):
    with pytest.raises(AlignKDError, match="needs --image"):
        native.generate_native(tmp_path, "Q?", None)
    (tmp_path / "manifest.json").write_text('{"prompt": {"template": "v1"}, "num_image_tokens": 144}')
    with pytest.raises(AlignKDError, match="--template plain differs from the bundle's prompt template v1"):
        native.generate_native(tmp_path, "Q?", tmp_path / "img.png", template="plain")


def test_build_refuses_without_sources_or_cmake(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "SOURCE_DIR", tmp_path / "no-runtime")
    with pytest.raises(AlignKDError, match="sources .* are not beside this alignkd installation"):
        native.build_runner(tmp_path / "build")
    monkeypatch.setitem(sys.modules, "cmake", None)  # no PyPI cmake
    monkeypatch.setenv("PATH", str(tmp_path))  # and none on PATH
    with pytest.raises(AlignKDError, match="CMake >= 3.28"):
        native.find_cmake()
