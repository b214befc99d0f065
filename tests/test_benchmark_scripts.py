"""The benchmark scripts still run (a few steps): they are what docs/ quote, so they must not rot."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toy_grounding_probe_runs_and_reports_a_curve(capsys):
    result = _load("toy_grounding").main(["--steps", "2", "--val", "6", "--eval-every", "1", "--question", "exist",
                                          "--objects", "3"])
    assert [point["step"] for point in result["curve"]] == [0, 1, 2]
    assert all(0.0 <= point["acc"] <= 1.0 for point in result["curve"])
    assert result["curve"][2]["val_loss"] < result["curve"][0]["val_loss"]  # two steps of training move the loss
    assert 0.5 <= result["majority_acc"] <= 1.0  # yes/no: the majority answer is at least half
    assert '"curve"' in capsys.readouterr().out  # one JSON object on stdout


def test_toy_grounding_probe_with_the_scene_as_text_has_no_image():
    result = _load("toy_grounding").main(["--steps", "2", "--val", "6", "--eval-every", "2", "--question", "exist",
                                          "--objects", "2", "--scene-as-text"])
    assert result["scene_as_text"] and [point["step"] for point in result["curve"]] == [0, 2]
    assert result["curve"][1]["val_loss"] < result["curve"][0]["val_loss"]


def test_toy_clip_patch_benchmark_runs_per_patch_size(capsys):
    result = _load("toy_clip_patch").main(["--patch", "8", "--steps", "2", "--scenes", "8", "--val", "6",
                                           "--eval-every", "1"])
    run = result["results"]["8"]
    assert run["grid"] == 12 and [p["step"] for p in run["curve"]] == [0, 1, 2]
    assert set(run["val"]) == set(run["majority"]) == {"color", "shape", "size"}
    assert all(0.0 <= v <= 1.0 for v in run["val"].values())
    assert '"results"' in capsys.readouterr().out
