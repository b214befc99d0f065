"""Session-scoped bundles of the official tiny checkpoint: each export runs once per test session, through the CLI.

The default run exports ExecuTorch fp32 and 8da4w (+ int8 embedding), ONNX fp32 / int8 / int4 and Core ML fp16
and int4; slow tests export more. Each bundle is produced lazily by the first test that asks for it, by the
real `alignkd export` command (typer's CliRunner, in this process) with `--quant` left out when it is the
target's default, so the session's default bundles are also the end-to-end CLI runs that
tests/export/test_cli_export.py checks (no export is run twice for it). `runner` is the native alignkd-runner,
built once per session for every test that drives it.
"""

from pathlib import Path

import pytest

CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / "mobilevlm_official_tiny" / "checkpoint"
MAX_SEQ_LEN = 512  # the tiny prompts are ~190 positions; a small cache keeps the exports fast


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    return CHECKPOINT


def cli_export_args(target: str, quant: str, out: Path, options: dict) -> list[str]:
    """`alignkd export` arguments for the Python call export_bundle(CHECKPOINT, target, quant, out, **options)."""
    from alignkd.export.quantize import DEFAULT_SCHEME

    args = ["export", str(CHECKPOINT), "--target", target, "-o", str(out)]
    if quant != DEFAULT_SCHEME[target]:
        args += ["--quant", quant]
    for key, value in sorted(options.items()):
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [] if value is False else [flag, str(value)]
    return args


class Bundles:
    """bundles(target, quant, **options) -> bundle folder; `runs[(target, quant)]` keeps each CLI run's result."""

    def __init__(self, root: Path):
        self.root, self.made, self.runs = root, {}, {}

    def __call__(self, target: str, quant: str, **options) -> Path:
        from typer.testing import CliRunner

        from alignkd.cli import app

        key = (target, quant, tuple(sorted(options.items())))
        if key not in self.made:
            name = "_".join([target, quant] + [f"{k}{v}" for k, v in sorted(options.items())])
            options.setdefault("max_seq_len", MAX_SEQ_LEN)
            args = cli_export_args(target, quant, self.root / name, options)
            result = CliRunner().invoke(app, args)
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise result.exception
            assert result.exit_code == 0, f"alignkd {' '.join(args)} failed:\n{result.output}"
            self.made[key] = self.root / name
            if not key[2]:
                self.runs[(target, quant)] = (args, result)
        return self.made[key]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    return Bundles(tmp_path_factory.mktemp("bundles"))


def manifest_of(bundle: Path) -> dict:
    import json

    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="session")
def runner():
    """The native alignkd-runner, built (incrementally) into the default build folder once per session; a failed
    build fails the tests that need it (the executorch extra missing skips them in their modules)."""
    from alignkd.errors import AlignKDError
    from alignkd.runtime.native import build_runner

    try:
        return build_runner()
    except AlignKDError as err:
        pytest.fail(f"the native runner did not build: {err}")
