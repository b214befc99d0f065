"""Entry functions behind `alignkd eval`: generate answers with a model, write LLaVA answer files, score, tabulate.

`evaluate` loads the model once and, per benchmark, answers every question (template v1, greedy, the
benchmark's max_new_tokens, `<image>\\n` before the question when it has an image), appending each answer
to `out_dir/{bench}.jsonl` as soon as it exists, so a killed run resumes where it stopped. It then scores
the file with the benchmark's scorer and builds the paper's table (Avg = mean of the six with MME-P / 20).
`compare` evaluates an exported bundle and its source checkpoint on the same questions and reports the
accuracy drift and the per-question answer agreement. `blind=True` is the question-only control (the
"blind" baseline of VQA v2, Goyal et al. 2017): every image is replaced by a uniform image of the
preprocessing mean (pixel values 0), with the prompt and the image tokens unchanged, so the score that is
left is what the model gets from language priors alone. A blank image is out of distribution, though, so a
*changed* score under it does not prove the model looks. `shuffled=True` is the control that does: every
question is asked about another image of the same benchmark (the distinct images in file order, each
answered with the one half the list away), real pictures of the same kind, so a model that reads its image
loses the accuracy that came from it and a model that does not keeps its score.

Under `accelerate launch --num_processes N -m alignkd eval ...` the questions still to answer are dealt out
round-robin: process r answers every N-th of them into its own shard `{bench}.part{r}of{N}.jsonl`; the main
process then merges the shards into `{bench}.jsonl` in question order and scores it. Greedy decoding of one
question does not depend on the others, so the answers equal a single process's. A killed sharded run resumes
with any number of processes: the main process first merges whatever shards are there.

    alignkd eval MODEL --bench gqa --bench pope --data playground/data/eval --out answers --limit 50
    accelerate launch --num_processes 8 -m alignkd eval MODEL --bench gqa --data playground/data/eval --out answers
    python -m pytest tests/eval/test_run.py tests/eval/test_sharded.py -q
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from alignkd.errors import AlignKDError
from alignkd.eval.common import ANSWER_KEYS, Question, answer_record, read_answers
from alignkd.eval.provenance import check_writable, claim_folder, generation_key
from alignkd.eval.registry import get_benchmark

# The paper's columns (Align-KD / MobileVLM tables), benchmark name -> label.
COLUMNS = {"mme": "MME-P", "gqa": "GQA", "textvqa": "TextVQA", "pope": "POPE", "mmbench": "MMBench", "sqa": "SQA-IMG"}
MME_SCALE = 20  # MobileVLM's Avg. rescales MME perception (max 2000) to 0-100


def _key(record: dict | Question) -> tuple:
    """What identifies an answer: MME shares a question_id between an image's two questions and TextVQA's
    id is the image id, so the id alone is not unique; (id, round, prompt) is, as in the scorers."""
    if isinstance(record, Question):
        return (record.question_id, record.extra.get("round_id"), record.record_prompt)
    return (record["question_id"], record.get("round_id"), record["prompt"])


def _read_done(path: Path, questions: list[Question], model_id: str) -> Counter:
    """Keys already answered in `path`; a truncated last line (a killed write) is cut off the file."""
    if not path.exists():
        return Counter()
    data = path.read_bytes()
    done, known, offset = Counter(), Counter(_key(q) for q in questions), 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            if not last:
                raise AlignKDError(f"{path} line {i + 1} is not valid JSON; delete that line (or the file) to resume.") from None
            with open(path, "r+b") as f:  # killed mid-write: drop the partial line, it will be regenerated
                f.truncate(offset)
            break
        if record is not None:
            if not isinstance(record, dict) or any(k not in record for k in ANSWER_KEYS):
                raise AlignKDError(f"{path} line {i + 1} is not a LLaVA answer record ({', '.join(ANSWER_KEYS)}); "
                                   "delete the file or use another --out folder.")
            if record.get("model_id") != model_id:
                raise AlignKDError(f"{path} holds answers of model {record.get('model_id')!r}, not {model_id!r}; "
                                   "pass another --out folder (or delete the file) so answers of two models never mix.")
            key = _key(record)
            if done[key] >= known[key]:
                raise AlignKDError(f"{path} line {i + 1} answers question {record['question_id']!r}, which this benchmark "
                                   "does not ask (or asks fewer times); it belongs to another suite: use another --out folder.")
            done[key] += 1
        offset += len(line) + 1
    if data and not data.endswith(b"\n") and offset > len(data):  # complete last record, newline lost
        with open(path, "ab") as f:
            f.write(b"\n")
    return done


def _todo(questions: list[Question], done: Counter) -> list[Question]:
    left, todo = Counter(done), []
    for q in questions:
        if left[_key(q)]:
            left[_key(q)] -= 1
        else:
            todo.append(q)
    return todo


def _prepare(benches: list[str], data_dir: Path, limit: int | None) -> dict:
    """Read every question and every scoring file before the model load, so bad input fails in seconds."""
    if not benches:
        raise AlignKDError(f"no benchmark given; pass one or more of: {', '.join(COLUMNS)}.")
    if limit is not None and limit < 1:
        raise AlignKDError(f"--limit {limit} must be a positive number of questions per benchmark.")
    plan = {}
    for name in dict.fromkeys(benches):
        bm = get_benchmark(name)
        every = bm.load_questions(data_dir)
        bm.score(data_dir, [], allow_missing=True, source="dry run")  # loads annotations, labels, ground truth
        questions = every[:limit] if limit else every
        missing = [q.image_path for q in questions if q.image_path is not None and not q.image_path.is_file()]
        if missing:
            raise AlignKDError(f"{missing[0]} not found ({len(missing)} image(s) of {bm.title} missing); unpack the "
                               "benchmark's images where LLaVA's playground/data/eval layout puts them.")
        plan[name] = (bm, every, questions)
    return plan


def _image_id(q: Question):
    return q.image_path if q.image_path is not None else q.image_base64


def shuffled_images(questions: list[Question], bench: str) -> dict:
    """{image id: the question whose image replaces it}: each distinct image moves half the list along, so no
    question keeps its own picture; the map depends on the benchmark's file only (not on --limit)."""
    firsts = {}
    for q in questions:
        if q.has_image:
            firsts.setdefault(_image_id(q), q)
    ids = list(firsts)
    if len(ids) < 2:
        raise AlignKDError(f"{bench}: the shuffled-image control needs at least 2 distinct images, this benchmark has "
                           f"{len(ids)}; run it without --shuffled.")
    shift = len(ids) // 2
    return {image: firsts[ids[(i + shift) % len(ids)]] for i, image in enumerate(ids)}


