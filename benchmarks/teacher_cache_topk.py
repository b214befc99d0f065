"""The KD-loss error of the teacher cache's top-K + tail bucket against the full-vocabulary online loss.

The cache keeps, per KD position, the teacher's K largest log-probabilities (fp32) and the log of the mass left
over (`alignkd.distill.teacher_cache.teacher_topk`); training compares it with the student's distribution over
the same K tokens plus its own tail (`alignkd.distill.losses.topk_kl`). This script measures, on the synthetic
world, how far that bucketed KL is from the full KL the online run computes, and how far its gradient with
respect to the student's logits points from the online one. A random teacher is nearly uniform (a worst case
for top-K), so the teacher is first trained briefly with CE (`--teacher-steps`); the student is the fresh one
distillation starts from.

    python benchmarks/teacher_cache_topk.py                       # ~3 minutes on 2 cores
    python benchmarks/teacher_cache_topk.py --teacher-steps 0     # the random-teacher worst case
    python benchmarks/teacher_cache_topk.py --teacher runs/teacher/student --world runs/world   # the quickstart's teacher

Prints one JSON object: per K, the reverse-KL and forward-KL losses (online and cached), the relative error,
the cosine between the gradients, and the teacher's mean tail mass at the KD positions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def _world(out: Path, images: int) -> Path:
    from alignkd.data.synth_world import SynthConfig, synthesize

    synthesize(out, SynthConfig(image_size=96, train_images=images, text_only_records=10), overwrite=True)
    return out


def _teacher(world: Path, out: Path, steps: int, seed: int):
    """A synth_teacher trained `steps` CE steps (0: random), as a checkpoint folder."""
    import torch

    from alignkd.config import from_dict
    from alignkd.data.tokenizer import Tokenizer
    from alignkd.distill.config import TrainConfig
    from alignkd.distill.recipe import run
    from alignkd.models.checkpoint import save_checkpoint
    from alignkd.models.mobilevlm import MobileVLM, get_preset

    if steps == 0:
        tok = Tokenizer.from_folder(world / "tokenizer")
        cfg = get_preset("synth_teacher")
        cfg.llm.vocab_size = tok.vocab_size
        torch.manual_seed(seed)
        return save_checkpoint(MobileVLM(cfg), tok, out / "student")
    cfg = from_dict(TrainConfig, {
        "student": {"preset": "synth_teacher", "tokenizer": str(world / "tokenizer")},
        "data": {"train": str(world / "train" / "finetune.json"), "image_root": str(world / "train" / "images")},
        "output_dir": str(out), "batch_size": 8, "max_steps": steps, "tensorboard": False, "seed": seed,
        "optim": {"lr": 1e-3, "warmup_ratio": 0.05},
    })
    return run(cfg, progress=False) / "student"


def measure(world: Path, teacher_ckpt: Path, ks: list[int], records: int, batch_size: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    from alignkd.data.dataset import Collator, LlavaDataset
    from alignkd.distill.checkpoint import load_spec
    from alignkd.distill.config import ModelSpec
    from alignkd.distill.losses import forward_kl, response_mask, reverse_kl, topk_kl
    from alignkd.distill.teacher_cache import teacher_topk

    torch.manual_seed(seed)
    teacher, tok = load_spec(ModelSpec(path=str(teacher_ckpt)), train=False)
    student, _ = load_spec(ModelSpec(preset="synth_student", tokenizer=str(world / "tokenizer"),
                                     vision_tower_from=str(teacher_ckpt)), train=False)
    ds = LlavaDataset(world / "train" / "finetune.json", world / "train" / "images", tok, student.config.image)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:records].tolist()
    collate = Collator(tok.pad_id)
    sums = {k: {"rkl": 0.0, "fkl": 0.0, "cos_r": 0.0, "cos_f": 0.0, "tail": 0.0} for k in ks}
    online = {"rkl": 0.0, "fkl": 0.0}
    rows = 0
    for start in range(0, len(order), batch_size):
        batch = collate([ds[i] for i in order[start:start + batch_size]])
        if batch["input_ids"] is None:
            continue
        with torch.no_grad():
            t_logits = teacher(batch["input_ids"], batch["images"], batch["attention_mask"]).logits
            s_out = student(batch["input_ids"], batch["images"], batch["attention_mask"], batch["labels"])
        mask = response_mask(s_out.spliced.labels)
        n = int(mask.sum())
        s_logits = s_out.logits.detach().requires_grad_(True)
        grads = {}
        for name, fn in (("rkl", reverse_kl), ("fkl", forward_kl)):
            loss = fn(s_logits, t_logits, mask)
            (grads[name],) = torch.autograd.grad(loss, s_logits)
            online[name] += float(loss.detach()) * n
        for k in ks:
            idx, logp, tail = teacher_topk(t_logits[mask], k, 1.0)
            sums[k]["tail"] += float(tail.exp().sum())
            for name, reverse in (("rkl", True), ("fkl", False)):
                loss = topk_kl(s_logits, mask, idx, logp, tail, 1.0, reverse)
                (g,) = torch.autograd.grad(loss, s_logits)
                sums[k][name] += float(loss.detach()) * n
                sums[k]["cos_" + name[0]] += float(F.cosine_similarity(g[mask], grads[name][mask], dim=-1).sum())
        rows += n
    online = {name: v / rows for name, v in online.items()}
    result = {"kd_positions": rows, "vocab": teacher.config.llm.vocab_size, "online": online, "top_k": {}}
    for k in ks:
        s = {name: v / rows for name, v in sums[k].items()}
        result["top_k"][k] = {
            "reverse_kl": s["rkl"], "reverse_rel_error": (s["rkl"] - online["rkl"]) / online["rkl"],
            "reverse_grad_cosine": s["cos_r"],
            "forward_kl": s["fkl"], "forward_rel_error": (s["fkl"] - online["fkl"]) / online["fkl"],
            "forward_grad_cosine": s["cos_f"], "teacher_tail_mass": s["tail"],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-steps", type=int, default=300, help="CE steps of the toy teacher (0: random).")
    parser.add_argument("--ks", default="8,16,32,64,128,256")
    parser.add_argument("--records", type=int, default=128, help="Training records the losses are averaged over.")
    parser.add_argument("--images", type=int, default=400, help="Training images of the synthetic world.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", type=Path, help="A trained teacher checkpoint to measure instead (needs --world).")
    parser.add_argument("--world", type=Path, help="The synthetic world that teacher was trained on.")
    args = parser.parse_args()
    if (args.teacher is None) != (args.world is None):
        parser.error("--teacher and --world go together")
    ks = [int(k) for k in args.ks.split(",")]
    if args.teacher is not None:
        result = {"teacher": str(args.teacher), **measure(args.world, args.teacher, ks, args.records, 8, args.seed)}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            world = _world(Path(tmp) / "world", args.images)
            teacher = _teacher(world, Path(tmp) / "teacher", args.teacher_steps, args.seed)
            result = {"teacher_steps": args.teacher_steps, **measure(world, teacher, ks, args.records, 8, args.seed)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
