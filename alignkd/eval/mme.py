"""MME: reader and scorer matching LLaVA's convert_answer_to_mme.py + MME's eval_tool/calculation.py.

Ground truth: `MME_Benchmark_release_version/{category}/` holds either images and `*.txt` side by
side, or `images/` + `questions_answers_YN/`; each txt line is "question\\tYes|No" and belongs to the
image with the same stem. LLaVA finds an answer's GT line by taking its prompt, removing
"Answer the question using a single word or phrase.", stripping, appending " Please answer yes or no."
and, if that is not a GT question, trying the two-space variant some release files use.

Parsing (calculation.py `parse_pred_ans`): lower-case; exactly "yes"/"no"; otherwise "yes" among the
first 4 characters, then "no" among them; otherwise "other" (always wrong). So "Yes." and "yes, it is"
are yes, "Not really" is no, "I think yes" is other.

Score per subtask: acc = % questions right, acc+ = % images with all their questions right;
subtask score = acc + acc+ (max 200). Perception = sum over the 10 perception subtasks (max 2000),
cognition over the 4 cognition ones (max 800). calculation.py pairs consecutive lines per category;
we group by image (the question_id), which is the same pairing for the official file order.

    python -m pytest tests/eval/test_mme.py -q
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from alignkd.errors import AlignKDError
from alignkd.eval.common import (
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    Question,
    llava_questions,
    coverage,
    pair_predictions,
    ratio,
    require_dir,
    require_file,
)

QUESTION_FILE = "MME/llava_mme.jsonl"
RELEASE_DIR = "MME/MME_Benchmark_release_version"
_LLAVA_ZIP = "LLaVA's eval.zip (docs/Evaluation.md) or MobileVLM's benchmark_data.zip"
_MME_SITE = "the MME authors (BradyFU/Awesome-Multimodal-Large-Language-Models, Evaluation branch: MME_Benchmark_release_version)"

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_YES_NO_SUFFIX = " Please answer yes or no."


def _qa_dir(category_dir: Path) -> Path:
    """The release stores a category either flat or as images/ + questions_answers_YN/."""
    return category_dir / "questions_answers_YN" if (category_dir / "images").exists() else category_dir


def _image_path(release: Path, image: str) -> Path:
    path = release / image
    if not path.exists():
        category, name = image.split("/")[0], image.split("/")[-1]
        nested = release / category / "images" / name
        if nested.exists():
            return nested
    return path


def load_questions(data_dir: Path | str) -> list[Question]:
    """Read `MME/llava_mme.jsonl`; question_id is "{category}/{image}", shared by an image's two questions."""
    data_dir = Path(data_dir)
    path = require_file(data_dir / QUESTION_FILE, "MME", _LLAVA_ZIP)
    release = data_dir / RELEASE_DIR
    return llava_questions(path, lambda name: _image_path(release, name),
                           category=lambda line: line["question_id"].split("/")[0])


def load_ground_truth(release: Path) -> dict[tuple[str, str, str], str]:
    """{(category, txt file name, question): "Yes"|"No"} over every category folder of the release."""
    gt = {}
    for category in sorted(os.listdir(release)):
        qa_dir = _qa_dir(release / category)
        if not (release / category).is_dir() or not qa_dir.is_dir():
            continue
        for name in sorted(os.listdir(qa_dir)):
            if not name.endswith(".txt"):
                continue
            with open(qa_dir / name, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    fields = line.strip().split("\t")
                    if len(fields) != 2:
                        raise AlignKDError(
                            f"{qa_dir / name} line {lineno}: expected 'question<TAB>answer'; fix that line or re-download MME."
                        )
                    gt[(category, name, fields[0])] = fields[1]
    return gt


def _gt_answer(gt: dict, question: Question, release: Path) -> str:
    category = question.question_id.split("/")[0]
    # convert_answer_to_mme.py's file name: everything before the image name's first dot.
    txt = question.question_id.split("/")[-1].split(".")[0] + ".txt"
    prompt = question.record_prompt
    if SHORT_ANSWER_SUFFIX in prompt:
        prompt = prompt.replace(SHORT_ANSWER_SUFFIX, "").strip()
    if "Please answer yes or no." not in prompt:
        prompt = prompt + _YES_NO_SUFFIX
        if (category, txt, prompt) not in gt:
            prompt = prompt.replace(_YES_NO_SUFFIX, "  Please answer yes or no.")
    answer = gt.get((category, txt, prompt))
    if answer is None or answer.lower() not in ("yes", "no"):
        raise AlignKDError(
            f"{release / category} has no Yes/No answer for {txt} question {prompt!r}; "
            f"use the MME release that matches {QUESTION_FILE}."
        )
    return answer.lower()


def parse_answer(text: str) -> str:
    """calculation.py's parse_pred_ans on the lower-cased answer: "yes", "no" or "other"."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def score(data_dir: Path | str, predictions: list[dict], *, allow_missing: bool = False, source: str = "predictions") -> dict:
    """MME perception (0-2000, the paper number), cognition (0-800) and per-subtask acc / acc+."""
    data_dir = Path(data_dir)
    questions = load_questions(data_dir)
    release = require_dir(data_dir / RELEASE_DIR, "MME", _MME_SITE)
    gt = load_ground_truth(release)
    pairs = pair_predictions(
        questions,
        predictions,
        question_key=lambda q: (q.question_id, q.record_prompt),
        prediction_key=lambda p: (p["question_id"], p["prompt"]),
        source=source,
        allow_missing=allow_missing,
    )
    answered = defaultdict(int)
    for question, _ in pairs:
        answered[question.question_id] += 1
    per_image_total = defaultdict(int)
    for question in questions:
        per_image_total[question.question_id] += 1

    # image -> list of hits, per category; images with an unanswered question are left out whole,
    # since acc+ needs every question of an image.
    images: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for question, pred in pairs:
        if answered[question.question_id] != per_image_total[question.question_id]:
            continue
        category = question.question_id.split("/")[0]
        hit = parse_answer(pred["text"]) == _gt_answer(gt, question, release)
        images[category][question.question_id].append(hit)

    subtasks = {}
    for category, by_image in images.items():
        hits = [h for image_hits in by_image.values() for h in image_hits]
        acc = ratio(sum(hits), len(hits))
        acc_plus = ratio(sum(all(h) for h in by_image.values()), len(by_image))
        subtasks[category] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}

    n_scored = sum(len(h) for by_image in images.values() for h in by_image.values())
    return {
        "benchmark": "mme",
        "perception": sum(subtasks[c]["score"] for c in PERCEPTION if c in subtasks),
        "cognition": sum(subtasks[c]["score"] for c in COGNITION if c in subtasks),
        "subtasks": dict(sorted(subtasks.items())),
        "missing_subtasks": [c for c in PERCEPTION + COGNITION if c not in subtasks],
        **coverage(len(questions), n_scored),
    }


BENCHMARK = Benchmark(
    name="mme",
    title="MME",
    headline="perception",
    load_questions=load_questions,
    score=score,
)