def _answer(loaded, processor, question: Question, cap: int | None, blind: bool = False,
            donors: dict | None = None) -> str:
    from alignkd.runtime.generation import GenerationConfig, build_prompt, generate

    source = donors[_image_id(question)] if donors and question.has_image else question
    images = [source.load_image()] if question.has_image else []
    prompt = build_prompt(question.prompt, len(images), loaded.template)
    pixels = processor(images) if images else None
    if blind and pixels is not None:  # uniform at the preprocessing mean: 0 after normalisation, same shape
        pixels = pixels.new_zeros(pixels.shape)
    n = question.max_new_tokens if cap is None else min(cap, question.max_new_tokens)
    config = GenerationConfig(max_new_tokens=n, temperature=0.0)
    return generate(loaded.backend, loaded.tokenizer, prompt, pixels, config, loaded.template).text


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # stderr: stdout stays clean for --json
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _claim(model_path, out_dir: Path, overwrite: bool, **settings) -> None:
    """Check `out_dir` is writable and holds no answers of another model or settings, before the model load."""
    answer_files = [out_dir / f"{name}.jsonl" for name in COLUMNS]  # all of them: --overwrite leaves none of the old run
    answer_files += sorted(p for name in COLUMNS for p in out_dir.glob(f"{name}.part*.jsonl"))  # a killed sharded run's
    check_writable(out_dir, answer_files)
    claim_folder(out_dir, generation_key(model_path, **settings), answer_files, overwrite=overwrite)


