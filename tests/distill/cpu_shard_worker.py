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
    if os.environ.get("ALIGNKD_GRADS"):
        torch.optim.AdamW.step = recording_step(torch.optim.AdamW.step, os.environ["ALIGNKD_GRADS"])
    from alignkd.cli import main

    sys.argv[0] = "alignkd"
    main()
