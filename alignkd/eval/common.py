"""Shared pieces of the benchmark readers: the `Question` type, LLaVA answer files, input checks.

Every benchmark module (gqa, sqa, textvqa, mme, mmbench, pope) reads the official files of
LLaVA's `playground/data/eval/` layout (see docs/benchmark-layout.md) into `Question`s, and scores a list
of answer-file records (LLaVA's `model_vqa_*.py` JSONL) exactly as the reference scripts do.
No torch here: `alignkd --help` and scoring stay fast.

    python -m pytest tests/eval -q
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

from alignkd.errors import AlignKDError

# The suffixes LLaVA's docs/Evaluation.md appends to questions.
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
LETTER_ANSWER_SUFFIX = "Answer with the option's letter from the given choices directly."

# model_vqa_loader.py defaults to 128 new tokens; model_vqa_science.py and
# model_vqa_mmbench.py hard-code 1024.
LOADER_MAX_NEW_TOKENS = 128
LONG_MAX_NEW_TOKENS = 1024

# How many offending ids an error message lists before saying "...".
_SHOW = 5


@dataclass(frozen=True)
class Question:
    """One benchmark question, ready for generation.

    `prompt` is the user message exactly as the official LLaVA loader builds it, *without* the
    image placeholder: the caller prepends `"<image>\\n"` (LLaVA's DEFAULT_IMAGE_TOKEN + newline)
    when `has_image`, then wraps it in the conversation template. `record_prompt` is the string
    LLaVA writes into the answer file's "prompt" field (for SQA it carries `<image>\\n`, for MMBench
    it lacks the answer-format suffix); scorers that key on the prompt (MME, TextVQA) read it back.
    """

    question_id: Any
    prompt: str
    record_prompt: str
    max_new_tokens: int
    image_path: Path | None = None
    image_base64: str | None = None
    category: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def has_image(self) -> bool:
        return self.image_path is not None or self.image_base64 is not None

    def load_image(self):
        """The question's image as an RGB PIL image (PIL is imported here, not at module import)."""
        from PIL import Image, UnidentifiedImageError

        if self.image_base64 is not None:
            source, where = io.BytesIO(base64.b64decode(self.image_base64)), f"question {self.question_id}'s base64 image"
        elif self.image_path is not None:
            if not self.image_path.is_file():
                raise AlignKDError(
                    f"{self.image_path} not found: question {self.question_id} needs it; "
                    "unpack the benchmark's images where docs/benchmark-layout.md puts them."
                )
            source, where = self.image_path, str(self.image_path)
        else:
            raise AlignKDError(f"question {self.question_id} has no image; check has_image before load_image().")
        try:
            with Image.open(source) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise AlignKDError(f"{where} is not a readable image ({err}); re-download the benchmark images.") from err


@dataclass(frozen=True)
class Benchmark:
    """A registry entry: the two functions every benchmark module exposes, plus naming."""

    name: str
    title: str
    headline: str
    load_questions: Callable[[Path | str], list[Question]]
    score: Callable[..., dict]

    def score_file(self, data_dir: Path | str, answers_file: Path | str, *, allow_missing: bool = False) -> dict:
        """Read a LLaVA answer file and score it; errors name the file."""
        return self.score(data_dir, read_answers(answers_file), allow_missing=allow_missing, source=str(answers_file))


# ---------------------------------------------------------------------------------------------
# Files


def require_file(path: Path, benchmark: str, origin: str) -> Path:
    """Fail with one sentence naming the missing file and where the official one comes from."""
    if not path.is_file():
        raise AlignKDError(
            f"{path} not found: {benchmark} needs it; get it from {origin} and unpack it in LLaVA's "
            "playground/data/eval layout (docs/benchmark-layout.md), or generate a synthetic suite with `alignkd data synth`."
        )
    return path


def require_dir(path: Path, benchmark: str, origin: str) -> Path:
    if not path.is_dir():
        raise AlignKDError(
            f"{path} not found: {benchmark} needs this folder; get it from {origin} and unpack it in LLaVA's "
            "playground/data/eval layout (docs/benchmark-layout.md)."
        )
    return path


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise AlignKDError(
            f"{path} line {err.lineno}: not valid JSON ({err.msg}); re-download or regenerate the file."
        ) from err


def read_jsonl(path: Path | str, required: Sequence[str] = ()) -> list[dict]:
    """Read a JSONL file; a bad line or a line missing a required key names file and line number."""
    path = Path(path)
    if not path.is_file():
        raise AlignKDError(f"{path} not found; pass the path of an existing JSONL file.")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise AlignKDError(f"{path} line {lineno}: not valid JSON ({err.msg}); fix or delete that line.") from err
            if not isinstance(record, dict):
                raise AlignKDError(f"{path} line {lineno}: expected a JSON object, got {type(record).__name__}; fix that line.")
            missing = [k for k in required if k not in record]
            if missing:
                raise AlignKDError(f"{path} line {lineno}: missing key(s) {', '.join(missing)}; fix that line.")
            records.append(record)
    return records


