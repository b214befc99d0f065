"""`alignkd quickstart`: the whole pipeline on the embedded synthetic world, in minutes on 2 CPU cores.

world -> toy CLIP pre-training -> toy teacher (CE, CLIP frozen) -> student with Align-KD, and the CE-only student (same steps, same seed)
-> export the Align-KD student (ExecuTorch, ONNX, Core ML) -> evaluate the untrained student, the teacher,
both students and the runnable bundles on the synthetic suite -> profile -> `OUT/summary.json` and a table.
Every step writes into its own folder and is skipped when its output is already there, so a re-run after a
failure continues where it stopped (OUT/quickstart.json records the sizes; a re-run asking for others is
refused). `shuffled` (on by default for the teacher and both students) evaluates them once more with every
question asked about another image of its benchmark: the drop is what looking at the image is worth.
`blind` adds the question-only control (images blanked) for the named models.

    alignkd quickstart --out runs/quickstart
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignkd.errors import AlignKDError
from alignkd.models.mobilevlm import SYNTH_FOCUS_K

SHIPPED_TEACHER = Path(__file__).parent / "assets" / "synth_teacher"  # written by `alignkd quickstart --train-teacher`
RECORD = "teacher_record.json"
TEACHER_SAVE_EVERY = 250  # the teacher trains for an hour or more: a killed run continues from its last checkpoint


@dataclass
class QuickstartConfig:
    """Sizes chosen so the whole run fits in ~15 minutes on 2 cores (see docs/quickstart.md for timings)."""

    seed: int = 0
    train_images: int = 8000  # 8,100 fine-tuning records: the teacher's TEACHER_STEPS x 8 samples see each a few times
    eval_questions: int = 100  # GQA/SQA/TextVQA; MME 10 images x 2 per category; MMBench 40 (+ circular copies); POPE 60 per subset
    vision_steps: int = 1500  # toy CLIP pre-training, batch 32 (the real MobileVLM starts from a pretrained CLIP)
    vision_scenes: int = 6000  # fresh scenes it trains on (drawn from the world's generator, not its splits)
    teacher_steps: int = 2000  # batch 8; only with train_teacher (the shipped teacher was trained with this)
    # Only with train_teacher: steps of the grounding stage before the teacher's fine-tuning (quickstart_grounding.py;
    # 0 skips it), whose compact examples and alignment then stay in the fine-tuning as an auxiliary loss. Without
    # the stage the teacher does not read its image (docs/quickstart.md, "The grounding stage").
    grounding_steps: int = 800
    grounding: dict = field(default_factory=dict)  # other GroundingConfig fields (tests shrink the batches)
    student_steps: int = 300  # the Align-KD and the CE-only student alike
    batch_size: int = 8
    teacher_lr: float = 1e-3  # peak of the recipe's cosine schedule (the constant-lr probe in toy_grounding.py drifts at 1e-3)
    student_lr: float = 1e-3
    exports: tuple[tuple[str, str], ...] = (("executorch", "8da4w"), ("onnx", "fp32"), ("coreml", "fp16"))
    profile_runs: int = 3
    benches: tuple[str, ...] = ("gqa", "sqa", "textvqa", "mme", "mmbench", "pope")
    eval_max_new_tokens: int | None = 32  # trained toy models answer in a few tokens; caps runaway answers
    blind: tuple[str, ...] = ()  # models also evaluated with every image blanked (question-only control), e.g. ("teacher",)
    # Models also evaluated with every question asked about another image of its benchmark: whether they look.
    shuffled: tuple[str, ...] = ("teacher", "student CE-only", "student Align-KD")
    # False: start from a teacher trained once (`teacher`, default the shipped one) after checking its record
    # matches this world; True: pre-train the toy CLIP and train the teacher here, and write its record.
    train_teacher: bool = False
    teacher: str | None = None  # a teacher folder with teacher_record.json; None: the one shipped in alignkd/assets
    focus_k: int = SYNTH_FOCUS_K
    extra: dict = field(default_factory=dict)

    def sizes(self) -> dict:
        """What decides the content of OUT: a re-run must ask for the same, or it would reuse other models."""
        keys = ("seed", "train_images", "eval_questions", "student_steps", "batch_size", "student_lr", "focus_k", "train_teacher")
        keys += ("vision_steps", "vision_scenes", "grounding_steps", "grounding", "teacher_steps", "teacher_lr") \
            if self.train_teacher else ("teacher",)
        return {k: getattr(self, k) for k in keys}

    def teacher_record(self) -> dict:
        """What a trained teacher's record must repeat for the teacher to fit this run (besides the world's hash)."""
        keys = ("seed", "train_images", "vision_steps", "vision_scenes", "grounding_steps", "teacher_steps", "batch_size", "teacher_lr")
        return {k: getattr(self, k) for k in keys}


BLIND_SUFFIX = ", images blanked"
SHUFFLED_SUFFIX = ", images shuffled"
TRAINED = ("untrained student", "teacher", "student CE-only", "student Align-KD")  # the PyTorch models evaluated


def _check_sizes(out: Path, cfg: QuickstartConfig) -> None:
    """OUT/quickstart.json records the sizes; a re-run with others would silently reuse finished steps."""
    path = out / "quickstart.json"
    want = cfg.sizes()
    if path.is_file():
        have = json.loads(path.read_text())
        differ = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if differ:
            listed = ", ".join(f"{k}: {a} there, {b} asked" for k, (a, b) in differ.items())
            raise AlignKDError(f"{out} holds a quickstart run of other sizes ({listed}); its finished steps would be reused. "
                               f"Pass another --out, or delete {out} to start over.")
        return
    path.write_text(json.dumps(want, indent=2) + "\n")


def _world_config(cfg: QuickstartConfig):
    from alignkd.data.synth_world import SynthConfig

    n = cfg.eval_questions
    return SynthConfig(seed=cfg.seed, train_images=cfg.train_images, gqa_questions=n, sqa_questions=n, textvqa_questions=n,
                       mme_images_per_category=max(1, n // 10), mmbench_questions=max(1, (2 * n) // 5), pope_images=max(1, n // 10))


def _train_config(out: Path, world: Path, *, preset: str, teacher: Path | None, vision_from: Path, steps: int,
                  lr: float, cfg: QuickstartConfig, save_every: int | None = None, init_from: Path | None = None):
    """`init_from`: start from this checkpoint (the grounded teacher) instead of a fresh `preset`."""
    from alignkd.config import from_dict
    from alignkd.distill.config import TrainConfig

    student = {"path": str(init_from)} if init_from is not None else \
        {"preset": preset, "tokenizer": str(world / "tokenizer"), "vision_tower_from": str(vision_from)}
    data = {
        "student": student,
        "teacher": {"path": str(teacher)} if teacher is not None else None,
        "data": {"train": str(world / "train" / "finetune.json"), "image_root": str(world / "train" / "images")},
        "output_dir": str(out), "batch_size": cfg.batch_size, "epochs": 100, "max_steps": steps, "seed": cfg.seed,
        "freeze_vision_tower": True, "optim": {"lr": lr, "projector_lr": lr, "warmup_ratio": 0.05},
        "tensorboard": True, "loss": {"focus_k": cfg.focus_k}, "save_every": save_every,
    }
    return from_dict(TrainConfig, data)


def _grounding_config(cfg: QuickstartConfig):
    from alignkd.quickstart_grounding import GroundingConfig

    return GroundingConfig(**{"steps": cfg.grounding_steps, "seed": cfg.seed, **cfg.grounding})


def _train(cfg, progress: bool = True, auxiliary=None):
    """A training step of the quickstart owns its folder: continue an interrupted run from its last checkpoint,
    else replace what an earlier attempt left (the recipe refuses a used folder without one of the two)."""
    from alignkd.distill.checkpoint import latest_checkpoint
    from alignkd.distill.recipe import run

    resume = latest_checkpoint(Path(cfg.output_dir)) is not None
    return run(cfg, resume=resume, overwrite=not resume, progress=progress, auxiliary=auxiliary)


class _Steps:
    """Runs named steps with progress lines; a failing step names itself, its folder and how to continue."""

    def __init__(self, out: Path, console):
        self.out, self.console, self.times = out, console, {}

    def __call__(self, name: str, done: Path | None, fn):
        from alignkd.distill.recipe import TrainingInterrupted

        t0 = time.perf_counter()
        if done is not None and done.exists():
            self.console.print(f"[bold]{name}[/]: already done ({done}), skipped")
            return None
        self.console.rule(f"[bold]{name}")
        try:
            result = fn()
        except TrainingInterrupted as err:  # the step's training resumes from its checkpoint on the re-run (_train)
            raise AlignKDError(f"quickstart interrupted in step '{name}' ({err.kept}); the steps finished so far are kept in "
                               f"{self.out}: re-run the same command to continue from this step") from None
        except AlignKDError as err:
            raise AlignKDError(f"quickstart step '{name}' failed: {err} (re-run `alignkd quickstart --out {self.out}` to continue from this step)") from err
        except KeyboardInterrupt:  # Ctrl-C: the finished steps are on disk; say so rather than end silently
            raise AlignKDError(f"quickstart interrupted in step '{name}'; the steps finished so far are kept in {self.out}: "
                               "re-run the same command to continue from this step") from None
        except Exception as err:  # a bug or an environment problem: keep the traceback's gist, name the step
            raise AlignKDError(f"quickstart step '{name}' failed with {type(err).__name__}: {err} (re-run `alignkd quickstart --out {self.out}` "
                               "to continue from this step; run that step's own command to see the full traceback)") from err
        self.times[name] = round(time.perf_counter() - t0, 1)
        self.console.print(f"[green]{name}[/] done in {self.times[name]:.0f} s")
        return result


def quickstart(out: Path, cfg: QuickstartConfig | None = None) -> dict:
    """Run every stage on the synthetic world; returns (and writes to OUT/summary.json) the summary."""
    from rich.console import Console

    from alignkd.data.synth_world import synthesize
    from alignkd.distill.vision_pretrain import VisionPretrainConfig, pretrain_vision

    cfg = cfg or QuickstartConfig()
    out = Path(out)
    for control, names in (("blind", cfg.blind), ("shuffled", cfg.shuffled)):
        unknown = sorted(set(names) - set(TRAINED))
        if unknown:
            raise AlignKDError(f"{control} control asked for {unknown}; choose among {list(TRAINED)}")
    out.mkdir(parents=True, exist_ok=True)
    _check_sizes(out, cfg)
    console = Console(stderr=True)
    step = _Steps(out, console)
    t_start = time.perf_counter()
    world, vision, teacher = out / "world", out / "vision", out / "teacher"
    kd, ce = out / "student_alignkd", out / "student_ce"

    step("synthetic world", world / "world.json", lambda: synthesize(world, _world_config(cfg), overwrite=True))
    if cfg.train_teacher:
        teacher_ckpt = teacher / "student"
        step("pre-train the toy CLIP", vision / "report.json",
             lambda: pretrain_vision(world, vision, VisionPretrainConfig(steps=cfg.vision_steps, scenes=cfg.vision_scenes, seed=cfg.seed)))
        grounded = auxiliary = None
        if cfg.grounding_steps:
            from alignkd.quickstart_grounding import GroundingAuxiliary, ground_teacher

            grounded = out / "grounding" / "checkpoint"
            grounding = _grounding_config(cfg)
            step("ground the toy teacher (compare a question's object with the image)", out / "grounding" / "report.json",
                 lambda: ground_teacher(world, vision / "checkpoint", out / "grounding", grounding))
            auxiliary = GroundingAuxiliary(world, grounding) if grounding.keep_in_finetune else None
        step("train the toy teacher (toy CLIP frozen)" + (", grounding losses kept" if auxiliary else ""), teacher_ckpt / "config.json",
             lambda: _train(_train_config(teacher, world, preset="synth_teacher", teacher=None, vision_from=vision / "checkpoint",
                                          cfg=cfg, steps=cfg.teacher_steps, lr=cfg.teacher_lr, save_every=TEACHER_SAVE_EVERY,
                                          init_from=grounded), auxiliary=auxiliary))
    else:
        teacher_ckpt = Path(cfg.teacher) if cfg.teacher else SHIPPED_TEACHER
        check_teacher(teacher_ckpt, world, cfg)  # not a step: a mismatch is fixed by other options, not by re-running
    step("distil the student with Align-KD", kd / "student" / "config.json",
         lambda: _train(_train_config(kd, world, preset="synth_student", teacher=teacher_ckpt, cfg=cfg,
                                      vision_from=teacher_ckpt, steps=cfg.student_steps, lr=cfg.student_lr)))
    step("train the CE-only student (same steps, same seed)", ce / "student" / "config.json",
         lambda: _train(_train_config(ce, world, preset="synth_student", teacher=None, cfg=cfg,
                                      vision_from=teacher_ckpt, steps=cfg.student_steps, lr=cfg.student_lr)))
    untrained = out / "student_untrained"
    step("untrained student (the floor)", untrained / "config.json", lambda: _save_untrained(untrained, world, teacher_ckpt, cfg))

    bundles = {}
    for target, quant in cfg.exports:
        folder = out / "bundles" / f"{target}-{quant}"
        bundles[f"{target}-{quant}"] = folder
        step(f"export {target} {quant}", folder / "manifest.json", lambda t=target, q=quant, f=folder: _export(kd / "student", t, q, f))

    models = dict(zip(TRAINED, (untrained, teacher_ckpt, ce / "student", kd / "student")))
    models.update({f"Align-KD {name}": path for name, path in bundles.items() if _runnable(path)})
    evals = {}
    for name, path in models.items():
        answers = out / "eval" / name.replace(" ", "_")
        evals[name] = step(f"evaluate {name}", None, lambda p=path, a=answers: _evaluate(p, world, a, cfg))
        if name in cfg.blind:  # the same questions with every image blanked: what the language prior alone scores
            evals[name + BLIND_SUFFIX] = step(f"evaluate {name} with images blanked", None,
                                              lambda p=path, a=answers.with_name(answers.name + "_blind"): _evaluate(p, world, a, cfg, blind=True))
        if name in cfg.shuffled:  # the same questions about other images of the benchmark: what looking is worth
            evals[name + SHUFFLED_SUFFIX] = step(f"evaluate {name} with images shuffled", None,
                                                 lambda p=path, a=answers.with_name(answers.name + "_shuffled"): _evaluate(p, world, a, cfg, shuffled=True))
    profiles = {}
    for name, path in {"student Align-KD (PyTorch)": kd / "student", **{f"Align-KD {n}": p for n, p in bundles.items() if _runnable(p)}}.items():
        plot = out / "plots" / f"latency-{name.replace(' ', '_').replace('(', '').replace(')', '')}.png"
        profiles[name] = step(f"profile {name}", None, lambda p=path, pl=plot: _profile(p, pl, cfg))

    summary = _summary(out, cfg, evals, profiles, bundles, step.times, time.perf_counter() - t_start)
    summary["teacher"] = str(teacher_ckpt)
    if cfg.train_teacher:  # the record that lets later runs start from this teacher (and refuse it on another world)
        write_teacher_record(teacher_ckpt, world, cfg, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def world_hash(world: Path) -> str:
    """sha256 over what decides a teacher's training data: world.json, the fine-tuning records and the tokenizer."""
    import hashlib

    h = hashlib.sha256()
    for rel in ("world.json", "train/finetune.json", "tokenizer/tokenizer.model"):
        h.update(rel.encode() + b"\0" + (world / rel).read_bytes())
    return h.hexdigest()


