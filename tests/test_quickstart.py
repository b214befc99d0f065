"""The whole pipeline at toy size: world -> teacher -> both students -> ONNX export -> eval -> profile -> summary."""

import json
from dataclasses import replace

import pytest

from alignkd.errors import AlignKDError
from alignkd.quickstart import RECORD, SHIPPED_TEACHER, QuickstartConfig, check_teacher, format_summary, quickstart, world_hash


def test_quickstart_end_to_end_and_rerun_skips(tmp_path):
    # eval_questions=20: POPE then has 2 images, the fewest the shuffled-image control can swap
    cfg = QuickstartConfig(train_images=24, eval_questions=20, vision_steps=2, vision_scenes=16, teacher_steps=2,
                           grounding_steps=2, grounding={"batch_size": 2, "compact_batch": 4, "align_steps": 2, "align_images": 2,
                                                         "val_questions": 8},
                           student_steps=2, batch_size=4, exports=(("onnx", "fp32"),), profile_runs=1, eval_max_new_tokens=4,
                           blind=("teacher",), shuffled=("teacher",), train_teacher=True)
    summary = quickstart(tmp_path, cfg)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["verdict"] == summary["verdict"] and "Align-KD" in summary["verdict"]
    assert set(summary["accuracy"]) == {"untrained student", "teacher", "teacher, images blanked", "teacher, images shuffled",
                                        "student CE-only", "student Align-KD", "Align-KD onnx-fp32"}
    for control in ("blind", "shuffled"):
        answers = tmp_path / "eval" / f"teacher_{control}" / "gqa.jsonl"
        assert {json.loads(line)["model_id"] for line in answers.read_text().splitlines()} == {f"student+{control}"}
    looking = summary["looking"]["teacher"]
    assert looking["own_images"] == summary["accuracy"]["teacher"]["average"]
    assert looking["shuffled_images"] == summary["accuracy"]["teacher, images shuffled"]["average"]
    assert set(summary["looking"]) == {"teacher"} and "what looking at the image is worth" in format_summary(summary)
    assert 0 <= looking["answers_changed"] <= looking["questions"] and looking["questions"] > 100  # all six benchmarks
    assert "their answers differ on" in summary["verdict"]
    for name, ev in summary["accuracy"].items():
        assert set(ev["table"]) == {"GQA", "SQA-IMG", "TextVQA", "MME-P", "MMBench", "POPE"}, name
        assert ev["average"] is not None
    assert summary["profile"]["Align-KD onnx-fp32"]["decode_tok_s"] > 0
    assert (tmp_path / "student_alignkd" / "student" / "config.json").is_file()
    assert json.loads((tmp_path / "vision" / "report.json").read_text())["config"]["steps"] == 2
    # the teacher's fine-tuning started from the grounded checkpoint, not from a fresh preset
    assert json.loads((tmp_path / "grounding" / "report.json").read_text())["config"]["steps"] == 2
    assert json.loads((tmp_path / "teacher" / "config.json").read_text())["student"]["path"] == str(tmp_path / "grounding" / "checkpoint")
    # ... and kept the grounding losses through it (the recipe's auxiliary, logged as aux)
    assert all(json.loads(line)["aux"] > 0 for line in (tmp_path / "teacher" / "history.jsonl").read_text().splitlines())
    assert (tmp_path / "bundles" / "onnx-fp32" / "manifest.json").is_file()
    assert "Accuracy on the synthetic suite" in format_summary(summary)
    # --train-teacher leaves the record that lets later runs start from this teacher
    record = json.loads((tmp_path / "teacher" / "student" / RECORD).read_text())
    assert record["command"].startswith("alignkd quickstart --train-teacher") and record["teacher_steps"] == 2
    assert record["grounding_steps"] == 2 and "--grounding-steps 2" in record["command"]
    assert record["grounding"]["steps"] == 2 and record["grounding"]["compact_batch"] == 4 and record["grounding"]["keep_in_finetune"]
    assert record["world_hash"] == world_hash(tmp_path / "world") and record["looking"] == summary["looking"]["teacher"]
    assert record["scores"]["teacher"]["average"] == summary["accuracy"]["teacher"]["average"]
    # a second run finds every training and export step done and skips it
    again = quickstart(tmp_path, cfg)
    assert "train the toy teacher" not in again["step_seconds"] and "export onnx fp32" not in again["step_seconds"]
    assert again["accuracy"]["student Align-KD"]["table"] == summary["accuracy"]["student Align-KD"]["table"]
    # that teacher is accepted on its own world and refused, in one sentence, on another
    teacher = tmp_path / "teacher" / "student"
    check_teacher(teacher, tmp_path / "world", replace(cfg, train_teacher=False))
    with pytest.raises(AlignKDError, match="was trained on another synthetic world \\(train_images: 24 in the record, 40 here"):
        check_teacher(teacher, tmp_path / "world", replace(cfg, train_teacher=False, train_images=40))
    (tmp_path / "world" / "world.json").write_text("{}")
    with pytest.raises(AlignKDError, match="world_hash: .* in the record, .* here\\); use the world it was trained on"):
        check_teacher(teacher, tmp_path / "world", replace(cfg, train_teacher=False))


