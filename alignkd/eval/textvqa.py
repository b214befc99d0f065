"""TextVQA val (v0.5.1, with Rosetta OCR tokens in the prompt): reader and VQA soft-accuracy scorer.

Reference: LLaVA `llava/eval/eval_textvqa.py` + `m4c_evaluator.py` (EvalAIAnswerProcessor and
TextVQAAccuracyEvaluator, themselves from facebookresearch/mmf). Answers are joined to annotations on
(image_id, question.lower()), the question being recovered from the answer's prompt by LLaVA's
`prompt_processor`; in `llava_textvqa_val_v051_ocr.jsonl` the question_id *is* the image id.

Quirks kept for bit-compatibility with the published numbers:
* the period regex `(?!<=\\d)(\\.)(?!\\d)` is a malformed look-behind (it is a look-ahead for the
  literal "<=" + digit), so it deletes every period not followed by a digit;
* `PERIOD_STRIP.sub("", text, re.UNICODE)` passes re.UNICODE (32) as the *count*: at most 32
  periods are deleted;
* commas are deleted before the punctuation pass, so the digit-comma-digit rule there never fires
  from `normalize_answer` ("1,000" becomes "1000" through the comma deletion instead);
* the contraction table maps "somebody'd" to "somebodyd".

    python -m pytest tests/eval/test_textvqa.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

from alignkd.errors import AlignKDError
from alignkd.eval.common import (
    Benchmark,
    Question,
    llava_questions,
    coverage,
    load_json,
    pair_predictions,
    require_file,
)

QUESTION_FILE = "textvqa/llava_textvqa_val_v051_ocr.jsonl"
ANNOTATION_FILE = "textvqa/TextVQA_0.5.1_val.json"
IMAGE_DIR = "textvqa/train_images"
_LLAVA_ZIP = "LLaVA's eval.zip (docs/Evaluation.md) or MobileVLM's benchmark_data.zip"
_TEXTVQA_SITE = "the TextVQA site (https://textvqa.org/dataset, TextVQA_0.5.1_val.json and train_val_images)"

# EvalAI's contraction table, "wrong>right" pairs, verbatim including its odd entries.
_CONTRACTION_PAIRS = """
    aint>ain't arent>aren't cant>can't couldve>could've couldnt>couldn't couldn'tve>couldn't've
    couldnt've>couldn't've didnt>didn't doesnt>doesn't dont>don't hadnt>hadn't
    hadnt've>hadn't've hadn'tve>hadn't've hasnt>hasn't havent>haven't hed>he'd hed've>he'd've
    he'dve>he'd've hes>he's howd>how'd howll>how'll hows>how's Id've>I'd've I'dve>I'd've Im>I'm
    Ive>I've isnt>isn't itd>it'd itd've>it'd've it'dve>it'd've itll>it'll let's>let's maam>ma'am
    mightnt>mightn't mightnt've>mightn't've mightn'tve>mightn't've mightve>might've
    mustnt>mustn't mustve>must've neednt>needn't notve>not've oclock>o'clock oughtnt>oughtn't
    ow's'at>'ow's'at 'ows'at>'ow's'at 'ow'sat>'ow's'at shant>shan't shed've>she'd've
    she'dve>she'd've she's>she's shouldve>should've shouldnt>shouldn't shouldnt've>shouldn't've
    shouldn'tve>shouldn't've somebody'd>somebodyd somebodyd've>somebody'd've
    somebody'dve>somebody'd've somebodyll>somebody'll somebodys>somebody's someoned>someone'd
    someoned've>someone'd've someone'dve>someone'd've someonell>someone'll someones>someone's
    somethingd>something'd somethingd've>something'd've something'dve>something'd've
    somethingll>something'll thats>that's thered>there'd thered've>there'd've
    there'dve>there'd've therere>there're theres>there's theyd>they'd theyd've>they'd've
    they'dve>they'd've theyll>they'll theyre>they're theyve>they've twas>'twas wasnt>wasn't
    wed've>we'd've we'dve>we'd've weve>we've werent>weren't whatll>what'll whatre>what're
    whats>what's whatve>what've whens>when's whered>where'd wheres>where's whereve>where've
    whod>who'd whod've>who'd've who'dve>who'd've wholl>who'll whos>who's whove>who've
    whyll>why'll whyre>why're whys>why's wont>won't wouldve>would've wouldnt>wouldn't
    wouldnt've>wouldn't've wouldn'tve>wouldn't've yall>y'all yall'll>y'all'll y'allll>y'all'll
    yall'd've>y'all'd've y'alld've>y'all'd've y'all'dve>y'all'd've youd>you'd youd've>you'd've
    you'dve>you'd've youll>you'll youre>you're youve>you've
