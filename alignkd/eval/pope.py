"""POPE (COCO val2014; adversarial / popular / random): reader and scorer matching LLaVA's eval_pope.py.

Parsing: keep the text before the first ".", delete commas, split on single spaces; any token equal
to "No", "no" or "not" means no, everything else yes (so "NO" is yes, as in LLaVA).
Per subset, with yes as the positive class: accuracy, precision, recall, F1 and yes-ratio (share of
*predicted* yes). The paper number (LLaVA-1.5, MobileVLM) is the mean F1 of the subsets.

Labels: eval_pope.py zips a subset's answers (in answer-file order) with the lines of
`coco/coco_pope_{subset}.json` (in file order). We keep that positional pairing between the question
file's rows of a subset and the label file, check it row by row on the image name, and pair answers
to questions by question_id, so a reordered answer file still scores correctly.
One deviation: where LLaVA divides by zero (no predicted or no true yes) we report 0.

    python -m pytest tests/eval/test_pope.py -q
"""

from __future__ import annotations

from pathlib import Path

from alignkd.errors import AlignKDError
from alignkd.eval.common import (
    Benchmark,
    Question,
    llava_questions,
    coverage,
    pair_predictions,
    ratio,
    read_jsonl,
    require_file,
)

QUESTION_FILE = "pope/llava_pope_test.jsonl"
LABEL_FILE = "pope/coco/coco_pope_{subset}.json"
IMAGE_DIR = "pope/val2014"
SUBSETS = ("adversarial", "popular", "random")
_LLAVA_ZIP = "LLaVA's eval.zip (docs/Evaluation.md) or MobileVLM's benchmark_data.zip"
_POPE_REPO = "the POPE repository (https://github.com/AoiDragon/POPE, output/coco/coco_pope_{subset}.json)"


def load_questions(data_dir: Path | str) -> list[Question]:
    """Read `pope/llava_pope_test.jsonl`; `category` is the subset."""
    data_dir = Path(data_dir)
    path = require_file(data_dir / QUESTION_FILE, "POPE", _LLAVA_ZIP)
    questions = llava_questions(path, lambda name: data_dir / IMAGE_DIR / name, ("question_id", "image", "text", "category"))
    for q in questions:
        if q.category not in SUBSETS:
            raise AlignKDError(f"{path}: question {q.question_id!r} has category {q.category!r}, expected one of {', '.join(SUBSETS)}; fix the file.")
    return questions


def parse_answer(text: str) -> str:
    """eval_pope.py's yes/no reading of a free-form answer."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def binary_metrics(preds: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1 and yes-ratio, all 0-100, yes = positive."""
    tp = sum(p == "yes" and l == "yes" for p, l in zip(preds, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(preds, labels))
    tn = sum(p == "no" and l == "no" for p, l in zip(preds, labels))
    fn = sum(p == "no" and l == "yes" for p, l in zip(preds, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": ratio(preds.count("yes"), len(preds)),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }  # fmt: skip


def _labels(data_dir: Path, subset: str, questions: list[Question]) -> dict[int, str]:
    """{id(question): label}, pairing the subset's questions and label lines by position."""
    path = require_file(data_dir / LABEL_FILE.format(subset=subset), "POPE", _POPE_REPO.format(subset=subset))
    lines = read_jsonl(path, required=("image", "label"))
    if len(lines) != len(questions):
        raise AlignKDError(
            f"{path} has {len(lines)} labels but {data_dir / QUESTION_FILE} has {len(questions)} {subset} questions; "
            "use the label file the question file was built from."
        )
    labels = {}
    for n, (question, line) in enumerate(zip(questions, lines), start=1):
        if question.image_path.name != line["image"]:
            raise AlignKDError(
                f"{path} line {n} is about {line['image']} but {subset} question {question.question_id!r} is about "
                f"{question.image_path.name}; the label file and {QUESTION_FILE} must list the questions in the same order."
            )
        labels[id(question)] = "no" if line["label"] == "no" else "yes"
    return labels


def score(data_dir: Path | str, predictions: list[dict], *, allow_missing: bool = False, source: str = "predictions") -> dict:
    """Per-subset metrics and the mean F1 over subsets (0-100), as LLaVA-1.5 / MobileVLM report POPE."""
    data_dir = Path(data_dir)
    questions = load_questions(data_dir)
    pairs = pair_predictions(
        questions,
        predictions,
        question_key=lambda q: q.question_id,
        prediction_key=lambda p: p["question_id"],
        source=source,
        allow_missing=allow_missing,
    )
    subsets = {}
    for subset in SUBSETS:
        subset_questions = [q for q in questions if q.category == subset]
        if not subset_questions:
            continue
        labels = _labels(data_dir, subset, subset_questions)
        answered = [(q, p) for q, p in pairs if q.category == subset]
        if not answered:
            continue
        subsets[subset] = binary_metrics([parse_answer(p["text"]) for _, p in answered], [labels[id(q)] for q, _ in answered])
        subsets[subset]["n"] = len(answered)
    return {
        "benchmark": "pope",
        "mean_f1": sum(m["f1"] for m in subsets.values()) / len(subsets) if subsets else 0.0,
        "mean_accuracy": sum(m["accuracy"] for m in subsets.values()) / len(subsets) if subsets else 0.0,
        "subsets": subsets,
        **coverage(len(questions), len(pairs)),
    }


BENCHMARK = Benchmark(
    name="pope",
    title="POPE (COCO, 3 subsets)",
    headline="mean_f1",
    load_questions=load_questions,
    score=score,
)
