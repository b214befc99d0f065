"""ScienceQA-IMG: reader and scorer matching LLaVA's model_vqa_science.py / eval_science_qa.py.

Prompt (model_vqa_science.py with --single-pred-prompt): the human turn of
`llava_test_CQM-A.json` with `<image>` removed and stripped, then
"\\nAnswer with the option's letter from the given choices directly."; 1024 new tokens.

Scoring (eval_science_qa.py), over the problems of `pid_splits.json["test"]`: the answer is the
text itself if it is one of A-E; else its first letter if it starts with "X. "; else the single
match of the regex `The answer is ([A-Z]).` (the `.` matches any character, so a bare
"The answer is B" at the very end does not match); else FAILED (wrong). The letter must index one
of the problem's choices. IMG-Accuracy is the accuracy over questions that carry an image; LLaVA
tests `'<image>' in prompt`, which model_vqa_science.py sets exactly when the question has an image,
so we read the question file's `image` key instead of trusting the answer record.

    python -m pytest tests/eval/test_sqa.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

from alignkd.errors import AlignKDError
from alignkd.eval.common import (
    LETTER_ANSWER_SUFFIX,
    LONG_MAX_NEW_TOKENS,
    Benchmark,
    Question,
    coverage,
    load_json,
    pair_predictions,
    ratio,
    require_file,
)

QUESTION_FILE = "scienceqa/llava_test_CQM-A.json"
PROBLEMS_FILE = "scienceqa/problems.json"
SPLITS_FILE = "scienceqa/pid_splits.json"
IMAGE_DIR = "scienceqa/images/test"
_LLAVA_ZIP = "LLaVA's eval.zip (docs/Evaluation.md) or MobileVLM's benchmark_data.zip"
_SQA_REPO = "the ScienceQA repository (https://github.com/lupantech/ScienceQA, data/scienceqa)"

OPTIONS = ["A", "B", "C", "D", "E"]
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
FAILED = "FAILED"


def load_questions(data_dir: Path | str) -> list[Question]:
    """Read `scienceqa/llava_test_CQM-A.json` (JSON list) into questions; text-only ones have no image."""
    data_dir = Path(data_dir)
    path = require_file(data_dir / QUESTION_FILE, "ScienceQA-IMG", _LLAVA_ZIP)
    items = load_json(path)
    if not isinstance(items, list):
        raise AlignKDError(f"{path}: expected a JSON list of questions; use LLaVA's llava_test_CQM-A.json.")
    questions = []
    for n, item in enumerate(items):
        try:
            qid, human = item["id"], item["conversations"][0]["value"]
        except (KeyError, IndexError, TypeError) as err:
            raise AlignKDError(f"{path}: entry {n} lacks id or conversations[0].value ({err}); fix that entry.") from err
        body = human.replace("<image>", "").strip()
        prompt = body + "\n" + LETTER_ANSWER_SUFFIX
        has_image = "image" in item
        questions.append(
            Question(
                question_id=qid,
                prompt=prompt,
                record_prompt=("<image>\n" + prompt) if has_image else prompt,
                max_new_tokens=LONG_MAX_NEW_TOKENS,
                image_path=(data_dir / IMAGE_DIR / item["image"]) if has_image else None,
            )
        )
    return questions


def parse_answer(text: str) -> str:
    """eval_science_qa.py's answer parsing: a letter A-Z, or FAILED."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else FAILED


def _choice_index(letter: str, n_choices: int) -> int:
    return OPTIONS.index(letter) if letter in OPTIONS[:n_choices] else -1


def score(data_dir: Path | str, predictions: list[dict], *, allow_missing: bool = False, source: str = "predictions") -> dict:
    """IMG-accuracy (the paper number) and total accuracy over the test split, 0-100."""
    data_dir = Path(data_dir)
    questions = load_questions(data_dir)
    problems = load_json(require_file(data_dir / PROBLEMS_FILE, "ScienceQA-IMG", _SQA_REPO))
    splits_path = require_file(data_dir / SPLITS_FILE, "ScienceQA-IMG", _SQA_REPO)
    test_ids = set(load_json(splits_path).get("test", []))
    if not test_ids:
        raise AlignKDError(f"{splits_path} has no 'test' list; use ScienceQA's pid_splits.json.")
    # eval_science_qa.py iterates the test split only; other ids in the question file are ignored.
    in_test = [q for q in questions if q.question_id in test_ids]
    outside = {q.question_id for q in questions} - test_ids
    pairs = pair_predictions(
        in_test,
        [p for p in predictions if p.get("question_id") not in outside],
        question_key=lambda q: q.question_id,
        prediction_key=lambda p: p["question_id"],
        source=source,
        allow_missing=allow_missing,
    )
    correct = img_correct = img_total = failed = 0
    for question, pred in pairs:
        problem = problems.get(question.question_id)
        if problem is None:
            raise AlignKDError(f"{data_dir / PROBLEMS_FILE} has no problem {question.question_id!r}; use the problems.json that matches the question file.")
        letter = parse_answer(pred["text"])
        failed += letter == FAILED
        hit = _choice_index(letter, len(problem["choices"])) == problem["answer"]
        correct += hit
        if question.has_image:
            img_total += 1
            img_correct += hit
    return {
        "benchmark": "sqa",
        "img_accuracy": ratio(img_correct, img_total),
        "accuracy": ratio(correct, len(pairs)),
        "n_img": img_total,
        "n_failed_parse": failed,
        **coverage(len(in_test), len(pairs)),
    }


BENCHMARK = Benchmark(
    name="sqa",
    title="ScienceQA-IMG (test)",
    headline="img_accuracy",
    load_questions=load_questions,
    score=score,
)