"""
CONTRACTIONS = dict(pair.split(">") for pair in _CONTRACTION_PAIRS.split())
NUMBER_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
# EvalAI passes re.UNICODE positionally as sub()'s count argument.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """EvalAI's punctuation pass: delete a mark next to a space (or anywhere, if the text has a
    digit,digit pattern), else replace it with a space; then delete up to 32 non-decimal periods."""
    out = text
    has_digit_comma = COMMA_STRIP.search(text) is not None
    for p in PUNCTUATIONS:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    words = [NUMBER_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """EvalAIAnswerProcessor.__call__, applied to predictions and to every ground-truth answer."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def answer_scores(gt_answers: list[str]) -> dict[str, float]:
    """Soft accuracy of each distinct normalised human answer: the mean over the 10 leave-one-out
    subsets of min(1, matches among the other 9 / 3)."""
    answers = [normalize_answer(a) for a in gt_answers]
    scores = {}
    for candidate in set(answers):
        accs = []
        for i in range(len(answers)):
            matches = sum(1 for j, a in enumerate(answers) if j != i and a == candidate)
            accs.append(min(1, float(matches) / 3))
        scores[candidate] = sum(accs) / len(accs)
    return scores


def question_from_prompt(prompt: str) -> str:
    """LLaVA eval_textvqa.py's prompt_processor: the lower-cased question inside a prompt."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match is None:
            raise AlignKDError(f"cannot find the question in prompt {prompt!r:.120}; write the question file's text as the prompt.")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise AlignKDError(
            f"cannot recover the question from prompt {prompt!r:.120}; TextVQA prompts must be "
            "'question\\nReference OCR token: ...\\nAnswer ...' as in llava_textvqa_val_v051_ocr.jsonl."
        )
    return question.lower()


def load_questions(data_dir: Path | str) -> list[Question]:
    """Read `textvqa/llava_textvqa_val_v051_ocr.jsonl` (question_id = TextVQA image id)."""
    data_dir = Path(data_dir)
    path = require_file(data_dir / QUESTION_FILE, "TextVQA", _LLAVA_ZIP)
    return llava_questions(path, lambda name: data_dir / IMAGE_DIR / name)


def score(data_dir: Path | str, predictions: list[dict], *, allow_missing: bool = False, source: str = "predictions") -> dict:
    """TextVQA accuracy (0-100): mean soft accuracy of the normalised answers."""
    data_dir = Path(data_dir)
    questions = load_questions(data_dir)
    ann_path = require_file(data_dir / ANNOTATION_FILE, "TextVQA", _TEXTVQA_SITE)
    data = load_json(ann_path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise AlignKDError(f"{ann_path}: expected an object with a 'data' list; use TextVQA_0.5.1_val.json.")
    # As in eval_textvqa.py, a later duplicate (image, question) entry replaces an earlier one.
    annotations = {(a["image_id"], a["question"].lower()): a for a in data["data"]}
    pairs = pair_predictions(
        questions,
        predictions,
        question_key=lambda q: (q.question_id, question_from_prompt(q.record_prompt)),
        prediction_key=lambda p: (p["question_id"], question_from_prompt(p["prompt"])),
        source=source,
        allow_missing=allow_missing,
    )
    total = 0.0
    for question, pred in pairs:
        key = (question.question_id, question_from_prompt(question.record_prompt))
        annotation = annotations.get(key)
        if annotation is None:
            raise AlignKDError(f"{ann_path} has no entry for image {key[0]!r} question {key[1]!r}; use the annotation file that matches {QUESTION_FILE}.")
        if len(annotation["answers"]) != 10:
            raise AlignKDError(
                f"{ann_path}: image {key[0]!r} question {key[1]!r} has {len(annotation['answers'])} answers, "
                "TextVQA's scorer needs exactly 10; regenerate the file."
            )
        total += answer_scores(annotation["answers"]).get(normalize_answer(pred["text"]), 0.0)
    return {
        "benchmark": "textvqa",
        "accuracy": 100.0 * (total / len(pairs)) if pairs else 0.0,
        **coverage(len(questions), len(pairs)),
    }


BENCHMARK = Benchmark(
    name="textvqa",
    title="TextVQA val (OCR tokens)",
    headline="accuracy",
    load_questions=load_questions,
    score=score,
)