def _processes():
    """(this process's index, number of processes, barrier) under `accelerate launch`; (0, 1, no-op) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    # without a GPU accelerate forms the process group (gloo) only when told it is on CPU
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone


def _on_main(rank: int, n: int, fn) -> None:
    """Run `fn` on the main process only; an AlignKDError there stops every process with the same sentence."""
    error = None
    if rank == 0:
        try:
            fn()
        except AlignKDError as err:
            error = str(err)
    if n > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    if error is not None:
        raise AlignKDError(error)


def _shard_path(out_dir: Path, name: str, rank: int, n: int) -> Path:
    return out_dir / f"{name}.part{rank}of{n}.jsonl"


def merge_shards(path: Path, questions: list[Question], model_id: str, reorder: bool = False) -> None:
    """Fold every `{bench}.part*.jsonl` next to `path` into `path`, in question order, and delete the shards;
    `reorder`: also put a resumed file (answers appended after a restart) back in question order.

    Each file is checked as a resumed answer file is (model id, known questions; a torn last line is dropped);
    an answer given twice (the same question in two files) is kept once."""
    shards = sorted(path.parent.glob(f"{path.stem}.part*.jsonl"))
    if not shards and not (reorder and path.exists()):
        return
    by_key: dict[tuple, list[dict]] = {}
    records = []
    for file in [path] + shards:
        if file.exists():
            _read_done(file, questions, model_id)
            records += read_answers(file)
    for record in records:
        by_key.setdefault(_key(record), []).append(record)
    ordered = [by_key[_key(q)].pop(0) for q in questions if by_key.get(_key(q))]
    if not shards and ordered == records:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in ordered), encoding="utf-8")
    os.replace(tmp, path)  # a kill here leaves the shards, and the next run merges them again
    for file in shards:
        file.unlink()


def evaluate(model_path, benches: list[str], data_dir, out_dir, *, limit: int | None = None, model_id: str | None = None,
             dtype: str = "float32", max_new_tokens: int | None = None, progress: bool = True, blind: bool = False,
             shuffled: bool = False, overwrite: bool = False) -> dict:
    """Answer, write and score `benches` with the model at `model_path`; see the module docstring.

    `limit` answers the first N questions of each benchmark (scored as a partial result); `max_new_tokens`
    caps every benchmark's budget (for smoke runs: the numbers are then not comparable with the papers').
    `blind` blanks every image (the question-only control); its answers carry the model id + "+blind", so
    they never mix with the model's real answers in one folder. `shuffled` asks every question about another
    image of its benchmark (`shuffled_images`; model id + "+shuffled"): the control that shows whether the
    model looks. Answers already in `out_dir` are reused only when its `eval-key.json` names the same model
    and settings (`alignkd.eval.provenance`); otherwise this refuses, or with `overwrite` deletes them first.
    """
    from alignkd.data.image import ImageProcessor

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if blind and shuffled:
        raise AlignKDError("blind and shuffled are two separate controls; run them one at a time, each into its own --out.")
    model_id = (model_id or Path(model_path).resolve().name) + ("+blind" if blind else "+shuffled" if shuffled else "")
    rank, n, barrier = _processes()
    plan = _prepare(benches, data_dir, limit)

    def claim_and_merge():
        _claim(model_path, out_dir, overwrite, dtype=dtype, max_new_tokens=max_new_tokens, blind=blind, shuffled=shuffled)
        for name, (bm, every, questions) in plan.items():  # check existing answer files before paying for the load
            merge_shards(out_dir / f"{name}.jsonl", every, model_id)
            _read_done(out_dir / f"{name}.jsonl", every, model_id)

    _on_main(rank, n, claim_and_merge)
    todo = {}
    for name, (bm, every, questions) in plan.items():  # the merged file is final here: every process reads the same
        todo[name] = _todo(questions, _read_done(out_dir / f"{name}.jsonl", every, model_id))
    mine = {name: left[rank::n] for name, left in todo.items()}
    t0 = time.perf_counter()
    loaded = _load(model_path, dtype, n) if any(mine.values()) else None
    load_s = time.perf_counter() - t0
    processor = ImageProcessor(loaded.image_config) if loaded else None
    seconds = {}
    with _progress(progress and rank == 0) as bar:
        for name, (bm, every, questions) in plan.items():
            path, t1 = out_dir / f"{name}.jsonl" if n == 1 else _shard_path(out_dir, name, rank, n), time.perf_counter()
            task = bar.add_task(COLUMNS[name], total=len(questions), completed=len(questions) - len(todo[name]))
            donors = shuffled_images(every, name) if shuffled else None
            with open(path, "a", encoding="utf-8") as f:
                for q in mine[name]:
                    text = _answer(loaded, processor, q, max_new_tokens, blind, donors)
                    f.write(json.dumps(answer_record(q, text, model_id)) + "\n")
                    f.flush()  # one line per answer on disk: a kill loses at most the answer being generated
                    bar.advance(task, n)
            seconds[name] = time.perf_counter() - t1
    barrier()
    if rank != 0:
        return None  # the main process merges and scores
    results = {}
    for name, (bm, every, questions) in plan.items():
        path = out_dir / f"{name}.jsonl"
        merge_shards(path, every, model_id, reorder=True)
        score = bm.score_file(data_dir, path, allow_missing=len(questions) < len(every))
        results[name] = {"answers_file": str(path), "generated": len(todo[name]),
                         "reused": len(questions) - len(todo[name]), "seconds": seconds[name],
                         "headline": bm.headline, "value": float(score[bm.headline]),
                         "partial": bool(score["partial"]), "score": score}
    return {"model": str(model_path), "model_id": model_id, "kind": loaded.kind if loaded else None,
            "data_dir": str(data_dir), "out_dir": str(out_dir), "limit": limit, "max_new_tokens": max_new_tokens,
            "blind": blind, "shuffled": shuffled, "processes": n, "load_s": load_s if loaded else None,
            "benchmarks": results, **paper_row(results)}


def _load(model_path, dtype: str, n: int):
    """The model, on this process's GPU when a sharded run has GPUs (each process answers on its own)."""
    from alignkd.runtime.loader import load_model

    loaded = load_model(model_path, dtype=dtype)
    if n > 1 and loaded.kind == "checkpoint":
        from accelerate import PartialState

        loaded.backend.model.to(PartialState().device)
    return loaded


