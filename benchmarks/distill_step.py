"""Cost of one training step: CE only vs logit KD only vs full Align-KD, on the same teacher/student pair.

Prints one JSON object: `ce`, `logit_kd`, `alignkd` (each `s_per_step`, `peak_mem_mb`), their ratios, and
`attention_capture`: the teacher forward's peak memory with our layer-0 capture against
`output_attentions=True` (eager attention in every layer, every map materialised: the released code).
Each measurement runs in its own process so peak RSS is clean; variants are interleaved over rounds and the
median taken, so background load hits all of them alike.

    python benchmarks/distill_step.py                 # ~2-3 minutes on 2 cores
    python benchmarks/distill_step.py --rounds 1 --steps 2 --small   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _pair(small: bool):
    import torch

    from alignkd.models.mobilevlm import MobileVLM, MobileVLMConfig, _llama, tiny_clip
    from alignkd.data.image import ImageConfig

    vocab = 4096
    # teacher twice as wide with twice the heads and layers, as 7B vs 1.7B; the shared tower is a 96 px CLIP in
    # 4 px patches: a 24x24 grid pooled 2x2, as the real CLIP-L/336 is (the synthetic presets' own tower has 8 px)
    vision = tiny_clip(image_size=96, patch=4, hidden=64, layers=3, heads=4)
    t_dims, s_dims = ((256, 4, 8), (128, 2, 4)) if small else ((768, 8, 16), (384, 4, 8))
    torch.manual_seed(0)
    make = lambda d, layers, heads: MobileVLM(MobileVLMConfig(llm=_llama(vocab, d, layers, heads, 2 * d, 1e-6),
                                                              vision=vision, image=ImageConfig(size=96)))
    return make(t_dims[0], t_dims[1] * 2, t_dims[2]), make(s_dims[0], s_dims[1] * 2, s_dims[2]), vocab


def _batch(vocab: int, batch: int = 4, text: int = 120):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, text), generator=g)
    ids[:, 0] = 1
    ids[:, 30] = -200  # image after a 30-token "system prompt", as in the v1 template
    labels = ids.clone()
    labels[:, :60] = -100
    labels[labels == -200] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
            "images": torch.randn(batch, 3, 96, 96, generator=g)}


def measure(variant: str, steps: int, small: bool) -> dict:
    """One process, one variant: mean seconds per optimizer step after a warm-up step, and peak RSS."""
    import torch

    from alignkd.distill.config import LossConfig
    from alignkd.distill.objective import AlignKDModule, run_teacher
    from alignkd.runtime.profile import _peak_rss_mb, _reset_peak_rss

    torch.set_num_threads(2)
    teacher, student, vocab = _pair(small)
    teacher.eval().requires_grad_(False)
    batch = _batch(vocab)
    if variant == "attn_capture":
        _reset_peak_rss()
        base = _peak_rss_mb()
        run_teacher(teacher, batch, LossConfig())
        return {"peak_mem_mb": _peak_rss_mb(), "baseline_mb": base}
    if variant == "output_attentions":
        teacher.llm.set_attn_implementation("eager")
        _reset_peak_rss()
        base = _peak_rss_mb()
        with torch.no_grad():
            out = teacher(batch["input_ids"], batch["images"], batch["attention_mask"], output_attentions=True)
            _ = out.attentions[0]
        return {"peak_mem_mb": _peak_rss_mb(), "baseline_mb": base}
    loss = LossConfig()
    if variant == "logit_kd":
        loss.weights.attn = loss.weights.vision_all = loss.weights.vision_focus = 0.0
    distill = variant != "ce"
    module = AlignKDModule(student, loss, teacher.config.num_heads if distill else None,
                           teacher.config.hidden_size if distill else None).train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step():
        t_out = run_teacher(teacher, batch, loss) if distill else None
        module(batch, t_out)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, optimizer state
    _reset_peak_rss()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"s_per_step": (time.perf_counter() - t0) / steps, "peak_mem_mb": _peak_rss_mb()}


def _spawn(variant: str, steps: int, small: bool) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(steps)] + (["--small"] if small else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="a smaller pair, for a quick look")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.steps, args.small)))
        return
    runs = {v: [] for v in ("ce", "logit_kd", "alignkd")}
    for _ in range(args.rounds):
        for variant in runs:
            runs[variant].append(_spawn(variant, args.steps, args.small))
    result = {v: {"s_per_step": statistics.median(r["s_per_step"] for r in rs),
                  "peak_mem_mb": statistics.median(r["peak_mem_mb"] for r in rs),
                  "runs": rs} for v, rs in runs.items()}
    result["ratios_vs_logit_kd"] = {
        "time": result["alignkd"]["s_per_step"] / result["logit_kd"]["s_per_step"],
        "peak_mem": result["alignkd"]["peak_mem_mb"] / result["logit_kd"]["peak_mem_mb"],
        "targets": {"time": 1.10, "peak_mem": 1.05},
    }
    capture, full = _spawn("attn_capture", 1, args.small), _spawn("output_attentions", 1, args.small)
    result["attention_capture"] = {"teacher_forward_peak_mb_layer0_capture": capture["peak_mem_mb"],
                                   "teacher_forward_peak_mb_output_attentions": full["peak_mem_mb"],
                                   "baseline_mb": capture["baseline_mb"]}
    result["setup"] = {"steps": args.steps, "rounds": args.rounds, "small": args.small, "batch": 4,
                       "text_tokens": 120, "image_tokens": 144}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
