"""`python -m alignkd ...` under accelerate's FSDP or DeepSpeed on CPU processes (gloo), for the sharding tests.

accelerate turns FSDP and DeepSpeed on only for GPU-like distributed types (a CPU launch is MULTI_CPU, and
`--cpu` even makes `accelerate launch` start a single process), so this worker, started by `accelerate launch
--config_file CONFIG`, reports the torchrun process group as MULTI_GPU with a CPU device. Everything else is
the shipped recipe. With ALIGNKD_GRADS=FILE, the (full, gathered) gradients handed to the first optimizer
step are written to FILE by rank 0, in the optimizer's parameter order.
"""

import os
import sys

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_prepare_backend = PartialState._prepare_backend


def _as_gpu_group(self, cpu=False, sagemaker_dp=False, backend=None):
    backend, kind = _prepare_backend(self, cpu, sagemaker_dp, backend)
    if kind in (DistributedType.MULTI_CPU, DistributedType.NO) and "LOCAL_RANK" in os.environ:
        return "gloo", DistributedType.MULTI_GPU
    return backend, kind


def _cpu_device(self):
    self.device = torch.device("cpu")


def _partition_every_parameter() -> None:
    """ZeRO-3 keeps parameters under 1e5 elements whole on every process (persistence threshold), and gathered ones
    alive up to 1e9 elements: all of the tiny model's. Partition them all and release each after its module's
    forward, so that the tests see what a real model's layers see."""
    from accelerate.utils import DeepSpeedPlugin

    post_init = DeepSpeedPlugin.__post_init__

    def patched(plugin):
        post_init(plugin)
        if plugin.zero_stage == 3:
            plugin.deepspeed_config["zero_optimization"].update(
                stage3_param_persistence_threshold=0, stage3_max_live_parameters=0, stage3_max_reuse_distance=0)

    DeepSpeedPlugin.__post_init__ = patched


def recording_step(step, path: str):
    """AdamW.step that first saves the gradients it sees on its first call (FSDP's DTensor shards gathered to
    full tensors, by every process; rank 0 writes), in the optimizer's parameter order."""

    def patched(opt, *args, **kwargs):
        if not os.path.exists(path):
            grads = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                     for group in opt.param_groups for p in group["params"]]
            if int(os.environ.get("RANK", 0)) == 0:
                torch.save([g.detach().clone() for g in grads], path)
                print(f"first step under {AcceleratorState().distributed_type.value}", flush=True)
        return step(opt, *args, **kwargs)

    return patched


if __name__ == "__main__":
    torch.distributed.init_process_group("gloo")  # accelerate would start it only for MULTI_CPU or a GPU
    PartialState._prepare_backend = _as_gpu_group
    PartialState.set_device = _cpu_device
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        _partition_every_parameter()
    if os.environ.get("ALIGNKD_GRADS"):
        torch.optim.AdamW.step = recording_step(torch.optim.AdamW.step, os.environ["ALIGNKD_GRADS"])
    from alignkd.cli import main

    sys.argv[0] = "alignkd"
    main()