def paper_row(results: dict) -> dict:
    """{"table": {label: value}, "average": mean with MME-P/20 or None, "partial": any partial or capped}."""
    table = {label: results[name]["value"] for name, label in COLUMNS.items() if name in results}
    average = None
    if len(table) == len(COLUMNS):
        average = sum(v / MME_SCALE if label == "MME-P" else v for label, v in table.items()) / len(COLUMNS)
    return {"table": table, "average": average, "partial": any(r["partial"] for r in results.values())}


def _render(table) -> str:
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=120, force_terminal=False, color_system=None).print(table)
    return buf.getvalue()


def format_table(result: dict) -> str:
    """The paper's row for one evaluation (rich table as plain text) plus a note when it is partial."""
    from rich.table import Table

    table = Table(title=f"{result['model_id']} ({result['kind'] or 'answers reused'})")
    shown = [label for label in COLUMNS.values() if label in result["table"]]
    for label in shown + ["Avg"]:
        table.add_column(label, justify="right")
    avg = result["average"]
    table.add_row(*[f"{result['table'][label]:.1f}" for label in shown], "-" if avg is None else f"{avg:.1f}")
    notes = []
    if result["partial"]:
        notes.append("partial: only the answered subset was scored (--limit); not comparable with paper numbers")
    if result.get("max_new_tokens"):
        notes.append(f"answers capped at {result['max_new_tokens']} new tokens; not comparable with paper numbers")
    if avg is None:
        notes.append("Avg needs all six benchmarks")
    notes += _kind_notes(result.get("kind"))
    if result.get("blind"):
        notes.append("blind control: every image blanked to the preprocessing mean; these scores come from language priors alone")
    if result.get("shuffled"):
        notes.append("shuffled-image control: every question asked about another image of its benchmark; "
                     "what a model gains from its own image is gone from these scores")
    for name, r in result["benchmarks"].items():
        notes.append(f"{name}: {r['headline']} over {r['score']['n_scored']}/{r['score']['n_questions']} "
                     f"({r['generated']} generated, {r['reused']} reused) -> {r['answers_file']}")
    return _render(table) + "\n".join(notes) + "\n"