def _train_seconds(path: Path) -> float | None:
    """The recipe's own training time (a re-run that skipped the training step still knows it)."""
    return round(json.loads(path.read_text())["seconds"], 1) if path.is_file() else None


def _scores_only(evaluation: dict | None) -> dict | None:
    return {k: v for k, v in evaluation.items() if k != "answers"} if evaluation else None


def pope_subsets(world: Path, evaluation: dict) -> dict:
    """{subset: {"f1", "yes_ratio"}} of one evaluation's POPE answers: whether a model answers yes to everything."""
    from alignkd.eval.pope import BENCHMARK

    score = BENCHMARK.score_file(world / "eval", Path(evaluation["answers"]) / "pope.jsonl")
    return {name: {"f1": round(m["f1"], 1), "yes_ratio": round(m["yes_ratio"], 1)} for name, m in score["subsets"].items()}


def write_teacher_record(teacher: Path, world: Path, cfg: QuickstartConfig, summary: dict) -> dict:
    """teacher_record.json next to the teacher's weights: how it was trained, on what, and what it scored."""
    sizes = cfg.teacher_record()
    command = " ".join(["alignkd quickstart --train-teacher", *(f"--{k.replace('_', '-')} {v}" for k, v in sizes.items()
                                                                 if k in ("seed", "vision_steps", "grounding_steps", "teacher_steps"))])
    if cfg.grounding_steps:  # every setting of the grounding stage and of what its fine-tuning kept
        sizes["grounding"] = asdict(_grounding_config(cfg))
    record = {"command": command, **sizes, "preset": "synth_teacher", "world_hash": world_hash(world),
              "train_seconds": _train_seconds(teacher.parent / "train_summary.json"),
              "scores": {name: _scores_only(summary["accuracy"][name]) for name in ("teacher", "teacher" + SHUFFLED_SUFFIX)
                         if summary["accuracy"].get(name)},
              "looking": summary["looking"].get("teacher"),
              "pope_subsets": pope_subsets(world, summary["accuracy"]["teacher"]) if "pope" in cfg.benches else None,
              "ce_student": _scores_only(summary["accuracy"].get("student CE-only"))}
    (teacher / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def pack_teacher(src: Path, dst: Path = SHIPPED_TEACHER) -> Path:
    """Copy a --train-teacher teacher (OUT/teacher/student) to `dst` with fp16 weights (half the bytes: a few MB) and
    its record, noting the rounding in it. How the shipped teacher was made:
    `python -c "from alignkd.quickstart import pack_teacher; pack_teacher(Path('OUT/teacher/student'))"`."""
    import shutil

    import torch

    from alignkd.models.checkpoint import load_checkpoint, save_checkpoint

    record = json.loads((src / RECORD).read_text())
    model, tok = load_checkpoint(src)
    if dst.exists():
        shutil.rmtree(dst)
    save_checkpoint(model, tok, dst, dtype=torch.float16)
    record["stored"] = "fp16 weights (loaded as fp32); the scores are the fp32 teacher's before rounding"
    (dst / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return dst


def check_teacher(teacher: Path, world: Path, cfg: QuickstartConfig) -> dict:
    """Refuse a teacher trained on another world (or with other sizes) in one sentence; return its record."""
    if not (teacher / "config.json").is_file():
        raise AlignKDError(f"the teacher {teacher} is not a checkpoint folder (no config.json); pass a folder written by "
                           "`alignkd quickstart --train-teacher` (OUT/teacher/student), or --train-teacher to train one")
    if not (teacher / RECORD).is_file():
        raise AlignKDError(f"the teacher {teacher} has no {RECORD}, so nothing says which world it was trained on; "
                           "train one with `alignkd quickstart --train-teacher`")
    record = json.loads((teacher / RECORD).read_text())
    want = {**cfg.teacher_record(), "world_hash": world_hash(world)}
    if record.get("world_hash") != want["world_hash"] or record.get("seed") != cfg.seed or record.get("train_images") != cfg.train_images:
        differ = ", ".join(f"{k}: {record.get(k)} in the record, {want[k]} here" for k in ("seed", "train_images", "world_hash")
                           if record.get(k) != want[k])
        raise AlignKDError(f"the teacher {teacher} was trained on another synthetic world ({differ}); use the world it was "
                           f"trained on (`{record.get('command', 'its record')}`) or train a teacher for this one with "
                           "`alignkd quickstart --train-teacher`")
    return record


def _save_untrained(folder: Path, world: Path, teacher: Path, cfg: QuickstartConfig) -> None:
    import torch

    from alignkd.distill.checkpoint import load_spec
    from alignkd.distill.config import ModelSpec
    from alignkd.models.checkpoint import save_checkpoint

    torch.manual_seed(cfg.seed)
    model, tok = load_spec(ModelSpec(preset="synth_student", tokenizer=str(world / "tokenizer"), vision_tower_from=str(teacher)))
    save_checkpoint(model, tok, folder)


def _export(checkpoint: Path, target: str, quant: str, folder: Path) -> None:
    from alignkd.export.api import export_bundle

    export_bundle(checkpoint, target, quant, folder, overwrite=True, max_seq_len=512)


def _runnable(bundle: Path) -> bool:
    """Core ML bundles are converted here but run only on macOS."""
    import platform

    if not (bundle / "manifest.json").is_file():
        return False
    target = json.loads((bundle / "manifest.json").read_text()).get("target")
    return target != "coreml" or platform.system() == "Darwin"


def _evaluate(model: Path, world: Path, answers: Path, cfg: QuickstartConfig, blind: bool = False, shuffled: bool = False) -> dict:
    from alignkd.eval.run import evaluate

    result = evaluate(model, list(cfg.benches), world / "eval", answers, max_new_tokens=cfg.eval_max_new_tokens, blind=blind,
                      shuffled=shuffled)
    return {"table": result["table"], "average": result["average"], "answers": str(answers)}


def _profile(model: Path, plot: Path, cfg: QuickstartConfig) -> dict:
    from alignkd.runtime.profile import profile

    plot.parent.mkdir(parents=True, exist_ok=True)
    r = profile(model, runs=cfg.profile_runs, warmup=1, max_new_tokens=32, plot=plot)
    keys = ("load_s", "vision_encode_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "size_mb")
    return {k: r.get(k) for k in keys} | {"plot": str(plot)}


def _differing(a: dict, b: dict, benches) -> tuple[int, int]:
    """(answers that differ, questions compared) between two evaluations' answer files, over all benchmarks."""
    from alignkd.eval.run import answer_agreement

    same = n = 0
    for bench in benches:
        s, k = answer_agreement(str(Path(a["answers"]) / f"{bench}.jsonl"), str(Path(b["answers"]) / f"{bench}.jsonl"))
        same, n = same + s, n + k
    return n - same, n


def _summary(out: Path, cfg: QuickstartConfig, evals: dict, profiles: dict, bundles: dict, times: dict, total: float) -> dict:
    from alignkd.eval.run import COLUMNS

    kd, ce = evals.get("student Align-KD"), evals.get("student CE-only")
    verdict = None
    if kd and ce and kd["average"] is not None and ce["average"] is not None:
        delta = kd["average"] - ce["average"]
        differ, n = _differing(kd, ce, cfg.benches)
        verdict = (f"Align-KD {'beats' if delta > 0 else 'does not beat'} the CE-only student on this world: "
                   f"average {kd['average']:.1f} vs {ce['average']:.1f} ({delta:+.1f}); their answers differ on {differ} of {n} questions")
    looking = {}  # what each model's own image is worth: its average minus the same model's with shuffled images
    for name in TRAINED:
        own, other = evals.get(name), evals.get(name + SHUFFLED_SUFFIX)
        if own and other and own["average"] is not None and other["average"] is not None:
            changed, n = _differing(own, other, cfg.benches)
            looking[name] = {"own_images": own["average"], "shuffled_images": other["average"],
                             "gain": round(own["average"] - other["average"], 2), "answers_changed": changed, "questions": n}
    return {
        "columns": [COLUMNS[b] for b in cfg.benches] + ["Avg"],
        "accuracy": evals,
        "verdict": verdict,
        "looking": looking,
        "profile": profiles,
        "bundles": {name: str(path) for name, path in bundles.items()},
        "step_seconds": times,
        "total_seconds": round(total, 1),
        "out": str(out),
    }


def format_summary(summary: dict) -> str:
    """The one table the quickstart prints: accuracy per model, then latency per runnable artefact."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    acc = Table(title="Accuracy on the synthetic suite (paper protocol; Avg uses MME-P/20)")
    acc.add_column("model")
    for col in summary["columns"]:
        acc.add_column(col, justify="right")
    for name, ev in summary["accuracy"].items():
        if ev is None:
            continue
        row = [ev["table"].get(col) for col in summary["columns"][:-1]]
        acc.add_row(name, *[f"{v:.1f}" if v is not None else "-" for v in row],
                    f"{ev['average']:.1f}" if ev["average"] is not None else "-")
    perf = Table(title="Latency on this machine (median)")
    for col in ("artefact", "size MB", "load s", "vision ms", "TTFT s", "prefill tok/s", "decode tok/s", "peak RSS MB"):
        perf.add_column(col, justify="right" if col != "artefact" else "left")
    for name, p in summary["profile"].items():
        if p is None:
            continue
        perf.add_row(name, f"{p['size_mb']:.1f}", f"{p['load_s']:.2f}", f"{1000 * p['vision_encode_s']:.0f}", f"{p['ttft_s']:.3f}",
                     f"{p['prefill_tok_s']:.0f}", f"{p['decode_tok_s']:.0f}", f"{p['peak_rss_mb']:.0f}")
    buf = StringIO()
    console = Console(file=buf, width=140)
    console.print(acc)
    console.print(perf)
    if summary.get("verdict"):
        console.print(summary["verdict"])
    for name, row in summary.get("looking", {}).items():
        console.print(f"{name}: average {row['own_images']:.1f} with its own images, {row['shuffled_images']:.1f} with shuffled ones "
                      f"({row['gain']:+.1f}: what looking at the image is worth); another image changes {row['answers_changed']} "
                      f"of its {row['questions']} answers")
    console.print(f"total {summary['total_seconds']:.0f} s; summary.json, plots/ and every model in {summary['out']}")
    return buf.getvalue()
