"""`alignkd distill` / `alignkd train` through the real CLI: clear errors with exit status 2."""

import json
import subprocess
import sys

import yaml

from conftest import synth_config


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "alignkd", *args], capture_output=True, text=True, timeout=300)


def test_strict_names_the_bad_record(world, teacher_ckpt, tmp_path):
    records = json.loads((world / "train" / "finetune.json").read_text())[:8]
    records[3]["image"] = "missing.png"
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(records))
    cfg = synth_config(world, teacher_ckpt, tmp_path / "out", max_steps=1, batch_size=8)
    cfg["data"]["train"] = str(data)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = _cli("distill", "-c", str(path), "--strict")
    assert done.returncode == 2
    assert f"record {records[3]['id']!r}" in done.stderr and "bad.json" in done.stderr and "Traceback" not in done.stderr


def test_unknown_key_and_wrong_command(world, teacher_ckpt, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(synth_config(world, teacher_ckpt, tmp_path / "out")))
    done = _cli("distill", "-c", str(path), "optim.lrr=1")
    assert done.returncode == 2 and "unknown config key 'optim.lrr'" in done.stderr
    done = _cli("train", "-c", str(path))
    assert done.returncode == 2 and "names a teacher" in done.stderr


def test_used_output_dir_needs_resume_or_overwrite(world, teacher_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(synth_config(world, teacher_ckpt, out)))  # what an earlier run left
    (out / "history.jsonl").write_text('{"step": 1}\n')
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(synth_config(world, teacher_ckpt, out)))
    done = _cli("distill", "-c", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "already holds a training run" in done.stderr and "--resume" in done.stderr and "--overwrite" in done.stderr
    assert (out / "history.jsonl").read_text() == '{"step": 1}\n'
    done = _cli("train", "-c", str(path), "teacher=null", "--resume", "--overwrite")
    assert done.returncode == 2 and "--resume and --overwrite exclude each other" in done.stderr
    done = _cli("distill", "-c", str(path), "--resume", "--resume-from", str(out / "checkpoints" / "step-2"))
    assert done.returncode == 2 and "--resume and --resume-from exclude each other" in done.stderr