def answer_agreement(a_file: str, b_file: str) -> tuple[int, int]:
    """(identical answers, answers compared) over the questions both files answer."""
    by_key: dict[tuple, list[str]] = {}
    for record in read_answers(a_file):
        by_key.setdefault(_key(record), []).append(record["text"].strip())
    same = n = 0
    for record in read_answers(b_file):
        queue = by_key.get(_key(record))
        if queue:
            n += 1
            same += queue.pop(0) == record["text"].strip()
    return same, n


def compare(bundle, reference_checkpoint, benches: list[str], data_dir, out_dir, limit: int | None = None, *,
            max_new_tokens: int | None = None, dtype: str = "float32", progress: bool = True, overwrite: bool = False) -> dict:
    """Accuracy drift (bundle - reference, headline metric) and answer agreement per benchmark.

    Answers go to `out_dir/bundle/` and `out_dir/reference/`; existing answer files there are reused (resumed)
    when they come from the same models and settings. Both folders are checked before either model runs.
    """
    out_dir = Path(out_dir)
    _prepare(benches, Path(data_dir), limit)
    rank, n, _ = _processes()

    def claim_both():
        for model, sub, kind_dtype in ((reference_checkpoint, "reference", dtype), (bundle, "bundle", "float32")):
            _claim(model, out_dir / sub, overwrite, dtype=kind_dtype, max_new_tokens=max_new_tokens, blind=False, shuffled=False)

    _on_main(rank, n, claim_both)
    kw = dict(limit=limit, max_new_tokens=max_new_tokens, progress=progress)
    ref = evaluate(reference_checkpoint, benches, data_dir, out_dir / "reference", dtype=dtype, **kw)
    exp = evaluate(bundle, benches, data_dir, out_dir / "bundle", **kw)
    if ref is None:  # a sharded run's other processes: the main one compares
        return None
    rows = {}
    for name in ref["benchmarks"]:
        r, b = ref["benchmarks"][name], exp["benchmarks"][name]
        same, n = answer_agreement(r["answers_file"], b["answers_file"])
        rows[name] = {"metric": r["headline"], "reference": r["value"], "bundle": b["value"],
                      "drift": b["value"] - r["value"], "agreement": same / n if n else None, "n_compared": n}
    return {"bundle": exp, "reference": ref, "benchmarks": rows, "partial": ref["partial"] or exp["partial"]}


def _kind_notes(kind: str | None) -> list[str]:
    from alignkd.runtime.gguf_backend import PYTORCH_VISION_KIND, PYTORCH_VISION_NOTE

    return [PYTORCH_VISION_NOTE] if kind == PYTORCH_VISION_KIND else []


def format_compare(result: dict) -> str:
    """One row per benchmark: reference, bundle, drift, answer agreement."""
    from rich.table import Table

    table = Table(title=f"{result['bundle']['model_id']} vs {result['reference']['model_id']}")
    for col in ("benchmark", "metric", "reference", "bundle", "drift", "agreement"):
        table.add_column(col, justify="left" if col in ("benchmark", "metric") else "right")
    for name, r in result["benchmarks"].items():
        agree = "-" if r["agreement"] is None else f"{100 * r['agreement']:.1f}% of {r['n_compared']}"
        table.add_row(COLUMNS[name], r["metric"], f"{r['reference']:.2f}", f"{r['bundle']:.2f}", f"{r['drift']:+.2f}", agree)
    notes = (["partial: only the answered subset was scored (--limit)"] if result["partial"] else []) + _kind_notes(result["bundle"]["kind"])
    return _render(table) + "".join(f"{n}\n" for n in notes)
