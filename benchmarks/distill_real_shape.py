"""One training step at the paper's real shapes, random weights: s/step and peak GPU memory, next to the plan.

7B teacher (bf16), 1.7B student (fp32 weights, bf16 autocast, as `paper_7b_to_1_7b_stage1.yaml`), one image +
2048 embedded tokens, batch 1: CE only, logit KD and Align-KD, with and without gradient checkpointing, DDP on
one GPU and FSDP (FSDP2 `fully_shard`, one process, bf16 parameters). Each row also carries what
`alignkd distill --plan` predicts for it (`planned_gib`, the CUDA-context reserve left out), so a GPU run
validates the plan. Prints one JSON object. Needs a CUDA GPU with about 55 GB free (DDP, Align-KD, no
checkpointing); `--tiny` runs the same code on CPU with the synthetic presets, to check the script end to end.

    python benchmarks/distill_real_shape.py                   # on a GPU, ~5 minutes
    python benchmarks/distill_real_shape.py --tiny --steps 1  # CPU smoke run (tests/test_benchmark_scripts.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

VARIANTS = ("ce", "logit_kd", "alignkd")
STRATEGIES = ("ddp", "fsdp")
GIB = 2**30


def _config(variant: str, checkpointing: bool, tiny: bool, seq: int):
    """The TrainConfig the plan reads: the paper's stage-1 settings on presets (no file is needed)."""
    from alignkd.config import from_dict
    from alignkd.distill.config import TrainConfig

    student, teacher = ("synth_student", "synth_teacher") if tiny else ("mobilevlm_v2_1_7b", "mobilevlm_v2_7b")
    off = {"attn": 0.0, "vision_all": 0.0, "vision_focus": 0.0}
    weights = {"kd": 0.0, **off} if variant == "ce" else off if variant == "logit_kd" else {}
    data = {"student": {"preset": student, "tokenizer": "none"}, "data": {"train": "none", "max_length": str(seq)},
            "mixed_precision": "bf16", "teacher_dtype": "bfloat16", "gradient_checkpointing": checkpointing,
            "loss": {"weights": weights}}
    if variant != "ce":
        data["teacher"] = {"preset": teacher, "tokenizer": "none"}
    return from_dict(TrainConfig, data)


def _wrap(module, strategy: str, device):
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if strategy == "ddp":
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in module.student.llm.model.layers:
        fully_shard(layer, mp_policy=policy)
    return fully_shard(module, mp_policy=policy)


def _static_bytes(module, teacher, optimizer) -> int:
    tensors = [p for p in module.parameters()] + [p.grad for p in module.parameters() if p.grad is not None]
    tensors += [t for s in optimizer.state.values() for t in s.values() if hasattr(t, "numel")]
    tensors += list(teacher.parameters()) if teacher is not None else []
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(variant: str, checkpointing: bool, strategy: str, tiny: bool, seq: int, steps: int, device) -> dict:
    """Build, wrap, one warm-up step, then `steps` timed steps; peak memory of the last one."""
    import torch

    from alignkd.distill.memory import PeakMemory, build_step, synthetic_batch, train_step
    from alignkd.distill.plan import RESERVE, plan
    from alignkd.models.mobilevlm import get_preset

    cfg = _config(variant, checkpointing, tiny, seq)
    planned = plan(cfg, gpus=1)["strategies"][strategy]["checkpointing" if checkpointing else "no_checkpointing"]
    s_cfg = get_preset(cfg.student.preset)
    t_cfg = get_preset(cfg.teacher.preset) if cfg.distill else None
    module, teacher, _ = build_step(s_cfg, t_cfg, cfg.loss, teacher_dtype=torch.bfloat16, checkpointing=checkpointing,
                                    device=device)
    module = _wrap(module, strategy, device)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    batch = {k: v.to(device) for k, v in synthetic_batch(s_cfg.llm.vocab_size, s_cfg.image.size, seq,
                                                           s_cfg.num_image_tokens).items()}
    step = lambda: train_step(module, teacher, optimizer, batch, cfg.loss, mixed=True, set_to_none=False)  # noqa: E731
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()  # AdamW state, gradients, allocator and kernels warm
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated()
    else:
        with PeakMemory() as mem:
            step()
        peak = _static_bytes(module, teacher, optimizer) + mem.peak
    predicted = planned["total"] - RESERVE
    return {"variant": variant, "checkpointing": checkpointing, "strategy": strategy, "s_per_step": seconds,
            "peak_gib": peak / GIB, "planned_gib": predicted / GIB, "planned_over_measured": predicted / peak}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, synthetic presets: a smoke run of the same code")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up step)")
    ap.add_argument("--seq", type=int, default=None, help="embedded tokens per sample (default 2048; --tiny 200)")
    ap.add_argument("--only", default=None, help="comma-separated variants (ce, logit_kd, alignkd)")
    args = ap.parse_args(argv)
    import torch
    import torch.distributed as dist

    if not args.tiny and not torch.cuda.is_available():
        print("error: distill_real_shape.py needs a CUDA GPU and none is visible; run it on one, or pass --tiny for the "
              "CPU smoke run", file=sys.stderr)
        raise SystemExit(2)
    device = torch.device("cuda", 0) if not args.tiny else torch.device("cpu")
    seq = args.seq or (200 if args.tiny else 2048)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    rows = []
    try:
        for variant in (args.only.split(",") if args.only else VARIANTS):
            for strategy in STRATEGIES:
                for ckpt in (False, True):
                    try:
                        rows.append(measure(variant, ckpt, strategy, args.tiny, seq, args.steps, device))
                    except Exception as err:  # one row failing (e.g. out of memory) must not lose the others
                        rows.append({"variant": variant, "checkpointing": ckpt, "strategy": strategy,
                                     "error": f"{type(err).__name__}: {str(err)[:300]}"})
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    finally:
        dist.destroy_process_group()
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    result = {"device": gpu, "date": time.strftime("%Y-%m-%d"), "seq": seq, "batch": 1, "tiny": args.tiny,
              "torch": torch.__version__, "rows": rows}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
