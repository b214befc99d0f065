"""TextVQA: EvalAI normalisation (quirks included) and the 10-answer leave-one-out soft accuracy."""

import pytest
from evalfiles import write_json, write_jsonl

from alignkd.errors import AlignKDError
from alignkd.eval import textvqa

SUFFIX = "\nAnswer the question using a single word or phrase."
# (image_id, question, ocr tokens, 10 human answers)
ITEMS = [
    ("img1", "What number is on the bus?", ["2", "bus"], ["2", "2", "two"] + ["bus"] * 7),
    ("img1", "What brand is it?", ["coca"], ["coca-cola", "coca cola"] + ["pepsi"] * 8),
    ("img2", "How much?", ["1,000"], ["1,000"] * 10),
    ("img3", "What is written?", [], ["the end"] * 10),
]


def _text(question, tokens):
    return f"{question}\nReference OCR token: {', '.join(tokens)}{SUFFIX}"


@pytest.fixture
def data(tmp_path):
    write_jsonl(
        tmp_path / textvqa.QUESTION_FILE,
        [{"question_id": img, "image": f"{img}.jpg", "text": _text(q, ocr), "category": "default"} for img, q, ocr, _ in ITEMS],
    )
    write_json(
        tmp_path / textvqa.ANNOTATION_FILE,
        {"dataset_name": "textvqa", "data": [{"image_id": img, "question": q, "answers": a, "question_id": n} for n, (img, q, _, a) in enumerate(ITEMS)]},
    )
    return tmp_path


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Two.", "2"),
        ("1,000", "1000"),
        ("none", "0"),
        ("The cat's toy", "cat 's toy"),
        ("x-y", "x y"),
        ("x - y", "x y"),
        ("a dog", "dog"),
        ("hello!", "hello"),
        ("(x)", "x"),
        ("Yes?", "yes"),
        ("dont", "don't"),
        ("somebody'd", "somebodyd"),
        ("3.5", "3.5"),
        ("end.", "end"),
        ("1.a", "1a"),
        ("line\none", "line 1"),
        ("a" + "." * 40, "a" + "." * 8),  # re.UNICODE passed as count: only 32 periods go
    ],
)
def test_evalai_normalisation(raw, normalized):
    assert textvqa.normalize_answer(raw) == normalized


def test_digit_comma_rule_deletes_every_mark():
    assert textvqa.process_punctuation("1,000 x-y") == "1000 xy"
    assert textvqa.process_punctuation("x-y") == "x y"


def test_leave_one_out_soft_scores():
    scores = textvqa.answer_scores(["2", "2", "two"] + ["bus"] * 7)
    assert scores["2"] == pytest.approx(0.9, abs=1e-12)  # 3 x 2/3 + 7 x 1, over 10
    assert scores["bus"] == 1.0
    # an answer given by one human: 0 when it is left out, 1/3 in the 9 other subsets
    assert textvqa.answer_scores(["x"] + ["b"] * 9)["x"] == pytest.approx(0.3, abs=1e-12)


def test_prompt_processor_variants():
    assert textvqa.question_from_prompt(_text("What Is It?", ["a"])) == "what is it?"
    assert textvqa.question_from_prompt("Reference OCR token: a\nWhat?\nAnswer briefly.") == "what?"
    assert textvqa.question_from_prompt("OCR tokens: a b Question: Why? Short answer:") == "why?"
    assert textvqa.question_from_prompt("Where?\nAnswer briefly.") == "where?"
    with pytest.raises(AlignKDError, match="cannot recover the question"):
        textvqa.question_from_prompt("one line only")


def test_hand_worked_scores(data, answers):
    qs = textvqa.load_questions(data)
    assert qs[0].question_id == qs[1].question_id == "img1"  # the id is the image id
    result = textvqa.score(data, answers(qs, ["Two.", "Coca Cola", "1000", "fin"]))
    # 0.9 + (2 x 1/3 + 8 x 2/3)/10 + 1 + 0, over 4
    assert result["accuracy"] == pytest.approx(62.5, abs=1e-9)


def test_answers_pair_by_image_and_question_in_any_order(data, answers):
    qs = textvqa.load_questions(data)
    preds = answers(qs, ["2", "coca-cola", "1,000", "The End."])[::-1]
    assert textvqa.score(data, preds)["accuracy"] == pytest.approx((0.9 + 0.6 + 1 + 1) / 4 * 100, abs=1e-9)


def test_perfect_predictions_score_100(data, answers):
    qs = textvqa.load_questions(data)
    assert textvqa.score(data, answers(qs, ["bus", "pepsi", "1000", "end"]))["accuracy"] == 100.0


def test_annotation_must_have_ten_answers(data, answers):
    write_json(data / textvqa.ANNOTATION_FILE, {"data": [{"image_id": img, "question": q, "answers": a[:9]} for img, q, _, a in ITEMS]})
    with pytest.raises(AlignKDError, match=r"has 9 answers, TextVQA's scorer needs exactly 10"):
        textvqa.score(data, answers(textvqa.load_questions(data), ["x"] * 4))


def test_missing_annotation_file_names_source(data):
    (data / textvqa.ANNOTATION_FILE).unlink()
    with pytest.raises(AlignKDError, match=r"TextVQA_0\.5\.1_val\.json not found.*textvqa\.org"):
        textvqa.score(data, [])


def test_missing_predictions(data, answers):
    preds = answers(textvqa.load_questions(data), ["bus", "pepsi", "1000", "end"])
    with pytest.raises(AlignKDError, match=r"1 of 4 question\(s\) have no prediction \(question_id 'img3'\)"):
        textvqa.score(data, preds[:3])
    partial = textvqa.score(data, preds[:3], allow_missing=True)
    assert partial["accuracy"] == 100.0 and partial["n_scored"] == 3 and partial["partial"]
