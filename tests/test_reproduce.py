"""`alignkd reproduce`: the statistics, the table, the refusals, and one tiny end-to-end run (2 rows x 2 seeds)."""

import json
from dataclasses import replace

import pytest
import torch

from alignkd.errors import AlignKDError
from alignkd.quickstart import QuickstartConfig, RECORD, _world_config, world_hash
from alignkd.reproduce import ROWS, ReproduceConfig, format_table, reproduce, summarise, t_interval, write_docs


def test_t_interval_matches_the_textbook():
    # 3 paired differences: mean 2, sd 1, t(0.975, 2) = 4.303 -> half-width 4.303 / sqrt(3)
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 / 3 ** 0.5, rel=1e-6) and low == pytest.approx(2 * mean - high)


def _seed(seed, avg, gqa):
    return {"seed": seed, "table": {"GQA": gqa, "POPE": 50.0}, "average": avg,
            "looking": {"gain": 1.0 + seed, "answers_changed": 10 * seed, "questions": 100}}


def test_summary_pairs_rows_by_seed_and_says_when_they_separate():
    rows = [r for r in ROWS if r.name in ("CE only", "+ reverse-KL logit KD")]
    runs = {"CE only": [_seed(0, 10.0, 20.0), _seed(1, 12.0, 22.0), _seed(2, 11.0, 21.0)],
            "+ reverse-KL logit KD": [_seed(0, 15.0, 30.0), _seed(1, 17.2, 31.0), _seed(2, 15.8, 32.0)]}
    ce, kd = summarise(rows, runs)
    assert "versus" not in ce and ce["mean"]["Avg"] == 11.0 and ce["std"]["Avg"] == pytest.approx(1.0)
    assert kd["versus"]["row"] == "CE only" and kd["versus"]["diff"] == pytest.approx(5.0) and kd["versus"]["separated"]
    assert kd["looking"] == {"gain": 2.0, "answers_changed": 10.0, "questions": 100}
    runs["+ reverse-KL logit KD"] = [_seed(0, 10.0, 20.0), _seed(1, 13.0, 22.0), _seed(2, 10.5, 21.0)]  # +0.17 +- a lot
    assert not summarise(rows, runs)[1]["versus"]["separated"]
    table = format_table({"rows": summarise(rows, runs)})
    assert table.splitlines()[0].startswith("| row | GQA | POPE | Avg |") and "vs CE only" in table


def test_every_row_can_be_named_on_the_command_line_and_compares_with_an_earlier_row():
    names = [r.name for r in ROWS]
    assert not any("," in n for n in names) and len(set(names)) == len(names)
    assert all(r.versus is None or names.index(r.versus) < names.index(r.name) for r in ROWS)