def test_a_teacher_without_record_is_refused(tmp_path):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text("{}")
    with pytest.raises(AlignKDError, match="has no teacher_record.json, so nothing says which world"):
        check_teacher(tmp_path / "teacher", tmp_path, QuickstartConfig())
    with pytest.raises(AlignKDError, match="is not a checkpoint folder"):
        check_teacher(tmp_path / "nowhere", tmp_path, QuickstartConfig())


def test_the_shipped_teacher_fits_the_default_world():
    """The shipped teacher's record names the quickstart's default sizes (the world hash is checked at run time)."""
    record = json.loads((SHIPPED_TEACHER / RECORD).read_text())
    # it predates the grounding stage: its record has no grounding_steps, i.e. 0
    have = {"grounding_steps": 0, **record}
    assert {k: have[k] for k in QuickstartConfig().teacher_record()} == QuickstartConfig(
        teacher_steps=record["teacher_steps"], grounding_steps=have["grounding_steps"]).teacher_record()
    assert record["command"].startswith("alignkd quickstart --train-teacher")
    assert (SHIPPED_TEACHER / "model.safetensors").stat().st_size < 10_000_000


def test_the_shipped_teacher_was_trained_on_the_default_world(tmp_path):
    """A change to the world generator (or the tokenizer) must come with a retrained teacher: caught here, not by a
    user's first `alignkd quickstart` (about 20 s: the default world's 8,000 training images are rendered)."""
    from alignkd.data.synth_world import synthesize
    from alignkd.quickstart import _world_config

    synthesize(tmp_path / "world", _world_config(QuickstartConfig()), overwrite=True)
    record = check_teacher(SHIPPED_TEACHER, tmp_path / "world", QuickstartConfig())
    assert record["world_hash"] == world_hash(tmp_path / "world")


def test_rerun_with_other_sizes_is_refused_before_any_work(tmp_path):
    import pytest

    from alignkd.errors import AlignKDError

    (tmp_path / "quickstart.json").write_text(json.dumps(QuickstartConfig(train_teacher=True).sizes()))
    with pytest.raises(AlignKDError, match="teacher_steps: 2000 there, 900 asked") as err:
        quickstart(tmp_path, QuickstartConfig(teacher_steps=900, train_teacher=True))
    assert "another --out" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quickstart.json"]  # nothing started


def test_controls_name_a_known_model(tmp_path):
    import pytest

    from alignkd.errors import AlignKDError

    with pytest.raises(AlignKDError, match="blind control asked for \\['the teacher'\\]"):
        quickstart(tmp_path / "out", QuickstartConfig(blind=("the teacher",)))
    with pytest.raises(AlignKDError, match="shuffled control asked for \\['CE'\\]"):
        quickstart(tmp_path / "out", QuickstartConfig(shuffled=("CE",)))
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_training_step_left_unfinished_continues_or_starts_afresh(tmp_path, monkeypatch):
    """The recipe refuses a used output_dir without --resume/--overwrite; the quickstart says which it means."""
    from types import SimpleNamespace

    from alignkd.quickstart import _train

    calls = []
    monkeypatch.setattr("alignkd.distill.recipe.run", lambda cfg, resume, overwrite, progress, auxiliary: calls.append((resume, overwrite)))
    cfg = SimpleNamespace(output_dir=str(tmp_path / "teacher"))
    _train(cfg)  # nothing there, or only what an attempt without checkpoints left: start afresh
    ckpt = tmp_path / "teacher" / "checkpoints" / "step-3"
    ckpt.mkdir(parents=True)
    (ckpt / "train_state.json").write_text('{"step": 3}')
    _train(cfg)  # an interrupted run with a checkpoint: continue it
    assert calls == [(False, True), (True, False)]


def test_ctrl_c_in_a_step_says_what_is_kept_and_how_to_continue(tmp_path):
    from rich.console import Console

    from alignkd.quickstart import _Steps

    def interrupted():
        raise KeyboardInterrupt

    steps = _Steps(tmp_path, Console(file=open(tmp_path / "log.txt", "w")))
    steps("synthetic world", None, lambda: None)
    with pytest.raises(AlignKDError, match="interrupted in step 'ground the toy teacher'; the steps finished so far are kept .*"
                                           "re-run the same command to continue"):
        steps("ground the toy teacher", None, interrupted)

    from alignkd.distill.recipe import TrainingInterrupted

    def training_interrupted():  # the recipe's own Ctrl-C error says "--resume", which the quickstart does for itself
        raise TrainingInterrupted("interrupted at step 3; saved S; continue with the same command plus --resume", "saved S")

    with pytest.raises(AlignKDError, match="interrupted in step 'distil' \\(saved S\\); .* re-run the same command") as err:
        steps("distil", None, training_interrupted)
    assert "--resume" not in str(err.value)
