"""MMBench dev (EN): TSV reader and offline CircularEval scorer.

Prompt (LLaVA `model_vqa_mmbench.py --single-pred-prompt`, one round per TSV row): `{hint}\\n` if the
hint is present, the question, then `\\nA. opt` per option up to the first empty option, then
"\\nAnswer with the option's letter from the given choices directly."; 1024 new tokens. The answer
file's "prompt" is that text without the last line, as LLaVA records it.

Scoring: the circular copies of a question are extra TSV rows with index + 1e6 * k and rotated
options, each with its own answer letter. Rows are grouped by `index % 1e6`; a question is a hit only
if the option extracted from *every* row of its group equals that row's answer. Overall accuracy is
the hit rate over main rows (index < 1e6), also per `category` and `l2-category`.

Option extraction reproduces VLMEvalKit's `exact_matching` route (open-compass/VLMEvalKit @ e8e78f05,
`vlmeval/utils/matching_util.py::can_infer` as called by `dataset/utils/multiple_choice.py`, VERBOSE unset),
the offline route of the toolkit that scores MMBench for the OpenCompass leaderboard: the characters
`.()[],:;!*#{}` become spaces; if exactly one of the row's option letters is a token and it is among the
last four tokens, that letter ("The answer is A" -> A; the article of "A cat is on the mat" is too far from
the end to count); a refusal phrase or a bare "Z" token is option Z (never right); else a case-insensitive
"(correct) answer is X" names X (so "The answer is a dog" reads as A, as in the reference); else exactly one
option text contained in an answer at most twice as long as the option texts together. What is left would
go to MMBench's GPT judge; offline, as `exact_matching`, the row counts wrong. (lmms-eval's offline
`can_infer` instead rejects every answer with an "A" token and more than three tokens, so it does not read
"The answer is A" as A without its judge.)

    python -m pytest tests/eval/test_mmbench.py -q
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from alignkd.errors import AlignKDError
from alignkd.eval.common import (
    LETTER_ANSWER_SUFFIX,
    LONG_MAX_NEW_TOKENS,
    Benchmark,
    Question,
    coverage,
    pair_predictions,
    ratio,
    require_file,
)

QUESTION_FILE = "mmbench/mmbench_dev_en_20231003.tsv"
_ORIGIN = (
    "OpenMMLab (https://download.openmmlab.com/mmclassification/datasets/mmbench/mmbench_dev_en_20231003.tsv, "
    "linked from LLaVA's docs/Evaluation.md)"
)
OPTION_LETTERS = ("A", "B", "C", "D")
CIRCULAR_OFFSET = 1_000_000
REQUIRED_COLUMNS = ("index", "question", "answer", "image", *OPTION_LETTERS)

# VLMEvalKit's matcher (vlmeval/utils/matching_util.py): phrases that mean the model refused (scored as
# option "Z", never right), the characters read as spaces, and its "answer is X" fallback.
REFUSED = "Z"
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_TO_SPACE = str.maketrans(".()[],:;!*#{}", " " * 13)
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")

# pandas.read_table turns these cells into NaN; LLaVA's is_none() also treats 'nan'/'none' in any
# case as missing. An option spelled "None" therefore ends the option list, as it does in LLaVA.
_PANDAS_NA = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
}  # fmt: skip


def _missing(value: str | None) -> bool:
    return value is None or value in _PANDAS_NA or value.lower() in ("nan", "none")


def read_rows(data_dir: Path | str) -> list[dict]:
    """The TSV's rows as dicts (missing cells as None), `index` as int; errors name file and line."""
    path = require_file(Path(data_dir) / QUESTION_FILE, "MMBench", _ORIGIN)
    # Base64 images overflow csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or any(c not in header for c in REQUIRED_COLUMNS):
            raise AlignKDError(f"{path}: header must name the columns {', '.join(REQUIRED_COLUMNS)}; use the official MMBench TSV.")
        rows = []
        for values in reader:
            if not values:
                continue
            if len(values) != len(header):
                raise AlignKDError(f"{path} line {reader.line_num}: {len(values)} fields, the header has {len(header)}; fix that line.")
            row = {k: (None if _missing(v) else v) for k, v in zip(header, values)}
            try:
                row["index"] = int(values[header.index("index")])
            except ValueError as err:
                raise AlignKDError(f"{path} line {reader.line_num}: index {values[header.index('index')]!r} is not an integer; fix that line.") from err
            rows.append(row)
    return rows


def _options(row: dict) -> list[str]:
    """LLaVA's get_options: A, B, C, D up to the first missing one."""
    options = []
    for letter in OPTION_LETTERS:
        if row[letter] is None:
            break
        options.append(row[letter])
    return options


