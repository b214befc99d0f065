"""The memory plan: its activation formula against the peak of a real training step, its table, its refusals."""

import json

import pytest

from alignkd.config import from_dict, load_config
from alignkd.distill.config import TrainConfig
from alignkd.distill.memory import build_step, measure_peak, synthetic_batch
from alignkd.distill.plan import check_strategy, format_plan, plan
from alignkd.errors import AlignKDError
from alignkd.models.mobilevlm import get_preset

SEQ = 400  # the synthetic presets' 9 image tokens + 391 text tokens: activations, not weights, dominate


def _cfg(distill: bool, mixed: bool, ckpt: bool, seq: int = SEQ) -> TrainConfig:
    """A config of the tiny presets; no file is needed to plan it (the tokenizer folder does not exist)."""
    data = {"student": {"preset": "synth_student", "tokenizer": "no-tokenizer-here"},
            "data": {"train": "unused.json", "max_length": str(seq)}, "mixed_precision": "bf16" if mixed else "no",
            "gradient_checkpointing": ckpt}
    if distill:
        data["teacher"] = {"preset": "synth_teacher", "tokenizer": "no-tokenizer-here"}
    return from_dict(TrainConfig, data)


@pytest.mark.parametrize("distill,mixed,ckpt", [(True, False, False), (True, True, True), (False, False, False)],
                         ids=["alignkd-fp32", "alignkd-bf16-checkpointing", "ce-fp32"])
def test_planned_step_peak_is_within_15_percent_of_the_measured_one(distill, mixed, ckpt):
    cfg = _cfg(distill, mixed, ckpt)
    planned = plan(cfg, gpus=1)["strategies"]["ddp"]["checkpointing" if ckpt else "no_checkpointing"]["step_peak"]
    student, teacher = get_preset("synth_student"), get_preset("synth_teacher") if distill else None
    module, t_model, optimizer = build_step(student, teacher, cfg.loss, checkpointing=ckpt)
    batch = synthetic_batch(student.llm.vocab_size, student.image.size, SEQ, student.num_image_tokens)
    measured = measure_peak(module, t_model, optimizer, batch, cfg.loss, mixed)
    assert measured > 1e6  # the step did allocate its activations
    assert abs(planned - measured) / measured < 0.15, (planned, measured)


def test_checkpointing_and_distillation_change_the_plan_as_they_change_memory():
    plain, ckpt = (plan(_cfg(True, False, c))["strategies"]["ddp"] for c in (False, True))
    assert plain["checkpointing"]["activations"] < plain["no_checkpointing"]["activations"]
    ce = plan(_cfg(False, False, False))["strategies"]["ddp"]
    assert ce["teacher"] == 0 and ce["no_checkpointing"]["capture"] == 0
    assert plain["teacher"] > 0 and plain["no_checkpointing"]["capture"] > 0


def test_paper_config_plans_from_config_json_only_and_shards_below_ddp(tmp_path, monkeypatch):
    """The paper's stage 1 with nothing on disk but the two config.json files (the real 7B / 1.7B shapes)."""
    from alignkd.models.checkpoint import config_to_official

    monkeypatch.chdir(tmp_path)
    cfg = load_config(TrainConfig, _paper())
    # the folders the config names (stage 1's student is init-student's output, the teacher the released 7B)
    for spec, preset in ((cfg.teacher, "mobilevlm_v2_7b"), (cfg.student, "mobilevlm_v2_1_7b")):
        (tmp_path / spec.path).mkdir(parents=True)
        (tmp_path / spec.path / "config.json").write_text(json.dumps(config_to_official(get_preset(preset))))
    result = plan(cfg, gpus=8, gpu_mem_gb=40)
    rows = result["strategies"]
    assert result["seq"] == 2048 and 6.5e9 < result["teacher_params"] < 7.5e9 and 1.5e9 < result["student_params"] < 1.9e9
    assert rows["fsdp"]["checkpointing"]["total"] < rows["ddp"]["checkpointing"]["total"]
    assert rows["fsdp_shard_teacher"]["teacher"] < rows["fsdp"]["teacher"] / 3
    assert rows["zero3"]["weights"] < rows["zero2"]["weights"]
    assert not rows["ddp"]["checkpointing"]["fits"] and rows["zero2"]["checkpointing"]["fits"]  # the paper used ZeRO-2
    text = format_plan(result)
    assert "fsdp_shard_teacher" in text and "fits 40 GiB" in text


def test_missing_checkpoint_needs_a_preset_and_a_preset_plans_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TrainConfig, _paper())
    with pytest.raises(AlignKDError, match="--teacher-preset"):
        plan(cfg, gpus=8)
    result = plan(cfg, gpus=8, teacher_preset="mobilevlm_v2_7b", student_preset="mobilevlm_v2_1_7b")
    assert result["strategies"]["ddp"]["checkpointing"]["fits"] is None  # no --gpu-mem: nothing to fit against


def test_a_strategy_that_cannot_fit_says_by_how_much_and_what_fits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = plan(load_config(TrainConfig, _paper()), gpus=8, gpu_mem_gb=40, teacher_preset="mobilevlm_v2_7b",
                  student_preset="mobilevlm_v2_1_7b")
    with pytest.raises(AlignKDError, match=r"--strategy ddp needs .* GiB more than --gpu-mem 40; these fit: .*zero2"):
        check_strategy(result, "ddp")
    check_strategy(result, "zero2")  # fits: no error
    tiny = plan(load_config(TrainConfig, _paper()), gpus=1, gpu_mem_gb=8, teacher_preset="mobilevlm_v2_7b",
                student_preset="mobilevlm_v2_1_7b")
    with pytest.raises(AlignKDError, match="none fits on 1 GPUs of 8 GiB; the smallest is"):
        check_strategy(tiny, "fsdp")


def _paper():
    from pathlib import Path

    import alignkd

    return Path(alignkd.__file__).parent / "configs" / "paper_7b_to_1_7b_stage1.yaml"


def test_cli_plan_prints_the_table_and_json_and_refuses_a_strategy_that_cannot_fit(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from alignkd.cli import app

    monkeypatch.chdir(tmp_path)
    presets = ["--teacher-preset", "mobilevlm_v2_7b", "--student-preset", "mobilevlm_v2_1_7b"]
    run = lambda *args: CliRunner().invoke(app, ["distill", "-c", str(_paper()), "--plan", *presets, *args])  # noqa: E731
    table = run("--gpus", "8", "--gpu-mem", "40")
    assert table.exit_code == 0 and "zero2" in table.output and "fits 40 GiB" in table.output
    as_json = json.loads(run("--gpus", "8", "--json").output)
    assert set(as_json["strategies"]) == {"ddp", "fsdp", "fsdp_shard_teacher", "zero2", "zero3"}
    refused = run("--gpus", "8", "--gpu-mem", "40", "--strategy", "ddp")
    assert refused.exit_code == 2 and "GiB more than --gpu-mem 40" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "runs").exists()  # planning trains nothing and writes nothing
