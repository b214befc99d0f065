"""The shipped accelerate configs (DDP, FSDP, DeepSpeed ZeRO-2/3) and FSDP for real: two CPU processes on gloo
train the tiny pair to the same losses, gradients and weights as one process."""

import importlib.util
import json
import os
import shutil
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
from safetensors.torch import load_file

import alignkd
from alignkd.config import from_dict
from alignkd.distill.config import TrainConfig
from alignkd.distill.recipe import _deepspeed_settings, run
from alignkd.errors import AlignKDError
from alignkd.models.checkpoint import read_state_dict
from alignkd.models.mobilevlm import MobileVLM, get_preset

from conftest import synth_config
from cpu_shard_worker import recording_step

CONFIGS = Path(alignkd.__file__).parent / "configs" / "accelerate"
WORKER = Path(__file__).parent / "cpu_shard_worker.py"


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


# 2 processes x micro-batch 2 x grad_accum 2 against 1 process x micro-batch 2 x grad_accum 4: the same 4
# micro-batches make each optimizer step (process r takes batches r, r+2, ...), padding and accumulation included;
# with gradient checkpointing (the layer-0 capture keeps the forward's tensors, not the recomputation's) and the
# projector on its own learning rate (a parameter group of its own under sharding)
BASE = dict(max_steps=2, batch_size=2, gradient_checkpointing=True, optim={"lr": 1e-3, "projector_lr": 3e-3})


@pytest.fixture(scope="module")
def one_process(world, teacher_ckpt, tmp_path_factory):
    """The single-process run and the gradients of its first optimizer step."""
    tmp = tmp_path_factory.mktemp("one")
    step = torch.optim.AdamW.step
    torch.optim.AdamW.step = recording_step(step, str(tmp / "grads.pt"))
    try:
        out = run(from_dict(TrainConfig, synth_config(world, teacher_ckpt, tmp / "out", grad_accum=4, **BASE)), progress=False)
    finally:
        torch.optim.AdamW.step = step
    return out, torch.load(tmp / "grads.pt")


def _two_processes(config: str, world, teacher_ckpt, tmp_path: Path, *flags: str, **env) -> Path:
    """`accelerate launch --config_file CONFIG` with 2 CPU processes running the recipe through the worker; the run
    also writes a resumable checkpoint after step 1 (saving gathers the shards; it must not change the training)."""
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(synth_config(world, teacher_ckpt, tmp_path / "two", grad_accum=2, save_every=1, **BASE)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env,
           "PYTHONPATH": os.pathsep.join([str(Path(alignkd.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
                           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0",
                           str(WORKER), "distill", "-c", str(cfg_path), *flags], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done:") == 2, done.stdout[-2000:]  # both processes ran the recipe
    return tmp_path / "two"


def _same_run(one: Path, two: Path) -> None:
    """The same loss terms at every step and the same final student and adapters."""
    for a, b in zip(_history(one), _history(two), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-9), (a["step"], k)
    for part in ("student/model.safetensors", "adapters.safetensors"):
        w1, w2 = (read_state_dict(p.parent) if p.name == "model.safetensors" else load_file(p) for p in (one / part, two / part))
        assert w1.keys() == w2.keys() and w1, part
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-6)


def test_fsdp_two_cpu_processes_equal_one(one_process, world, teacher_ckpt, tmp_path):
    """FSDP2 on 2 gloo processes: the same losses, first-step gradients (gathered from the shards) and weights."""
    one, grads = one_process
    # ACCELERATE_USE_CPU: the processes form a gloo group on the CPU (the worker then lets FSDP run there)
    two = _two_processes("fsdp.yaml", world, teacher_ckpt, tmp_path, ACCELERATE_USE_CPU="true", ALIGNKD_GRADS=str(tmp_path / "grads.pt"))
    _same_run(one, two)
    assert (two / "checkpoints" / "step-1" / "student" / "model.safetensors").is_file()
    got = torch.load(tmp_path / "grads.pt")
    assert len(got) == len(grads) and sum(g.abs().sum() for g in grads) > 0
    for x, y in zip(grads, got):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (not in the test extra; it runs on CPU with DS_ACCELERATOR=cpu: docs/distill.md)")
@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_two_cpu_processes_equal_one(one_process, world, teacher_ckpt, tmp_path, config):
    """ZeRO-2 (the paper's) and ZeRO-3 on 2 gloo processes, DeepSpeed's CPU accelerator: the engine accumulates
    (grad_accum 2), clips and steps, and the run equals the single-process one."""
    one, _ = one_process
    _same_run(one, _two_processes(config, world, teacher_ckpt, tmp_path, DS_ACCELERATOR="cpu"))


@pytest.mark.slow
def test_fsdp_resume_equals_uninterrupted(one_process, world, teacher_ckpt, tmp_path):
    """An FSDP run resumed from its step-1 checkpoint (accelerate's sharded model and optimizer state, our scheduler
    and RNG files) ends where the single-process run ends."""
    one, _ = one_process
    env = dict(ACCELERATE_USE_CPU="true")
    two = _two_processes("fsdp.yaml", world, teacher_ckpt, tmp_path, **env)
    for path in (two / "student", two / "adapters.safetensors", two / "train_summary.json"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _two_processes("fsdp.yaml", world, teacher_ckpt, tmp_path, "--resume", **env)
    _same_run(one, two)


def _deepspeed_accelerator(**given):
    from types import SimpleNamespace

    plugin = SimpleNamespace(deepspeed_config={"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                               "gradient_clipping": "auto", "train_batch_size": "auto", **given})
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=8,
                           state=SimpleNamespace(deepspeed_plugin=plugin))


def test_deepspeed_takes_batch_accumulation_and_clipping_from_the_distill_config(world, teacher_ckpt, tmp_path):
    cfg = from_dict(TrainConfig, synth_config(world, teacher_ckpt, tmp_path, batch_size=1, grad_accum=32))
    acc = _deepspeed_accelerator(gradient_accumulation_steps=32)  # an explicit value that agrees is kept
    assert _deepspeed_settings(acc, cfg) is True
    assert acc.state.deepspeed_plugin.deepspeed_config == {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 32,
                                                           "gradient_clipping": cfg.optim.max_grad_norm, "train_batch_size": 256}


def test_deepspeed_config_disagreeing_with_the_distill_config_is_refused(world, teacher_ckpt, tmp_path):
    cfg = from_dict(TrainConfig, synth_config(world, teacher_ckpt, tmp_path, batch_size=1, grad_accum=32))
    with pytest.raises(AlignKDError, match=r"DeepSpeed config sets gradient_accumulation_steps: 8 but the distill config's "
                                           r"grad_accum is 32; set gradient_accumulation_steps to \"auto\""):
        _deepspeed_settings(_deepspeed_accelerator(gradient_accumulation_steps=8), cfg)