def _question(row: dict) -> Question:
    options = _options(row)
    text = row["question"] or ""
    if row.get("hint") is not None:
        text = row["hint"] + "\n" + text
    for letter, option in zip(OPTION_LETTERS, options):
        text = text + "\n" + letter + ". " + option
    return Question(
        question_id=row["index"],
        prompt=text + "\n" + LETTER_ANSWER_SUFFIX,
        record_prompt=text,
        max_new_tokens=LONG_MAX_NEW_TOKENS,
        image_base64=row["image"],
        category=row.get("category"),
        extra={"round_id": 0, "options": options, "option_char": list(OPTION_LETTERS[: len(options)])},
    )


def load_questions(data_dir: Path | str) -> list[Question]:
    """One question per TSV row (circular copies included), image as base64."""
    return [_question(row) for row in read_rows(data_dir)]


def infer_option(answer: str, letters: Iterable[str] = OPTION_LETTERS) -> str | None:
    """The letter half of VLMEvalKit's `can_infer_option`: the option letter `answer` names, `REFUSED` for a
    refusal, None when no single letter is found. `letters` are the row's options (VLMEvalKit's `choices`)."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(phrase in answer for phrase in _REFUSALS):
        return REFUSED
    tokens = answer.translate(_TO_SPACE).split()
    present = [c for c in letters if c in tokens]
    if len(present) == 1:
        # Only a letter among the last four tokens counts: "The answer is A" is A, while the article
        # that opens "A cat is on the mat" is not (a 4-token "A cat is sitting" is, as in the reference).
        if tokens.index(present[0]) > len(tokens) - 5:
            return present[0]
    elif not present and REFUSED in tokens:
        return REFUSED
    match = _ANSWER_IS.search(answer)
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    return None


def infer_text(answer: str, choices: dict[str, str]) -> str | None:
    """The option-text half (`can_infer_text`): the single option whose text occurs in the answer, if the
    answer is at most twice as long as all option texts together."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    found = [k for k, v in choices.items() if str(v).lower() in answer]
    return found[0] if len(found) == 1 else None


def extract_choice(answer: str, row: dict) -> str | None:
    """Letter chosen by `answer` for `row` (`REFUSED` for a refusal), or None where MMBench would need its judge."""
    # build_choices takes every present option, even after a gap (unlike the prompt's get_options).
    choices = {c: row[c] for c in OPTION_LETTERS if row[c] is not None}
    return infer_option(str(answer), choices) or infer_text(str(answer), choices)


def score(data_dir: Path | str, predictions: list[dict], *, allow_missing: bool = False, source: str = "predictions") -> dict:
    """CircularEval accuracy (0-100, the paper's MMB-dev number), per category and l2-category."""
    rows = read_rows(data_dir)
    questions = [_question(row) for row in rows]
    pairs = pair_predictions(
        questions,
        predictions,
        question_key=lambda q: q.question_id,
        prediction_key=lambda p: p["question_id"],
        source=source,
        allow_missing=allow_missing,
    )
    row_by_index = {row["index"]: row for row in rows}
    answer_by_index = {q.question_id: p["text"] for q, p in pairs}
    groups: dict[int, list[int]] = defaultdict(list)
    for row in rows:
        groups[row["index"] % CIRCULAR_OFFSET].append(row["index"])

    hits_by = {"overall": [], "category": defaultdict(list), "l2-category": defaultdict(list)}
    n_unmatched = n_incomplete = 0
    for main in sorted(i for i in row_by_index if i < CIRCULAR_OFFSET):
        members = sorted(groups[main])
        if any(i not in answer_by_index for i in members):
            n_incomplete += 1  # only reachable with allow_missing: a partial group cannot be a hit
            continue
        extracted = [extract_choice(answer_by_index[i], row_by_index[i]) for i in members]
        n_unmatched += sum(e is None for e in extracted)
        hit = all(e == row_by_index[i]["answer"] for e, i in zip(extracted, members))
        hits_by["overall"].append(hit)
        for key in ("category", "l2-category"):
            hits_by[key][row_by_index[main].get(key) or "uncategorized"].append(hit)

    def rate(hits: list[bool]) -> float:
        return ratio(sum(hits), len(hits))

    n_main = sum(1 for i in row_by_index if i < CIRCULAR_OFFSET)
    return {
        "benchmark": "mmbench",
        "circular_accuracy": rate(hits_by["overall"]),
        "per_category": {k: rate(v) for k, v in sorted(hits_by["category"].items())},
        "per_l2_category": {k: rate(v) for k, v in sorted(hits_by["l2-category"].items())},
        "n_rows_unmatched": n_unmatched,
        "n_questions_circular": n_main,
        "n_groups_incomplete": n_incomplete,
        **coverage(len(questions), len(pairs)),
    }


BENCHMARK = Benchmark(
    name="mmbench",
    title="MMBench dev EN (20231003), CircularEval",
    headline="circular_accuracy",
    load_questions=load_questions,
    score=score,
)