def test_bad_requests_are_one_sentence(tmp_path):
    with pytest.raises(AlignKDError, match="at least 2 seeds"):
        ReproduceConfig(seeds=1)
    with pytest.raises(AlignKDError, match="row 'A1,v-t' is not one this code can express; choose among: CE only"):
        ReproduceConfig(rows=("CE only", "A1,v-t"))
    doc = tmp_path / "reproduction.md"
    doc.write_text("# protocol only\n")
    with pytest.raises(AlignKDError, match="has no <!-- reproduce:begin -->"):
        write_docs(doc, {"rows": []})
    with pytest.raises(AlignKDError, match="has no <!-- reproduce:begin -->"):  # refused before anything is trained
        reproduce(tmp_path / "out", ReproduceConfig(docs=doc))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny world and a random toy teacher whose record matches it."""
    from alignkd.data.synth_world import synthesize
    from alignkd.data.tokenizer import Tokenizer
    from alignkd.models.checkpoint import save_checkpoint
    from alignkd.models.mobilevlm import MobileVLM, get_preset

    qs = QuickstartConfig(train_images=24, eval_questions=20, batch_size=4, eval_max_new_tokens=4)
    out = tmp_path_factory.mktemp("reproduce")
    world = out / "world"
    synthesize(world, _world_config(qs), overwrite=True)
    tok = Tokenizer.from_folder(world / "tokenizer")
    torch.manual_seed(0)
    cfg = get_preset("synth_teacher")
    cfg.llm.vocab_size = tok.vocab_size
    teacher = save_checkpoint(MobileVLM(cfg), tok, out / "teacher")
    (teacher / RECORD).write_text(json.dumps({**qs.teacher_record(), "world_hash": world_hash(world), "command": "test"}))
    qs.teacher = str(teacher)
    return out, qs


def test_a_teacher_from_another_world_is_refused(tiny, tmp_path):
    out, qs = tiny
    record = json.loads((out / "teacher" / RECORD).read_text())
    other = tmp_path / "teacher"
    other.mkdir()
    for f in (out / "teacher").iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    (other / RECORD).write_text(json.dumps({**record, "world_hash": "0" * 64}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "world").symlink_to(out / "world")
    qs_other = QuickstartConfig(**{**qs.__dict__, "teacher": str(other)})
    with pytest.raises(AlignKDError, match="was trained on another synthetic world \\(world_hash: 0000"):
        reproduce(run, ReproduceConfig(seeds=2, rows=("CE only",), quickstart=qs_other))
    assert not (run / "rows").exists()  # refused before any student was trained


def test_tiny_end_to_end(tiny):
    out, qs = tiny
    cfg = ReproduceConfig(seeds=2, student_steps=2, rows=("CE only", "+ reverse-KL logit KD"), quickstart=qs)
    result = reproduce(out, cfg, log=lambda line: None)
    ce, kd = result["rows"]
    assert [s["seed"] for s in ce["seeds"]] == [0, 1] and set(ce["mean"]) == {"GQA", "SQA-IMG", "TextVQA", "MME-P", "MMBench", "POPE", "Avg"}
    assert kd["versus"]["row"] == "CE only" and kd["versus"]["low"] <= kd["versus"]["diff"] <= kd["versus"]["high"]
    assert ce["looking"]["questions"] > 100
    assert json.loads((out / "reproduce.json").read_text())["rows"][1]["name"] == "+ reverse-KL logit KD"
    # every student is cached: a second run trains nothing and gives the same rows
    again = reproduce(out, cfg, log=lambda line: None)
    assert [r["mean"] for r in again["rows"]] == [r["mean"] for r in result["rows"]]


def test_parallel_jobs_give_the_serial_rows(tiny, tmp_path, capfd):
    out, qs = tiny
    cfg = ReproduceConfig(seeds=2, student_steps=2, rows=("CE only", "+ reverse-KL logit KD"), quickstart=qs)
    serial = reproduce(out, cfg, log=lambda line: None)  # cached by test_tiny_end_to_end when run in the same module
    run = tmp_path / "parallel"
    run.mkdir()
    (run / "world").symlink_to(out / "world")
    lines = []
    capfd.readouterr()
    parallel = reproduce(run, replace(cfg, jobs=2), log=lines.append)
    assert sum("trained and scored" in line for line in lines) == 4  # every student came from a worker
    assert "it/s" not in capfd.readouterr().err  # two workers' progress bars would interleave on one terminal
    assert [r["name"] for r in parallel["rows"]] == [r["name"] for r in serial["rows"]]
    for p, s in zip(parallel["rows"], serial["rows"]):
        assert [x["seed"] for x in p["seeds"]] == [0, 1]
        assert p["mean"] == pytest.approx(s["mean"], abs=1e-6)


def test_ctrl_c_says_what_is_kept_and_a_rerun_continues(tiny, tmp_path, monkeypatch):
    import alignkd.reproduce as rp

    out, qs = tiny
    run = tmp_path / "run"
    run.mkdir()
    (run / "world").symlink_to(out / "world")
    cfg = ReproduceConfig(seeds=2, student_steps=2, rows=("CE only",), quickstart=qs)
    task, calls = rp._task, []

    def interrupted_second(*args, **kwargs):
        calls.append(args[:2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return task(*args, **kwargs)

    monkeypatch.setattr(rp, "_task", interrupted_second)
    with pytest.raises(AlignKDError, match="interrupted: 1 of 2 students are trained and scored .*run the same command again"):
        reproduce(run, cfg, log=lambda line: None)
    monkeypatch.setattr(rp, "_task", task)
    result = reproduce(run, cfg, log=lambda line: None)  # the first student is not trained again
    assert [s["seed"] for s in result["rows"][0]["seeds"]] == [0, 1]


@pytest.mark.parametrize("args,message", [
    (["--seeds", "1"], "error: --seeds 1: a spread and a paired interval need at least 2 seeds; use --seeds 2 or more"),
    (["--jobs", "0"], "error: --jobs 0 must be at least 1"),
    (["--rows", "CE only,A1 v-t"], "error: row 'A1 v-t' is not one this code can express; choose among: CE only, "),
    (["--teacher", "nowhere"], "is not a checkpoint folder (no config.json)"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    from typer.testing import CliRunner

    from alignkd.cli import app

    if args[0] == "--teacher":  # the world is written before the teacher is checked: give it a tiny one
        from alignkd.data.synth_world import SynthConfig, synthesize

        synthesize(tmp_path / "world", SynthConfig.tiny(), overwrite=True)
    (tmp_path / "r.md").write_text("protocol\n<!-- reproduce:begin -->\n<!-- reproduce:end -->\n")
    result = CliRunner().invoke(app, ["reproduce", "--out", str(tmp_path), "--docs", str(tmp_path / "r.md"), *args])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "rows").exists()
