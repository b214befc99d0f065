"""The native C++ runner (runtime/, `alignkd-runner`) on exported ExecuTorch bundles.

Built once per session from this checkout (`alignkd runtime build`: CMake against the installed executorch
wheel); a failed build fails the tests loudly. Checked: our custom-op kernels' own unit tests, the official
tiny fixture's greedy tokens and export/golden's 32 tokens on the fp32 bundle, the Python runtime's
output_ids on quantized bundles, golden preprocessing within one 8-bit level, and one error line with a
non-zero exit for each bad input. Lives beside the other bundle tests to share their session bundles.
"""

import json
import shutil
import statistics
import subprocess

import numpy as np
import pytest

from tests.export.conftest import manifest_of

pytest.importorskip("executorch", reason="the native runner builds against the executorch wheel (alignkd[executorch])")

GOLDEN = __import__("pathlib").Path(__file__).resolve().parents[2] / "export" / "golden"
QUESTION = "What shapes can you see in this picture?"


def run(runner, *args, timeout=120):
    return subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def generate(runner, bundle, image, question, n, *extra):
    out = run(runner, "--bundle", bundle, "--image", image, "--prompt", question, "--max-new-tokens", n, "--json", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_kernel_unit_tests_pass(runner):
    out = subprocess.run(["ctest", "--test-dir", str(runner.parent), "--output-on-failure"] if shutil.which("ctest")
                         else [str(runner.parent / "test_llama_kernels")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("case", [0, 1])
def test_fp32_gives_official_greedy_tokens(runner, bundles, fixture_dir, expected, case):
    """The official MobileVLM code's greedy tokens (tests/fixtures/.../expected.json) from the fp32 bundle."""
    c = expected["cases"][case]
    out = generate(runner, bundles("executorch", "fp32"), fixture_dir / c["image_file"], c["question"],
                   c["generate"]["max_new_tokens"])
    assert out["input_ids"] == c["input_ids"]
    assert out["output_ids"] == c["generate"]["new_token_ids"]
    assert out["text"] == c["generate"]["decoded_text"].strip()


def test_fp32_gives_golden_tokens(runner, bundles):
    """export/golden: every pair's 32 greedy tokens, prompt ids and answer text."""
    golden = json.loads((GOLDEN / "golden.json").read_text())
    for pair in golden["pairs"]:
        out = generate(runner, bundles("executorch", "fp32"), GOLDEN / pair["image"], pair["question"],
                       golden["decoding"]["max_new_tokens"])
        assert out["input_ids"] == pair["input_ids"], pair["image"]
        assert out["output_ids"] == pair["expected_tokens"], pair["image"]
        assert (out["text"], out["stop_reason"]) == (pair["expected_text"], pair["stop_reason"]), pair["image"]
        assert out["prompt"] == pair["prompt"]


@pytest.mark.parametrize("quant,options", [("8da4w", {"embedding_bits": 8}),
                                           pytest.param("8da8w", {}, marks=pytest.mark.slow)])
def test_quantized_equals_python_runtime(runner, bundles, quant, options):
    """The same output_ids as `alignkd generate --model BUNDLE` (the Python ExecuTorch runtime)."""
    from alignkd.runtime.run import generate_from_checkpoint

    bundle = bundles("executorch", quant, **options)
    for pair in ("pair0.png", "pair1.png"):
        ref = generate_from_checkpoint(bundle, QUESTION, GOLDEN / pair, max_new_tokens=24)
        out = generate(runner, bundle, GOLDEN / pair, QUESTION, 24)
        assert out["output_ids"] == ref.output_ids and out["input_ids"] == ref.input_ids, pair
        assert out["text"] == ref.text and out["stop_reason"] == ref.stop_reason


def test_golden_preprocessing_within_one_level(runner, bundles, tmp_path, fixture_dir):
    """Pixels equal alignkd's (PIL bicubic through CLIPImageProcessor) within one 8-bit level, every pixel."""
    m = manifest_of(bundles("executorch", "fp32"))
    level = 1 / (255 * np.array(m["image"]["std"])).reshape(1, 3, 1, 1)
    golden = json.loads((GOLDEN / "golden.json").read_text())
    pairs = [(GOLDEN / p["image"], np.load(GOLDEN / p["pixel_values"])) for p in golden["pairs"]]
    official = np.load(fixture_dir / "preprocess" / "pixel_values.npy")  # the official code's, img0..img2
    pairs += [(fixture_dir / "images" / f"img{i}.png", official[i:i + 1]) for i in range(len(official))]
    for image, want in pairs:
        out = run(runner, "--bundle", bundles("executorch", "fp32"), "--image", image, "--dump-pixels", tmp_path / "p.npy")
        assert out.returncode == 0, out.stderr
        got = np.load(tmp_path / "p.npy")
        assert got.shape == want.shape and got.dtype == np.float32
        assert (np.abs(got - want) <= level + 1e-6).all(), f"{image}: max diff {np.abs(got - want).max()}"


def _edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def _garbage_program(bundle):
    """A model.pte that is not a program, with the manifest's sha256 updated: only ExecuTorch can refuse it."""
    import hashlib

    data = bytes(range(256)) * 20
    (bundle / "model.pte").write_bytes(data)
    _edit_manifest(bundle, lambda m: m["files"].update({"model.pte": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}))


BAD_BUNDLES = {
    "missing file": (lambda b: (b / "tokenizer.model").unlink(), "tokenizer.model is missing"),
    "tampered file": (lambda b: (b / "model.pte").write_bytes(_flip_byte((b / "model.pte").read_bytes())),
                      "model.pte does not match its sha256"),
    "truncated file": (lambda b: (b / "model.pte").write_bytes((b / "model.pte").read_bytes()[:-10]),
                       "model.pte has"),
    "no manifest": (lambda b: (b / "manifest.json").unlink(), "cannot read"),
    "manifest not json": (lambda b: (b / "manifest.json").write_text('{"format_version": 1'), "not valid JSON"),
    "manifest lacks a required field": (lambda b: _edit_manifest(b, lambda m: m["image"].pop("mean")),
                                        "schema at image: 'mean' is a required property"),
    "manifest lacks the prompt": (lambda b: _edit_manifest(b, lambda m: m.pop("prompt")), "'prompt' is a required property"),
    "manifest field of the wrong type": (lambda b: _edit_manifest(b, lambda m: m.update(max_seq_len="512")),
                                         "schema at max_seq_len"),
    "onnx bundle": (lambda b: _edit_manifest(b, lambda m: m.update(target="onnx")), "target 'onnx'"),
    "coreml bundle": (lambda b: _edit_manifest(b, lambda m: m.update(target="coreml")), "target 'coreml'"),
    "program ExecuTorch cannot load": (_garbage_program, "failed in ExecuTorch"),
}


def _flip_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


@pytest.mark.parametrize("name", list(BAD_BUNDLES))
def test_bad_bundle_is_one_error_line(runner, bundles, tmp_path, name):
    damage, message = BAD_BUNDLES[name]
    bundle = shutil.copytree(bundles("executorch", "fp32"), tmp_path / "bundle")
    damage(bundle)
    out = run(runner, "--bundle", bundle, "--image", GOLDEN / "pair0.png", "--prompt", QUESTION, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and message in out.stderr, out.stderr


@pytest.mark.parametrize("image,extra,message", [
    ("BROKEN", [], "cannot decode image"),
    ("MISSING", [], "does not exist"),
    ("IMG", ["--raw-prompt"], "no <image> placeholder"),
    ("IMG", ["--prompt", "<image>\n<image>\nwhat?"], "2 <image> placeholders"),
    ("IMG", ["--max-new-tokens", "many"], "takes an integer"),
])
def test_bad_input_is_one_error_line(runner, bundles, tmp_path, image, extra, message):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    paths = {"BROKEN": broken, "MISSING": tmp_path / "nope.png", "IMG": GOLDEN / "pair0.png"}
    out = run(runner, "--bundle", bundles("executorch", "fp32"), "--image", paths[image], "--prompt", QUESTION, *extra,
              timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_cli_generate_and_profile_native(runner, bundles, tmp_path):
    """`alignkd generate --backend native` and `alignkd profile --device native` run the binary and keep the JSON keys."""
    from typer.testing import CliRunner

    from alignkd.cli import app

    bundle = bundles("executorch", "fp32")
    cli = CliRunner()
    res = cli.invoke(app, ["generate", "--model", str(bundle), "--image", str(GOLDEN / "pair0.png"), "--prompt", QUESTION,
                           "--max-new-tokens", "6", "--backend", "native", "--json"])
    assert res.exit_code == 0, res.output
    golden = json.loads((GOLDEN / "golden.json").read_text())["pairs"][0]
    assert json.loads(res.stdout)["output_ids"] == golden["expected_tokens"][:6]
    res = cli.invoke(app, ["profile", str(bundle), "--device", "native", "--runs", "2", "--warmup", "0",
                           "--max-new-tokens", "4", "--json"])
    assert res.exit_code == 0, res.output
    prof = json.loads(res.stdout)
    for key in ("load_s", "vision_encode_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "size_mb", "p90", "raw"):
        assert key in prof, key
    assert prof["device"]["name"] == "host" and prof["runs"] == 2 and len(prof["raw"]) == 2
    assert prof["decode_tokens"] == 3 and 170 <= prof["prefill_tokens"] <= 190  # profile.py's ~190-position prompt
    assert 0 < prof["peak_rss_mb"] and abs(prof["size_mb"] * 2**20 - sum(
        e["bytes"] for e in manifest_of(bundle)["files"].values())) < 1
    res = cli.invoke(app, ["generate", "--model", str(bundle), "--image", str(GOLDEN / "pair0.png"), "--prompt", "x",
                           "--raw-prompt", "--backend", "native"])
    assert res.exit_code == 2 and "no <image> placeholder" in res.output


def test_runner_env_var_and_build_command(runner, monkeypatch):
    """$ALIGNKD_RUNNER wins and must be executable; `alignkd runtime build` says where the binary is."""
    from typer.testing import CliRunner

    from alignkd.cli import app
    from alignkd.errors import AlignKDError
    from alignkd.runtime.native import find_runner

    monkeypatch.setenv("ALIGNKD_RUNNER", "/nonexistent/alignkd-runner")
    with pytest.raises(AlignKDError, match="ALIGNKD_RUNNER=/nonexistent/alignkd-runner is not an executable"):
        find_runner()
    monkeypatch.setenv("ALIGNKD_RUNNER", str(runner))
    assert find_runner() == runner
    res = CliRunner().invoke(app, ["runtime", "build"])  # up to date: an incremental no-op
    assert res.exit_code == 0 and str(runner) in res.output


def _benchmark(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, GOLDEN.parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_scripts_run(runner, bundles, checkpoint, capsys):
    """benchmarks/native_runtime.py and sdpa_kernel.py (quoted in docs/runtime.md) still run, in a few steps."""
    result = _benchmark("native_runtime").main(["--bundle", str(bundles("executorch", "fp32")), "--runs", "1",
                                                "--warmup", "0", "--max-new-tokens", "3", "--eager", str(checkpoint),
                                                "--rounds", "2"])
    row = result["results"][0]
    assert row["quant"] == "fp32" and row["decode_tokens"] == 2
    assert set(row["native"]) == set(row["python"]) == set(result["eager"]) and row["native"]["decode_tok_s"] > 0
    assert row["native_over_eager"]["decode_tok_s"] == row["native"]["decode_tok_s"] / result["eager"]["decode_tok_s"]
    assert len(row["per_round"]) == 2 and row["native"]["decode_tok_s"] == statistics.median(
        r["native"]["decode_tok_s"] for r in row["per_round"])
    sdpa = _benchmark("sdpa_kernel").main(["--build-dir", str(runner.parent), "--threads", "1", "--scale", "0.01"])
    assert [r["rows"] for r in sdpa["results"]] == [190, 1, 1, 1] and all(r["ours_ms"] > 0 for r in sdpa["results"])
    assert '"results"' in capsys.readouterr().out


def test_etdump_has_per_operator_times(runner, bundles, tmp_path):
    """--etdump writes what executorch.devtools.Inspector reads, our custom-op kernels among the timed operators."""
    from executorch.devtools import Inspector

    out = run(runner, "--bundle", bundles("executorch", "fp32"), "--image", GOLDEN / "pair0.png", "--prompt", QUESTION,
              "--max-new-tokens", "3", "--etdump", tmp_path / "run.etdp")
    assert out.returncode == 0, out.stderr
    events = [ev for block in Inspector(etdump_path=str(tmp_path / "run.etdp")).event_blocks for ev in block.events]
    timed = {ev.name for ev in events if ev.perf_data is not None}
    assert any("custom_sdpa" in name for name in timed) and any("update_cache" in name for name in timed), sorted(timed)
