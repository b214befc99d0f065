"""`alignkd reproduce`: the paper's ablations (Tables 3 and 4, and what v1 leaves out) in miniature.

On the quickstart's synthetic world and from its teacher (the shipped one, checked against the world by its
record), every row trains the toy student with one loss setting for each seed, evaluates it on the six
benchmarks with its own images and with shuffled ones, and the rows are compared seed by seed: mean and
standard deviation per benchmark and on the average, and the paired difference of the average against the
row it is compared with, with a 95% t-interval over seeds. The protocol is in docs/reproduction.md, written
before the numbers; the command writes the table and a plot into it.

    alignkd reproduce --quick          # 2 seeds, short students: a smoke run of a few minutes
    alignkd reproduce --json           # the full protocol; prints {"rows": [...]}
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from alignkd.errors import AlignKDError

ALIGNKD = {"weights": {"kd": 1.0, "attn": 1.0, "vision_all": 1.0, "vision_focus": 0.1}}  # the paper's defaults
OFF = {"kd": 0.0, "attn": 0.0, "vision_all": 0.0, "vision_focus": 0.0}


@dataclass(frozen=True)
class Row:
    """One row: a loss setting (None: the CE-only student, no teacher) and the row it is compared with."""

    name: str
    loss: dict | None
    versus: str | None = None
    note: str = ""


def _w(**on) -> dict:
    return {"weights": {**OFF, **on}}


ROWS = (
    # Table 3, cumulative: each row adds one term to the one above
    Row("CE only", None),
    Row("+ reverse-KL logit KD", _w(kd=1.0), "CE only"),
    Row("+ attention (layer-0 text->vision)", _w(kd=1.0, attn=1.0), "+ reverse-KL logit KD"),
    Row("+ vision-all", _w(kd=1.0, attn=1.0, vision_all=1.0), "+ attention (layer-0 text->vision)"),
    Row("+ vision-focus (Align-KD)", ALIGNKD, "+ vision-all"),
    # Table 4: full Align-KD, only the attention target changes (compared with text->vision, the row above)
    Row("attention vision->vision", {**ALIGNKD, "attn_block": "vision_vision"}, "+ vision-focus (Align-KD)"),
    Row("attention text->text", {**ALIGNKD, "attn_block": "text_text"}, "+ vision-focus (Align-KD)"),
    Row("attention all (layer 0)", {**ALIGNKD, "attn_block": "full"}, "+ vision-focus (Align-KD)"),
    Row("attention text->vision + last-layer all", {**ALIGNKD, "attn_extra": [{"layer": -1, "block": "full"}]},
        "+ vision-focus (Align-KD)"),
    # not in the paper's tables
    Row("forward KL", {**ALIGNKD, "divergence": "forward"}, "+ vision-focus (Align-KD)"),
    Row("lambda 1 (focus weight)", {"weights": {**ALIGNKD["weights"], "vision_focus": 1.0}}, "+ vision-focus (Align-KD)"),
    Row("released code's behaviour", {"weights": {**ALIGNKD["weights"], "vision_focus": 1.0}, "divergence": "forward",
                                      "kd_mask": "all", "attn_block": "vision_text"}, "+ vision-focus (Align-KD)",
        "forward KL over all positions, vision-query x text-key attention (causally empty), lambda 1"),
    Row("normalised attention (departure)", {**ALIGNKD, "attn_normalise": True}, "+ vision-focus (Align-KD)",
        "NOT the paper: each attention MSE divided by its teacher block's mean square"),
)
ROW_NAMES = tuple(r.name for r in ROWS)  # no commas: --rows is comma-separated (tests/test_reproduce.py)
# Two-sided 95% Student-t quantiles by degrees of freedom (seeds - 1); beyond the table, the normal 1.96.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


@dataclass
class ReproduceConfig:
    """Sizes of the run; `quick()` is the smoke-test setting (docs/reproduction.md gives both)."""

    seeds: int = 3
    student_steps: int = 300  # as the quickstart's students
    rows: tuple[str, ...] = ROW_NAMES
    eval_questions: int | None = None  # None: every question of the quickstart's suite; N: the first N per benchmark
    quickstart: object = None  # a QuickstartConfig: the world and teacher (default: the quickstart's own)
    docs: Path | None = None  # docs/reproduction.md to fill in (None: leave the docs alone)
    label: str = "full protocol"
    jobs: int = 1  # students trained at once, each in its own process with cores / jobs threads (2 on 2 cores)

    @classmethod
    def quick(cls, **kw) -> "ReproduceConfig":
        return cls(**{"seeds": 2, "student_steps": 60, "eval_questions": 40, "label": "--quick (smoke run: 2 seeds, 60 steps, "
                      "40 questions per benchmark; not the protocol)", **kw})

    def __post_init__(self):
        if self.seeds < 2:
            raise AlignKDError(f"--seeds {self.seeds}: a spread and a paired interval need at least 2 seeds; use --seeds 2 or more")
        unknown = [r for r in self.rows if r not in ROW_NAMES]
        if unknown:
            raise AlignKDError(f"row {unknown[0]!r} is not one this code can express; choose among: {', '.join(ROW_NAMES)}")
        if self.student_steps < 1:
            raise AlignKDError(f"--student-steps {self.student_steps} must be at least 1")
        if self.jobs < 1:
            raise AlignKDError(f"--jobs {self.jobs} must be at least 1 (students trained at once; 2 suits 2 cores)")


def t_interval(diffs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean of paired per-seed differences."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    df = n - 1
    t = T975.get(df) or next((T975[k] for k in sorted(T975, reverse=True) if k <= df), 1.96)
    half = t * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def summarise(rows: list[Row], runs: dict[str, list[dict]]) -> list[dict]:
    """Per row: per-seed scores, mean and std per column and on the average, the paired difference of the
    average against its `versus` row (same seeds) with its 95% interval, and the looking figure."""
    out = []
    for row in rows:
        seeds = runs[row.name]
        columns = list(seeds[0]["table"])
        mean = {c: statistics.fmean(s["table"][c] for s in seeds) for c in columns}
        std = {c: statistics.stdev(s["table"][c] for s in seeds) for c in columns}
        avgs = [s["average"] for s in seeds]
        entry = {"name": row.name, "note": row.note, "loss": row.loss, "seeds": seeds,
                 "mean": {**mean, "Avg": statistics.fmean(avgs)}, "std": {**std, "Avg": statistics.stdev(avgs)},
                 "looking": {"gain": statistics.fmean(s["looking"]["gain"] for s in seeds),
                             "answers_changed": statistics.fmean(s["looking"]["answers_changed"] for s in seeds),
                             "questions": seeds[0]["looking"]["questions"]}}
        if row.versus in runs:
            base = {s["seed"]: s["average"] for s in runs[row.versus]}
            diffs = [s["average"] - base[s["seed"]] for s in seeds if s["seed"] in base]
            d, lo, hi = t_interval(diffs)
            entry["versus"] = {"row": row.versus, "diff": d, "low": lo, "high": hi, "separated": lo > 0 or hi < 0}
        out.append(entry)
    return out


def _row_slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def _student(row: Row, seed: int, out: Path, world: Path, teacher: Path, cfg: ReproduceConfig, qs,
             progress: bool = True) -> Path:
    from alignkd.quickstart import _train, _train_config

    folder = out / "rows" / _row_slug(row.name) / f"seed-{seed}"
    if (folder / "student" / "config.json").is_file():
        return folder / "student"
    train = _train_config(folder, world, preset="synth_student", teacher=teacher if row.loss is not None else None,
                          vision_from=teacher, steps=cfg.student_steps, lr=qs.student_lr, cfg=replace(qs, seed=seed))
    if row.loss is not None:
        from alignkd.config import from_dict
        from alignkd.distill.config import LossConfig

        train.loss = from_dict(LossConfig, {"focus_k": qs.focus_k, **row.loss})
    train.tensorboard = False
    _train(train, progress=progress)
    return folder / "student"


def _scores(student: Path, world: Path, cfg: ReproduceConfig, qs) -> dict:
    """Accuracy with its own images and with shuffled ones; answers kept next to the student."""
    from alignkd.eval.run import evaluate
    from alignkd.quickstart import _differing

    runs = {}
    for control in ("own", "shuffled"):
        answers = student.parent / f"eval_{control}"
        result = evaluate(student, list(qs.benches), world / "eval", answers, limit=cfg.eval_questions,
                          max_new_tokens=qs.eval_max_new_tokens, progress=False, shuffled=control == "shuffled")
        runs[control] = {"table": result["table"], "average": result["average"], "answers": str(answers)}
    changed, n = _differing(runs["own"], runs["shuffled"], qs.benches)
    return {"table": runs["own"]["table"], "average": runs["own"]["average"],
            "looking": {"gain": runs["own"]["average"] - runs["shuffled"]["average"], "answers_changed": changed, "questions": n}}


def reproduce(out: Path, cfg: ReproduceConfig | None = None, log=print) -> dict:
    """Train and score every row for every seed (cached under OUT/rows/), then summarise and write the docs."""
    from alignkd.data.synth_world import synthesize
    from alignkd.quickstart import SHIPPED_TEACHER, QuickstartConfig, _world_config, check_teacher

    cfg = cfg or ReproduceConfig()
    qs = cfg.quickstart or QuickstartConfig()
    out = Path(out)
    if cfg.docs is not None:  # before any training: a docs file that cannot take the table is found now, not at the end
        _check_docs(Path(cfg.docs))
    world = out / "world"
    t0 = time.perf_counter()
    if not (world / "world.json").is_file():
        synthesize(world, _world_config(qs), overwrite=True)
    teacher = Path(qs.teacher) if qs.teacher else SHIPPED_TEACHER
    record = check_teacher(teacher, world, qs)
    rows = [r for r in ROWS if r.name in cfg.rows]
    tasks = [(row, seed) for row in rows for seed in range(cfg.seeds)]
    pending = [(row, seed) for row, seed in tasks if not _done(out, row, seed).is_file()]
    try:
        if cfg.jobs > 1 and len(pending) > 1:
            _run_parallel(pending, out, world, teacher, cfg, qs, log)
        for row, seed in tasks:
            if not _done(out, row, seed).is_file():
                _task(row, seed, out, world, teacher, cfg, qs)
    except KeyboardInterrupt:
        kept = sum(_done(out, row, seed).is_file() for row, seed in tasks)
        raise AlignKDError(f"interrupted: {kept} of {len(tasks)} students are trained and scored under {out / 'rows'}; "
                           "run the same command again to continue (an unfinished student continues from its last "
                           "checkpoint)") from None
    runs: dict[str, list[dict]] = {}
    for row, seed in tasks:
        runs.setdefault(row.name, []).append(json.loads(_done(out, row, seed).read_text()))
        log(f"{row.name} seed {seed}: average {runs[row.name][-1]['average']:.1f}")
    result = {"label": cfg.label, "seeds": cfg.seeds, "student_steps": cfg.student_steps, "eval_questions": cfg.eval_questions,
              "teacher": {"path": str(teacher), "scores": record.get("scores", {}).get("teacher")},
              "rows": summarise(rows, runs), "seconds": round(time.perf_counter() - t0, 1)}
    (out / "reproduce.json").write_text(json.dumps(result, indent=1) + "\n")
    if cfg.docs is not None:
        write_docs(Path(cfg.docs), result)
    return result


def _done(out: Path, row: Row, seed: int) -> Path:
    """Written last, so a student interrupted before its scores is trained (or continued) again on the next run."""
    return out / "rows" / _row_slug(row.name) / f"seed-{seed}" / "scores.json"


def _task(row: Row, seed: int, out: Path, world: Path, teacher: Path, cfg: ReproduceConfig, qs,
          progress: bool = True) -> str:
    started = time.perf_counter()
    student = _student(row, seed, out, world, teacher, cfg, qs, progress)
    scores = {"seed": seed, **_scores(student, world, cfg, qs), "seconds": round(time.perf_counter() - started, 1)}
    _done(out, row, seed).write_text(json.dumps(scores, indent=1) + "\n")
    return f"{row.name} seed {seed}: trained and scored in {scores['seconds']:.0f} s"


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_parallel(pending, out, world, teacher, cfg, qs, log) -> None:
    """Train the pending students `cfg.jobs` at a time, each process on cores // jobs threads: small students
    use two single-threaded processes better than one two-threaded one. A failure stops the run; the students
    finished so far are kept and a re-run continues. The workers show no progress bars (they would interleave):
    the main process logs each student as it finishes."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
    with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_task, row, seed, out, world, teacher, cfg, qs, False): (row, seed)
                   for row, seed in pending}
        for future in as_completed(futures):
            err = future.exception()
            if err is not None:
                for other in futures:
                    other.cancel()
                row, seed = futures[future]
                if isinstance(err, AlignKDError):
                    raise AlignKDError(f"row {row.name!r} seed {seed}: {err}") from err
                raise err
            log(future.result())


BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"


def format_table(result: dict) -> str:
    """The Markdown table: mean ± std per benchmark and average, the paired difference, the looking figure."""
    rows = result["rows"]
    columns = [c for c in rows[0]["mean"] if c != "Avg"] + ["Avg"]
    head = "| row | " + " | ".join(columns) + " | Δ Avg vs (95% CI) | looking: gain / changed |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for r in rows:
        cells = [f"{r['mean'][c]:.1f} ± {r['std'][c]:.1f}" for c in columns]
        v = r.get("versus")
        diff = f"{v['diff']:+.1f} [{v['low']:+.1f}, {v['high']:+.1f}] vs {v['row']}" if v else "-"
        look = f"{r['looking']['gain']:+.1f} / {r['looking']['answers_changed']:.0f} of {r['looking']['questions']}"
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {diff} | {look} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Average per row: each seed a dot, the mean a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    for i, r in enumerate(rows):
        ax.barh(i, r["mean"]["Avg"], color="#9ecae1")
        ax.plot([s["average"] for s in r["seeds"]], [i] * len(r["seeds"]), "k.", markersize=6)
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("average score (MME-P / 20), dots: seeds")
    ax.set_title(f"alignkd reproduce ({result['label'].split(' (')[0]})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check_docs(doc: Path) -> str:
    if not doc.is_file():
        raise AlignKDError(f"{doc} does not exist; the protocol must be written there before the numbers (pass --docs PATH of it)")
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise AlignKDError(f"{doc} has no {BEGIN} ... {END} block for the table; add one after the protocol")
    return text


def write_docs(doc: Path, result: dict) -> None:
    """Replace the block between the markers in docs/reproduction.md with this run's table; plot beside it."""
    text = _check_docs(doc)
    image = doc.with_name("reproduction.png")
    plot(result, image)
    teacher = result["teacher"]["scores"] or {}
    block = (f"{BEGIN}\nWritten by `alignkd reproduce` ({result['label']}; {result['seeds']} seeds, {result['student_steps']} "
             f"student steps, {result['seconds'] / 60:.0f} min). Teacher average {teacher.get('average', float('nan')):.1f}.\n\n"
             f"{format_table(result)}\n![average per row]({image.name})\n{END}")
    doc.write_text(text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):])
