"""GQA testdev-balanced: reader and scorer matching LLaVA's pipeline.

Reference: LLaVA `scripts/convert_gqa_for_eval.py` turns each answer into
`text.rstrip('.').lower()`, then GQA's official `eval.py --tier testdev_balanced` scores
accuracy = exact string match with the question's `answer`, averaged over the questions whose
`isBalanced` is true (all of testdev_balanced). Binary/open split: structural type "query" is open.

    python -m pytest tests/eval/test_gqa.py -q
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from alignkd.errors import AlignKDError
from alignkd.eval.common import (
    Benchmark,
    Question,
    llava_questions,
    coverage,
    load_json,
    pair_predictions,
    ratio,
    require_file,
)

QUESTION_FILE = "gqa/llava_gqa_testdev_balanced.jsonl"
ANNOTATION_FILE = "gqa/data/testdev_balanced_questions.json"
IMAGE_DIR = "gqa/data/images"
_LLAVA_ZIP = "LLaVA's eval.zip (docs/Evaluation.md) or MobileVLM's benchmark_data.zip"
_GQA_SITE = "the GQA site (https://cs.stanford.edu/people/dorarad/gqa/download.html, testdev_balanced questions)"


def load_questions(data_dir: Path | str) -> list[Question]:
    """Read `gqa/llava_gqa_testdev_balanced.jsonl` into questions (prompt = the file's `text`)."""
    data_dir = Path(data_dir)
    path = require_file(data_dir / QUESTION_FILE, "GQA", _LLAVA_ZIP)
    return llava_questions(path, lambda name: data_dir / IMAGE_DIR / name)


def postprocess(text: str) -> str:
    """LLaVA's convert_gqa_for_eval.py: drop trailing periods, lower-case (no other cleaning)."""
    return text.rstrip(".").lower()


def score(data_dir: Path | str, predictions: list[dict], *, allow_missing: bool = False, source: str = "predictions") -> dict:
    """GQA accuracy (0-100) plus binary/open and per-type accuracies, as GQA's eval.py prints them."""
    data_dir = Path(data_dir)
    questions = load_questions(data_dir)
    ann_path = require_file(data_dir / ANNOTATION_FILE, "GQA", _GQA_SITE)
    annotations = load_json(ann_path)
    pairs = pair_predictions(
        questions,
        predictions,
        question_key=lambda q: q.question_id,
        prediction_key=lambda p: p["question_id"],
        source=source,
        allow_missing=allow_missing,
    )
    hits: list[float] = []
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_structural: dict[str, list[float]] = defaultdict(list)
    by_semantic: dict[str, list[float]] = defaultdict(list)
    for question, pred in pairs:
        gt = annotations.get(str(question.question_id))
        if gt is None or "answer" not in gt:
            raise AlignKDError(
                f"{ann_path}: no answer for question {question.question_id!r} of {data_dir / QUESTION_FILE}; "
                "use the testdev_balanced_questions.json that belongs with this question file."
            )
        # eval.py scores only balanced questions; testdev_balanced marks every one of them.
        if not gt.get("isBalanced", True):
            continue
        hit = 1.0 if postprocess(pred["text"]) == gt["answer"] else 0.0
        hits.append(hit)
        types = gt.get("types") or {}
        if "structural" in types:
            by_answer_type["open" if types["structural"] == "query" else "binary"].append(hit)
            by_structural[types["structural"]].append(hit)
        if "semantic" in types:
            by_semantic[types["semantic"]].append(hit)

    def mean(values: list[float]) -> float:
        return ratio(sum(values), len(values))

    return {
        "benchmark": "gqa",
        "accuracy": mean(hits),
        "binary": mean(by_answer_type["binary"]),
        "open": mean(by_answer_type["open"]),
        "per_structural_type": {k: mean(v) for k, v in sorted(by_structural.items())},
        "per_semantic_type": {k: mean(v) for k, v in sorted(by_semantic.items())},
        **coverage(len(questions), len(pairs)),
    }


BENCHMARK = Benchmark(
    name="gqa",
    title="GQA testdev-balanced",
    headline="accuracy",
    load_questions=load_questions,
    score=score,
)
