"""What the distillation terms do to a student that starts grounded: a probe for issue 16's ablations.

The quickstart's students start from a fresh `synth_student` and, in 300 (or 1,000) steps, learn to answer from
the language prior alone, with or without the teacher (docs/quickstart.md). A real student does not start from
nothing: MobileVLM's starts from a pre-trained LLM and projector. This probe gives the toy student the
teacher's grounding stage (`alignkd.quickstart_grounding.ground_teacher` with the student preset, on the shipped
teacher's frozen toy CLIP), then fine-tunes it from there on the world's records, as the quickstart's students
are fine-tuned (300 steps, batch 8, lr 1e-3), once per row: CE only, CE + reverse-KL logit KD, + the layer-0
attention term, and full Align-KD (the recipe's defaults). Each model answers the six benchmarks with its own
and with shuffled images.

Prints one JSON object (also OUT/report.json): per model its average, table, and the same with shuffled images.
Finished steps are reused (the grounding's report.json, each student's config.json, answers of the same model).

    python benchmarks/toy_student_start.py --out runs/student_start                  # ~10 min on 2 cores
    python benchmarks/toy_student_start.py --out runs/student_start --grounding-steps 400 --student-steps 1000
    python benchmarks/toy_student_start.py --out runs/student_keep --keep-grounding     # the teacher's auxiliary too
    python benchmarks/toy_student_start.py --out runs/student_keep --keep-grounding --seeds 0 1 2

`--keep-grounding` adds the grounding stage's compact examples and alignment to every fine-tuning step of every
row (`GroundingAuxiliary`, as the shipped teacher's fine-tuning does), so that, like the teacher, the students
keep what the stage taught; the rows still differ only in the distillation terms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# row -> loss weights changed from the recipe's defaults (CE, KD, attention, vision-all 1; vision-focus 0.1)
ROWS = {
    "CE only": None,
    "CE + reverse-KL KD": {"attn": 0.0, "vision_all": 0.0, "vision_focus": 0.0},
    "+ attention": {"vision_all": 0.0, "vision_focus": 0.0},
    "Align-KD": {},
}


def main(argv=None) -> dict:
    from alignkd.data.synth_world import synthesize
    from alignkd.quickstart import SHIPPED_TEACHER, QuickstartConfig, _evaluate, _train, _train_config, _world_config, check_teacher
    from alignkd.reproduce import t_interval
    from alignkd.quickstart_grounding import GroundingAuxiliary, GroundingConfig, ground_teacher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--grounding-steps", type=int, default=800)
    ap.add_argument("--student-steps", type=int, default=300)
    ap.add_argument("--keep-grounding", action="store_true", help="the grounding losses in every row's fine-tuning too")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="student seeds (data order); 2+ adds mean, std and "
                    "paired 95%% intervals against the row above")
    ap.add_argument("--world", type=Path, help="the quickstart's default world (written into OUT/world when not given)")
    args = ap.parse_args(argv)

    cfg = QuickstartConfig(student_steps=args.student_steps)
    out, t0 = args.out, time.perf_counter()
    # Students are reused by folder: refuse a folder whose students were trained another way.
    settings, record = {"student_steps": args.student_steps, "keep_grounding": args.keep_grounding}, out / "students.json"
    if record.is_file() and json.loads(record.read_text()) != settings:
        raise SystemExit(f"{out} holds students trained with {json.loads(record.read_text())}, not {settings}; pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings) + "\n")
    world = args.world or out / "world"
    if not (world / "world.json").is_file():
        synthesize(world, _world_config(cfg), overwrite=True)
    check_teacher(SHIPPED_TEACHER, world, cfg)
    grounded = out / "grounding"
    if not (grounded / "report.json").is_file():
        ground_teacher(world, SHIPPED_TEACHER, grounded, GroundingConfig(steps=args.grounding_steps), preset="synth_student")
    report = json.loads((grounded / "report.json").read_text())
    if report["config"]["steps"] != args.grounding_steps:
        raise SystemExit(f"{grounded} holds a grounding of {report['config']['steps']} steps; pass another --out")

    def scores(model: Path, name: str) -> dict:
        own = _evaluate(model, world, out / "eval" / name, cfg)
        shuffled = _evaluate(model, world, out / "eval" / f"{name}_shuffled", cfg, shuffled=True)
        return {"average": round(own["average"], 2), "table": {k: round(v, 1) for k, v in own["table"].items()},
                "shuffled_average": round(shuffled["average"], 2), "gain": round(own["average"] - shuffled["average"], 2),
                "shuffled_table": {k: round(v, 1) for k, v in shuffled["table"].items()}}

    models = {"grounded start": scores(grounded / "checkpoint", "start")}
    per_seed = {row: [] for row in ROWS}
    for seed in args.seeds:  # seed 0 keeps the folder names of the one-seed probe, so its students are reused
        tag = "" if seed == 0 else f"_s{seed}"
        for row, weights in ROWS.items():
            folder = out / (row.replace(" ", "_").replace("+", "plus") + tag)
            train = _train_config(folder, world, preset="synth_student", teacher=None if weights is None else SHIPPED_TEACHER,
                                  cfg=replace(cfg, seed=seed), vision_from=SHIPPED_TEACHER, steps=args.student_steps,
                                  lr=cfg.student_lr, init_from=grounded / "checkpoint")
            for term, w in (weights or {}).items():
                setattr(train.loss.weights, term, w)
            if not (folder / "student" / "config.json").is_file():
                aux = GroundingAuxiliary(world, GroundingConfig(seed=seed)) if args.keep_grounding else None
                _train(train, progress=False, auxiliary=aux)
            score = scores(folder / "student", folder.name)
            if seed == args.seeds[0]:
                models[row] = score
            per_seed[row].append({"seed": seed, "average": score["average"], "gain": score["gain"],
                                  "POPE": score["table"]["POPE"]})
    seeds = {}
    if len(args.seeds) > 1:
        previous = None
        for row, runs in per_seed.items():
            avgs = [r["average"] for r in runs]
            seeds[row] = {"per_seed": runs, "mean": round(statistics.fmean(avgs), 2), "std": round(statistics.stdev(avgs), 2),
                          "gain_mean": round(statistics.fmean(r["gain"] for r in runs), 2)}
            if previous is not None:  # paired over seeds against the row above, as alignkd reproduce does
                d, lo, hi = t_interval([a - b for a, b in zip(avgs, (r["average"] for r in per_seed[previous]))])
                seeds[row]["versus"] = {"row": previous, "diff": round(d, 2), "low": round(lo, 2), "high": round(hi, 2),
                                        "separated": lo > 0 or hi < 0}
            previous = row
    result = {"grounding_steps": args.grounding_steps, "student_steps": args.student_steps, "keep_grounding": args.keep_grounding,
              "seeds": args.seeds, "by_seed": seeds,
              "grounding_curve": [(c["step"], c["existence_accuracy"]) for c in report["curve"]],
              "models": models, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
