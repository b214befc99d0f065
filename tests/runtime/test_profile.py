"""profile() on the tiny official checkpoint: the JSON keys, constant decode length, the plot, devices not here.

    python -m pytest tests/runtime/test_profile.py -q
"""

import json
import sys

import pytest

from alignkd.errors import AlignKDError
from alignkd.runtime.profile import METRICS, format_profile, profile

KEYS = ("load_s", "vision_encode_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "size_mb")


@pytest.fixture(scope="module")
def result(fixture_dir):
    return profile(fixture_dir / "checkpoint", runs=2, warmup=1, max_new_tokens=6)


def test_keys_positive_and_json(result, fixture_dir):
    for key in KEYS:
        assert result[key] > 0, key
    assert result["device"]["name"] == "host" and result["device"]["threads"] >= 1
    assert {"os", "cpu"} <= set(result["device"])
    assert (result["runs"], result["warmup"], result["kind"]) == (2, 1, "checkpoint")
    assert len(result["raw"]) == 2 and set(METRICS) <= set(result["raw"][0]) and set(METRICS) <= set(result["p90"])
    assert json.loads(json.dumps(result))["model"] == str(fixture_dir / "checkpoint")
    text = format_profile(result)
    assert "decode (tok/s)" in text and "vision encode (s)" in text


def test_decode_length_is_constant_and_prefill_near_target(result):
    # stop strings and eos are ignored: every run decodes max_new_tokens - 1 steps after the first token
    assert [r["decode_tokens"] for r in result["raw"]] == [5, 5]
    assert 150 <= result["prefill_tokens"] <= 190  # v1 system + 144 image tokens + fitted question
    assert result["ttft_s"] >= result["vision_encode_s"]  # encode is counted apart from prefill, and in TTFT


def test_user_prompt_and_image(fixture_dir):
    out = profile(fixture_dir / "checkpoint", runs=1, warmup=0, max_new_tokens=2, prompt="What is this?",
                  image=fixture_dir / "images" / "img0.png")
    assert out["prompt"] == "What is this?" and out["decode_tokens"] == 1 and out["prefill_tokens"] < 190


def test_plot(result, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed: --plot is optional")
    from alignkd.runtime.profile import plot_latency

    path = plot_latency(result, tmp_path / "plots" / "latency.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(fixture_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    with pytest.raises(AlignKDError, match="needs matplotlib"):
        profile(fixture_dir / "checkpoint", plot=tmp_path / "x.png")


@pytest.mark.parametrize("device,needs", [("android", "adb"), ("ios", "Xcode"), ("jetson", "choose one of")])
def test_devices_not_here(fixture_dir, device, needs):
    with pytest.raises(AlignKDError, match=needs):
        profile(fixture_dir / "checkpoint", device=device)


def test_bad_numbers_and_model(tmp_path, fixture_dir):
    with pytest.raises(AlignKDError, match="runs >= 1"):
        profile(fixture_dir / "checkpoint", runs=0)
    with pytest.raises(AlignKDError, match="neither a checkpoint folder"):
        profile(tmp_path, runs=1, warmup=0)


def test_unwritable_plot_keeps_the_measurements(fixture_dir, tmp_path):
    """`alignkd profile --plot` into a place that cannot be written: the table is printed, then one error line."""
    pytest.importorskip("matplotlib", reason="matplotlib not installed: --plot is optional")
    from typer.testing import CliRunner

    from alignkd.cli import app

    (tmp_path / "file.txt").write_text("x")
    plot = tmp_path / "file.txt" / "latency.png"  # under a file: unwritable even for root
    result = CliRunner().invoke(app, ["profile", str(fixture_dir / "checkpoint"), "--runs", "1", "--warmup", "0",
                                      "--max-new-tokens", "2", "--plot", str(plot), "--json"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    measured = json.loads(result.stdout)
    assert measured["decode_tokens"] == 1 and measured["load_s"] > 0 and "plot" not in measured
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # torch may log warnings too
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert errors[0].startswith(f"error: cannot write the plot {plot} (") and "measurements are complete" in errors[0]
