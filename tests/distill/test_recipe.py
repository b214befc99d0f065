"""The recipe end to end on the tiny world: exact resume, two processes, and one clear error per bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from alignkd.config import from_dict
from alignkd.distill.config import TrainConfig
from alignkd.distill.recipe import run
from alignkd.errors import AlignKDError
from alignkd.models.checkpoint import read_state_dict

from conftest import synth_config


def _weights(folder: Path):
    return read_state_dict(folder / "student")


def test_resume_equals_uninterrupted(world, teacher_ckpt, tmp_path):
    """A run stopped after step 2 and resumed from its checkpoint ends with the uninterrupted run's weights."""
    config = lambda out, **kw: from_dict(TrainConfig, synth_config(world, teacher_ckpt, out, max_steps=4, grad_accum=2, **kw))
    straight = run(config(tmp_path / "straight"), progress=False)
    saving = run(config(tmp_path / "saving", save_every=2), progress=False)
    ckpt = saving / "checkpoints" / "step-2"
    assert (ckpt / "train_state.json").is_file() and (ckpt / "student" / "model.safetensors").is_file()
    resumed = run(config(tmp_path / "resumed", save_every=2), resume=str(ckpt), progress=False)
    a, b, c = _weights(straight), _weights(saving), _weights(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key  # saving checkpoints does not change training
        assert torch.equal(a[key], c[key]), key  # resuming at step 2 ends exactly where the straight run ends
    hist = [json.loads(l) for l in (resumed / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [3, 4]
    assert (straight / "adapters.safetensors").is_file()


def test_auxiliary_loss_is_added_logged_and_resumed(world, teacher_ckpt, tmp_path):
    """`run(auxiliary=...)` adds the callable's loss to each step's (it changes the weights), logs it as `aux`, and a
    run resumed at step 2 ends where the straight run ends (the auxiliary is told the step)."""
    calls = []

    def aux(student, step):
        calls.append(step)
        return (step + 1) * 1e-2 * sum(p.square().sum() for p in student.mm_projector.parameters())

    config = lambda out, **kw: from_dict(TrainConfig, synth_config(world, teacher_ckpt, out, teacher=None, max_steps=4, **kw))
    plain = run(config(tmp_path / "plain"), progress=False)
    straight = run(config(tmp_path / "straight"), progress=False, auxiliary=aux)
    assert calls == [0, 1, 2, 3]
    hist = [json.loads(l) for l in (straight / "history.jsonl").read_text().splitlines()]
    assert all(h["aux"] > 0 and h["loss"] == pytest.approx(h["ce"] + h["aux"], rel=1e-5) for h in hist), hist
    saving = run(config(tmp_path / "saving", save_every=2), progress=False, auxiliary=aux)
    resumed = run(config(tmp_path / "resumed", save_every=2), resume=str(saving / "checkpoints" / "step-2"), progress=False, auxiliary=aux)
    a, b, c = _weights(straight), _weights(resumed), _weights(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if "mm_projector" in k)


def test_ce_only_training(world, teacher_ckpt, tmp_path):
    cfg = synth_config(world, teacher_ckpt, tmp_path / "ce", teacher=None, max_steps=2)
    out = run(from_dict(TrainConfig, cfg), progress=False)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["final"]["kd"] == 0.0
    assert not (out / "adapters.safetensors").exists()


def test_two_processes(world, teacher_ckpt, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(synth_config(world, teacher_ckpt, tmp_path / "ddp", max_steps=2, batch_size=2)))
    # `accelerate launch --cpu` starts ONE process whatever --num_processes says; --multi_gpu starts two (torchrun)
    # and ACCELERATE_USE_CPU makes them a gloo group on the CPU
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                           "-m", "alignkd", "distill", "-c", str(cfg_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done:") == 2, done.stdout[-2000:]  # both processes ran the recipe
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["final"]["attn"] > 0


def test_mismatched_tokenizer_refused(world, teacher_ckpt, tmp_path, fixture_dir):
    cfg = synth_config(world, teacher_ckpt, tmp_path / "x", teacher={"path": str(fixture_dir / "checkpoint")})
    cfg["student"].pop("vision_tower_from")
    with pytest.raises(AlignKDError, match=r"teacher and student differ in tokenizer.*teacher 512 pieces"):
        run(from_dict(TrainConfig, cfg), progress=False)


def test_non_finite_loss_stops_naming_step_and_terms(world, teacher_ckpt, tmp_path):
    cfg = synth_config(world, teacher_ckpt, tmp_path / "nan", max_steps=3, optim={"lr": 1e30, "max_grad_norm": 1e30})
    with pytest.raises(AlignKDError, match=r"non-finite loss at step \d+: loss=.*ce=.*kd=.*attn=.*last good checkpoint") as err:
        run(from_dict(TrainConfig, cfg), progress=False)
    # the bad value is shown as it is (nan/inf), never as 0
    assert re.search(r"loss=-?(nan|inf)", str(err.value)) and "loss=0," not in str(err.value), str(err.value)


def test_resume_without_checkpoint(world, teacher_ckpt, tmp_path):
    with pytest.raises(AlignKDError, match="no checkpoint"):
        run(from_dict(TrainConfig, synth_config(world, teacher_ckpt, tmp_path / "none")), resume=True, progress=False)


def test_bf16_gradient_checkpointing_and_tensorboard(world, teacher_ckpt, tmp_path):
    cfg = synth_config(world, teacher_ckpt, tmp_path / "bf16", max_steps=1, mixed_precision="bf16",
                       gradient_checkpointing=True, tensorboard=True)
    out = run(from_dict(TrainConfig, cfg), progress=False)
    final = json.loads((out / "train_summary.json").read_text())["final"]
    assert all(final[k] > 0 for k in ("ce", "kd", "attn", "vision_all"))
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard event file"


def test_pair_checks_name_both_values(world, teacher_ckpt):
    import copy

    from alignkd.distill.checkpoint import check_pair, load_spec
    from alignkd.distill.config import ModelSpec

    teacher, t_tok = load_spec(ModelSpec(path=str(teacher_ckpt)), train=False)
    student, s_tok = load_spec(ModelSpec(preset="synth_student", tokenizer=str(world / "tokenizer")))
    check_pair(teacher, t_tok, student, s_tok)  # the shipped pair fits
    other = copy.deepcopy(student)
    other.config.image.size = 112
    with pytest.raises(AlignKDError, match=r"image preprocessing \(size\): teacher \{'size': 96\}, student \{'size': 112\}"):
        check_pair(teacher, t_tok, other, s_tok)
    other = copy.deepcopy(student)
    other.config.llm.vocab_size += 1
    with pytest.raises(AlignKDError, match="vocabulary size: teacher 512, student 513"):
        check_pair(teacher, t_tok, other, s_tok)


def test_skipped_records_counted_once_over_epochs_and_workers(world, teacher_ckpt, tmp_path, monkeypatch):
    """Two epochs with a DataLoader worker: a missing image and a pixel bomb are one skipped record each, and the
    bomb (PIL's DecompressionBombError) is skipped like any bad image instead of stopping the run."""
    import shutil

    from PIL import Image

    images = tmp_path / "images"
    shutil.copytree(world / "train" / "images", images)
    Image.new("RGB", (200, 200)).save(images / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200x200 is over twice the limit, the world's 64x64 is not
    records = json.loads((world / "train" / "finetune.json").read_text())[:8]
    records[1]["image"], records[5]["image"] = "missing.png", "bomb.png"
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    cfg = synth_config(world, teacher_ckpt, tmp_path / "run", teacher=None, max_steps=None, epochs=2)
    cfg["data"].update(train=str(data), image_root=str(images), num_workers=1)
    out = run(from_dict(TrainConfig, cfg), progress=False)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["skipped_records"] == {"missing_image": 1, "corrupt_image": 1}


def test_stage_two_continues_stage_one_student_and_adapters(world, teacher_ckpt, tmp_path):
    """adapters_from: stage 2 starts from stage 1's adapters (with lr 0 it ends with them unchanged), not fresh ones."""
    from safetensors.torch import load_file

    stage1 = run(from_dict(TrainConfig, synth_config(world, teacher_ckpt, tmp_path / "s1", max_steps=1)), progress=False)
    stage2_cfg = lambda out, **kw: from_dict(TrainConfig, synth_config(  # noqa: E731
        world, teacher_ckpt, out, max_steps=1, student={"path": str(stage1 / "student")}, optim={"lr": 0.0}, seed=5, **kw))
    stage2 = run(stage2_cfg(tmp_path / "s2", adapters_from=str(stage1 / "adapters.safetensors")), progress=False)
    fresh = run(stage2_cfg(tmp_path / "fresh"), progress=False)
    first, second, new = (load_file(str(p / "adapters.safetensors")) for p in (stage1, stage2, fresh))
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert any(not torch.equal(first[k], new[k]) for k in first)
    assert all(torch.equal(a, b) for a, b in zip(_weights(stage1).values(), _weights(stage2).values()))
    with pytest.raises(AlignKDError, match="adapters_from .*nowhere.safetensors does not exist"):
        run(stage2_cfg(tmp_path / "typo", adapters_from=str(tmp_path / "nowhere.safetensors")), progress=False)
    assert not (tmp_path / "typo").exists()  # refused before the run folder or any model
