"""evaluate / compare on the tiny official checkpoint and a tiny synthetic suite: answer files, resume, table, bad input.

    python -m pytest tests/eval/test_run.py -q
"""

import json
from pathlib import Path

import pytest
import torch

from alignkd.errors import AlignKDError
from alignkd.eval import run as eval_run
from alignkd.eval.provenance import KEY_FILE, generation_key
from alignkd.eval.run import COLUMNS, compare, evaluate, format_compare, format_table

ALL = list(COLUMNS)
CAP = 4  # new tokens per answer: random weights never stop early, and the papers' 128 / 1024 would take minutes
LLAVA_FIELDS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


@pytest.fixture
def calls(monkeypatch):
    """Counts generate() calls, to see what a resumed run really generated."""
    from alignkd.runtime import generation

    counter = {"n": 0}
    real = generation.generate

    def counting(*args, **kwargs):
        counter["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate", counting)
    return counter


@pytest.fixture
def seen(monkeypatch):
    """(prompt, pixel values) of every generate() call, to see what a control really fed the model."""
    from alignkd.runtime import generation

    inputs = []
    real = generation.generate

    def spy(backend, tokenizer, prompt, pixel_values=None, *args, **kwargs):
        inputs.append((prompt, pixel_values))
        return real(backend, tokenizer, prompt, pixel_values, *args, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    return inputs


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_all_six_then_resume(model, suite, tmp_path, calls):
    out = tmp_path / "answers"
    first = evaluate(model, ALL, suite, out, limit=2, max_new_tokens=CAP)
    assert calls["n"] == 2 * len(ALL)
    for name in ALL:
        records = lines(out / f"{name}.jsonl")
        assert len(records) == 2 and all(LLAVA_FIELDS <= set(r) for r in records)
        assert {r["model_id"] for r in records} == {"checkpoint"}
    assert "round_id" in lines(out / "mmbench.jsonl")[0]  # MMBench's extra answer fields
    before = {name: lines(out / f"{name}.jsonl") for name in ALL}

    calls["n"] = 0
    second = evaluate(model, ALL, suite, out, limit=4, max_new_tokens=CAP, progress=False)
    assert calls["n"] == 2 * len(ALL)  # only the two new questions per benchmark
    for name in ALL:
        bench = second["benchmarks"][name]
        assert (bench["generated"], bench["reused"]) == (2, 2)
        assert bench["score"]["n_questions"] > 4 and bench["partial"]
        assert len(lines(out / f"{name}.jsonl")) == 4
        assert lines(out / f"{name}.jsonl")[:2] == before[name]  # appended, never rewritten
    assert list(second["table"]) == ["MME-P", "GQA", "TextVQA", "POPE", "MMBench", "SQA-IMG"]
    assert second["average"] is not None and second["partial"] and first["partial"]
    json.dumps(second)  # --json
    text = format_table(second)
    for label in [*second["table"], "Avg", "partial"]:
        assert label in text


def test_killed_mid_write_resumes(model, suite, tmp_path, calls):
    out = tmp_path / "answers"
    evaluate(model, ["gqa", "mme"], suite, out, limit=3, max_new_tokens=CAP, progress=False)
    path = out / "mme.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # the third record cut mid-line, as a kill during write leaves it
    calls["n"] = 0
    result = evaluate(model, ["gqa", "mme"], suite, out, limit=3, max_new_tokens=CAP, progress=False)
    assert calls["n"] == 1
    assert (result["benchmarks"]["mme"]["generated"], result["benchmarks"]["gqa"]["generated"]) == (1, 0)
    assert len(lines(path)) == 3  # every line valid JSON again
    assert result["average"] is None and "Avg needs all six" in format_table(result)


def test_complete_run_is_not_partial(model, suite, tmp_path):
    result = evaluate(model, ["textvqa"], suite, tmp_path, max_new_tokens=2, progress=False)
    assert not result["partial"] and result["benchmarks"]["textvqa"]["score"]["n_scored"] == 8
    assert "partial:" not in format_table(result)


def test_missing_benchmark_files_fail_before_load(suite, tmp_path, no_load):
    with pytest.raises(AlignKDError, match="llava_gqa_testdev_balanced.jsonl not found"):
        evaluate("any", ["gqa"], tmp_path, tmp_path / "out")
    (suite.parent / "moved").mkdir(exist_ok=True)
    label = suite / "pope/coco/coco_pope_random.json"
    moved = suite.parent / "moved" / label.name
    label.rename(moved)  # a scoring file: found by the dry-run score, not hours later
    try:
        with pytest.raises(AlignKDError, match="coco_pope_random.json not found"):
            evaluate("any", ["pope"], suite, tmp_path / "out")
    finally:
        moved.rename(label)
    with pytest.raises(AlignKDError, match="unknown benchmark 'vqav2'"):
        evaluate("any", ["vqav2"], suite, tmp_path / "out")


def test_foreign_answer_files_fail_before_load(model, suite, tmp_path, no_load):
    out = tmp_path / "out"
    out.mkdir()
    key = generation_key(model, dtype="float32", max_new_tokens=None, blind=False, shuffled=False)
    (out / KEY_FILE).write_text(json.dumps(key))  # same model and settings: the records themselves are checked
    (out / "pope.jsonl").write_text(json.dumps({"question_id": 99999, "prompt": "?", "text": "yes", "model_id": "m"}) + "\n")
    with pytest.raises(AlignKDError, match="does not ask"):
        evaluate(model, ["pope"], suite, out, model_id="m")
    with pytest.raises(AlignKDError, match="answers of model 'm', not 'other'"):
        evaluate(model, ["pope"], suite, out, model_id="other")
    (out / "pope.jsonl").write_text('{"question_id": 1, "pro\n{"question_id": 2}\n')  # damage before the end
    with pytest.raises(AlignKDError, match="line 1 is not valid JSON"):
        evaluate(model, ["pope"], suite, out, model_id="m")
    (out / "pope.jsonl").write_text('{"question_id": 2}\n')
    with pytest.raises(AlignKDError, match="line 1 is not a LLaVA answer record"):
        evaluate(model, ["pope"], suite, out, model_id="m")


def test_model_path_neither_checkpoint_nor_bundle(suite, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlignKDError, match="neither a checkpoint folder"):
        evaluate(tmp_path / "empty", ["gqa"], suite, tmp_path / "out", limit=1)


def test_compare_same_model_has_no_drift(model, suite, tmp_path):
    result = compare(model, model, ["pope", "gqa"], suite, tmp_path, limit=2, max_new_tokens=CAP, progress=False)
    for row in result["benchmarks"].values():
        assert row["drift"] == 0 and row["agreement"] == 1.0 and row["n_compared"] == 2
    assert (tmp_path / "bundle/pope.jsonl").is_file() and (tmp_path / "reference/pope.jsonl").is_file()
    assert "+0.00" in format_compare(result) and "100.0% of 2" in format_compare(result)
    json.dumps(result)
    again = compare(model, model, ["pope"], suite, tmp_path, limit=2, max_new_tokens=CAP, progress=False)
    assert again["bundle"]["benchmarks"]["pope"]["generated"] == 0  # prediction files reused
    assert eval_run.paper_row({})["average"] is None


def test_blind_control_blanks_every_image_and_keeps_the_prompt(model, suite, tmp_path, seen):
    seeing = evaluate(model, ["gqa", "pope"], suite, tmp_path / "seeing", limit=2, max_new_tokens=CAP, progress=False)
    looked, seen[:] = list(seen), []
    blind = evaluate(model, ["gqa", "pope"], suite, tmp_path / "blind", limit=2, max_new_tokens=CAP, progress=False,
                     blind=True)
    assert len(seen) == len(looked) == 4
    for (prompt, pixels), (prompt_seen, pixels_seen) in zip(seen, looked):
        assert prompt == prompt_seen and "<image>" in prompt  # same prompt, same image tokens
        assert pixels.shape == pixels_seen.shape and not pixels.any() and pixels_seen.abs().sum() > 0
    assert blind["blind"] and not seeing["blind"]
    assert {r["model_id"] for r in lines(tmp_path / "blind/gqa.jsonl")} == {"checkpoint+blind"}
    assert "blind control" in format_table(blind) and "blind control" not in format_table(seeing)
    with pytest.raises(AlignKDError, match="holds answers made with another control"):  # never mixed with real answers
        evaluate(model, ["gqa"], suite, tmp_path / "blind", limit=2, max_new_tokens=CAP, progress=False)


def test_shuffled_control_asks_about_another_image_of_the_same_benchmark(model, suite, tmp_path, seen):
    from alignkd.eval.registry import get_benchmark
    from alignkd.eval.run import shuffled_images

    questions = get_benchmark("pope").load_questions(suite)
    donors = shuffled_images(questions, "pope")
    images = {q.image_path for q in questions}
    assert set(donors) == images and {d.image_path for d in donors.values()} == images  # a permutation of the images
    assert all(d.image_path != image for image, d in donors.items())  # nobody keeps its own picture
    assert donors == shuffled_images(get_benchmark("pope").load_questions(suite), "pope")  # the file decides it

    evaluate(model, ["pope"], suite, tmp_path / "seeing", limit=3, max_new_tokens=CAP, progress=False)
    looked, seen[:] = list(seen), []
    result = evaluate(model, ["pope"], suite, tmp_path / "shuffled", limit=3, max_new_tokens=CAP, progress=False, shuffled=True)
    assert len(seen) == len(looked) == 3
    for (prompt, pixels), (prompt_seen, pixels_seen) in zip(seen, looked):
        assert prompt == prompt_seen  # same question, other picture
        assert not torch.equal(pixels, pixels_seen)
    assert result["shuffled"] and result["model_id"] == "checkpoint+shuffled"
    assert "shuffled-image control" in format_table(result)
    with pytest.raises(AlignKDError, match="two separate controls"):
        evaluate(model, ["pope"], suite, tmp_path / "both", limit=1, progress=False, blind=True, shuffled=True)
    with pytest.raises(AlignKDError, match="needs at least 2 distinct images"):
        shuffled_images(questions[:1], "pope")


def test_cli_blind_flag_uses_its_own_default_folder(model, suite, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "alignkd.cli", "eval", str(model), "--bench", "pope", "--data", str(suite),
                          "--limit", "1", "--max-new-tokens", "2", "--blind", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["blind"] and result["model_id"] == "checkpoint+blind"
    assert Path(result["out_dir"]).parts[:2] == ("runs", "eval") and Path(result["out_dir"]).name.startswith("blind-")