# ---------------------------------------------------------------------------------------------
# Answer files (LLaVA's model_vqa_*.py format)

ANSWER_KEYS = ("question_id", "prompt", "text")


def llava_questions(path: Path, image_path, required: Sequence[str] = ("question_id", "image", "text"),
                    category=lambda line: None) -> list[Question]:
    """Questions of a LLaVA model_vqa_loader file (GQA, TextVQA, MME, POPE): prompt = the line's `text`,
    128 new tokens; `image_path(name)` resolves the line's `image`; `category(line)` when it has none."""
    return [
        Question(
            question_id=line["question_id"],
            prompt=line["text"],
            record_prompt=line["text"],
            max_new_tokens=LOADER_MAX_NEW_TOKENS,
            image_path=image_path(line["image"]),
            category=line.get("category", category(line)),
        )
        for line in read_jsonl(path, required=required)
    ]


def read_answers(path: Path | str) -> list[dict]:
    """Read a LLaVA answer file: JSONL {"question_id","prompt","text","answer_id","model_id","metadata"}."""
    return read_jsonl(path, required=ANSWER_KEYS)


def answer_record(question: Question, text: str, model_id: str) -> dict:
    """The answer-file line LLaVA's loader would write for `question` (MMBench adds its round fields)."""
    record = {"question_id": question.question_id}
    if "round_id" in question.extra:
        record["round_id"] = question.extra["round_id"]
    record["prompt"] = question.record_prompt
    record["text"] = text
    for key in ("options", "option_char"):
        if key in question.extra:
            record[key] = question.extra[key]
    record.update({"answer_id": uuid.uuid4().hex, "model_id": model_id, "metadata": {}})
    return record


def write_answers(path: Path | str, records: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Matching predictions to questions


def _preview(items: list) -> str:
    shown = ", ".join(repr(i) for i in items[:_SHOW])
    return shown + (", ..." if len(items) > _SHOW else "")


def pair_predictions(
    questions: Sequence[Question],
    predictions: Sequence[dict],
    *,
    question_key: Callable[[Question], Hashable],
    prediction_key: Callable[[dict], Hashable],
    source: str,
    allow_missing: bool,
) -> list[tuple[Question, dict]]:
    """Pair each question with its prediction, in question order.

    Keys need not be unique (MME shares one question_id between an image's two questions, TextVQA's
    id is the image id): questions and predictions with equal keys pair up in file order.
    Unknown or surplus predictions are always an error; missing ones are an error unless
    `allow_missing`, in which case unanswered questions are left out.
    """
    by_key: dict[Hashable, list[dict]] = {}
    for pred in predictions:
        missing = [k for k in ANSWER_KEYS if k not in pred]
        if missing:
            raise AlignKDError(f"{source}: a prediction lacks {', '.join(missing)} ({pred!r:.120}); write LLaVA answer records.")
        by_key.setdefault(prediction_key(pred), []).append(pred)
    pairs, unanswered = [], []
    for q in questions:
        queue = by_key.get(question_key(q))
        if queue:
            pairs.append((q, queue.pop(0)))
        else:
            unanswered.append(q.question_id)
    surplus = [p["question_id"] for queue in by_key.values() for p in queue]
    if surplus:
        raise AlignKDError(
            f"{source}: {len(surplus)} prediction(s) match no question of the benchmark or repeat one "
            f"(question_id {_preview(surplus)}); score answers against the benchmark they were generated for."
        )
    if unanswered and not allow_missing:
        raise AlignKDError(
            f"{source}: {len(unanswered)} of {len(questions)} question(s) have no prediction "
            f"(question_id {_preview(unanswered)}); finish generation, or pass --allow-missing (allow_missing=True from Python) to score only the answered ones."
        )
    return pairs


def coverage(n_questions: int, n_scored: int) -> dict:
    """The fields every result carries so a partial score is never mistaken for a full one."""
    partial = n_scored < n_questions
    out = {"n_questions": n_questions, "n_scored": n_scored, "partial": partial}
    if partial:
        out["note"] = f"scored only the {n_scored} answered of {n_questions} questions; not comparable with paper numbers"
    return out


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator on the 0-100 scale; 0.0 for an empty denominator.

    Divides first, as the reference scripts do (`acc * 100`), so the floats agree to the last bit.
    """
    return 100.0 * (numerator / denominator) if denominator else 0.0
