"""`alignkd export CKPT --target T -o OUT` end to end, per target, on the official tiny checkpoint.

The README's user path. Each test reuses the session's default bundle of its target, which conftest.py
produced through the real CLI without `--quant` (so the per-target default scheme is exercised too).
"""

import pytest

from alignkd.export.quantize import DEFAULT_SCHEME
from tests.export.conftest import manifest_of


def _cli_run(bundles, target):
    quant = DEFAULT_SCHEME[target]
    bundle = bundles(target, quant)
    args, result = bundles.runs[(target, quant)]
    assert "--quant" not in args
    # stdout only: in-process, a library's log handler bound to an earlier run's closed capture may print a
    # "--- Logging error ---" into stderr, which says nothing about the CLI
    assert result.exit_code == 0 and "Traceback" not in result.stdout
    assert not any(line.startswith("error:") for line in result.stderr.splitlines())
    assert result.stdout.startswith(f"wrote {bundle}\n")
    m = manifest_of(bundle)
    assert m["target"] == target and m["quant"]["scheme"] == quant
    return bundle, result.stdout


@pytest.mark.parametrize("target", ["executorch", "onnx"])
def test_cli_export_default_scheme_runs_end_to_end(bundles, target):
    pytest.importorskip({"executorch": "executorch", "onnx": "onnxruntime"}[target])
    from alignkd.runtime.bundle import load_bundle

    bundle, output = _cli_run(bundles, target)
    assert DEFAULT_SCHEME[target] == "fp32"
    assert "end to end: exact eager tokens True" in output
    assert "yes/no answers: not judged (the model answers none of the 12 prompts with yes or no)" in output  # random weights
    assert load_bundle(bundle).kind == target


def test_cli_export_coreml_defaults_to_fp16_and_reports_module_parity(bundles):
    """Was: no --quant meant fp32 (invalid for Core ML), and --quant fp16 died with KeyError 'end_to_end'."""
    pytest.importorskip("coremltools")
    bundle, output = _cli_run(bundles, "coreml")
    assert DEFAULT_SCHEME["coreml"] == "fp16"
    assert "converted modules vs eager: vision_encoder_module cos" in output and "text_decoder_module" in output
    assert "end to end: not measured here (Core ML prediction needs macOS 15+" in output
    assert (bundle / "text_decoder.mlpackage").is_dir()
