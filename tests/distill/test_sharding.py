"""The shipped accelerate configs (DDP, FSDP, DeepSpeed ZeRO-2/3) and FSDP for real: two CPU processes on gloo
train the tiny pair to the same losses, gradients and weights as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env

import alignkd
from alignkd.config import from_dict
from alignkd.distill.config import TrainConfig
from alignkd.distill.recipe import run
from alignkd.models.checkpoint import read_state_dict
from alignkd.models.mobilevlm import MobileVLM, get_preset

from conftest import synth_config
from fsdp_cpu_worker import recording_step

CONFIGS = Path(alignkd.__file__).parent / "configs" / "accelerate"
WORKER = Path(__file__).parent / "fsdp_cpu_worker.py"


def _launch_env(name: str) -> dict:
    """What `accelerate launch --config_file CONFIG` puts in each process's environment."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def test_every_shipped_config_loads():
    want = {"ddp.yaml": DistributedType.MULTI_GPU, "fsdp.yaml": DistributedType.FSDP,
            "deepspeed_zero2.yaml": DistributedType.DEEPSPEED, "deepspeed_zero3.yaml": DistributedType.DEEPSPEED}
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(want)
    for name, kind in want.items():
        cfg = load_config_from_file(str(CONFIGS / name))
        assert cfg.distributed_type == kind, name
        assert cfg.num_machines == 1 and cfg.mixed_precision == "bf16" and not cfg.use_cpu, name
    zero2, zero3 = (load_config_from_file(str(CONFIGS / f"deepspeed_zero{i}.yaml")).deepspeed_config for i in (2, 3))
    assert zero2["zero_stage"] == 2 and zero2["offload_optimizer_device"] == "none" and not zero2["zero3_init_flag"]
    # ZeRO-3 partitions the weights: saving the student needs the gathered 16-bit copy
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True


def test_fsdp_config_shards_the_student_layers():
    """FSDP2 (per-parameter sharding: param groups and the frozen tower need no use_orig_params), full
    sharding, a full state dict for the official-format save, and wrap classes that exist in the student."""
    env = _launch_env("fsdp.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type) and not plugin.activation_checkpointing
    classes = {type(m).__name__ for m in MobileVLM(get_preset("synth_student")).modules()}
    assert set(plugin.transformer_cls_names_to_wrap) == {"LlamaDecoderLayer", "CLIPEncoderLayer"} <= classes


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_fsdp_two_cpu_processes_equal_one(world, teacher_ckpt, tmp_path, monkeypatch):
    """FSDP over 2 gloo processes (micro-batch 2 each) against one process accumulating the same 2 micro-batches:
    the same loss terms at every step, the same (gathered) gradients at the first step, the same weights."""
    base = dict(max_steps=2, batch_size=2, loss={"weights": {"ce": 1.0, "kd": 1.0, "attn": 1.0, "vision_all": 1.0, "vision_focus": 0.1}})
    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step(torch.optim.AdamW.step, str(tmp_path / "one.pt")))
    one = run(from_dict(TrainConfig, synth_config(world, teacher_ckpt, tmp_path / "one", grad_accum=2, **base)), progress=False)
    monkeypatch.undo()

    cfg_path = tmp_path / "fsdp.yaml"
    cfg_path.write_text(yaml.safe_dump(synth_config(world, teacher_ckpt, tmp_path / "two", **base)))
    # accelerate runs FSDP on CPU only through the worker (see its docstring); ACCELERATE_USE_CPU: gloo on CPU
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "ALIGNKD_GRADS": str(tmp_path / "two.pt"),
           "PYTHONPATH": os.pathsep.join([str(Path(alignkd.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp.yaml"),
                           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0",
                           str(WORKER), "distill", "-c", str(cfg_path)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FSDP" in done.stdout, done.stdout[-2000:]  # the worker says which engine ran
    two = tmp_path / "two"

    for a, b in zip(_history(one), _history(two), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-9), (a["step"], k)
    g1, g2 = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert len(g1) == len(g2) and sum(g.abs().sum() for g in g1) > 0
    for x, y in zip(g1, g2):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-7)
    w1, w2 = read_state_dict(one / "student"), read_state_dict(two / "student")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-6)
    assert (two / "adapters.safetensors").is_file()
