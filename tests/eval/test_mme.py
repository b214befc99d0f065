"""MME: calculation.py's yes/no parsing, acc + acc+ per subtask, perception / cognition sums."""

import pytest
from evalfiles import write_jsonl

from alignkd.errors import AlignKDError
from alignkd.eval import mme

SUFFIX = "\nAnswer the question using a single word or phrase."
YN = " Please answer yes or no."
# category -> image -> [(question, gt)]; existence uses the flat layout, the others images/ + questions_answers_YN/
RELEASE = {
    "existence": {"e1.jpg": [("Is there a dog?", "Yes"), ("Is there a cat?", "No")], "e2.jpg": [("Is there a car?", "Yes"), ("Is there a bus?", "No")]},
    "color": {"c1.png": [("Is the ball red?", "Yes"), ("Is the ball blue?", "No")]},
    "commonsense_reasoning": {"r1.jpg": [("Is it safe?", "Yes"), ("Is it hot?", "No")]},
}
FLAT = {"existence"}


def _question_id(category, image):
    return f"{category}/{image}" if category in FLAT else f"{category}/images/{image}"


@pytest.fixture
def data(tmp_path):
    release = tmp_path / mme.RELEASE_DIR
    rows = []
    for category, images in RELEASE.items():
        image_dir = release / category if category in FLAT else release / category / "images"
        qa_dir = release / category if category in FLAT else release / category / "questions_answers_YN"
        image_dir.mkdir(parents=True, exist_ok=True)
        qa_dir.mkdir(parents=True, exist_ok=True)
        for image, qas in images.items():
            (image_dir / image).write_bytes(b"")
            lines = [f"{q}{YN}\t{a}" for q, a in qas]
            if image == "r1.jpg":
                lines[1] = lines[1].replace(YN, "  Please answer yes or no.")  # the release's double-space lines
            (qa_dir / (image.split(".")[0] + ".txt")).write_text("\n".join(lines) + "\n")
            qid = _question_id(category, image)
            rows += [{"question_id": qid, "image": qid, "text": q + SUFFIX, "category": category} for q, _ in qas]
    write_jsonl(tmp_path / mme.QUESTION_FILE, rows)
    return tmp_path


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("YES", "yes"),
        ("No, there is not.", "no"),
        ("Not sure", "no"),
        ("I think yes", "other"),
        ("n", "other"),
        ("eyes", "yes"),  # "yes" inside the first 4 characters
        ("noyes", "no"),
    ],
)
def test_parse_answer(text, parsed):
    assert mme.parse_answer(text) == parsed


def test_questions_and_both_image_layouts(data):
    qs = mme.load_questions(data)
    assert len(qs) == 8 and qs[0].question_id == qs[1].question_id == "existence/e1.jpg"
    assert qs[0].prompt == "Is there a dog?" + SUFFIX and qs[0].max_new_tokens == 128
    assert qs[0].image_path == data / mme.RELEASE_DIR / "existence/e1.jpg"
    assert qs[4].image_path == data / mme.RELEASE_DIR / "color/images/c1.png"


def test_hand_worked_scores(data, answers):
    qs = mme.load_questions(data)
    texts = ["Yes", "yes.", "Yes, there is.", "Not at all", "I think yes", "no", "YES", "n"]
    result = mme.score(data, answers(qs, texts))
    assert result["subtasks"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert result["subtasks"]["color"] == {"acc": 50.0, "acc_plus": 0.0, "score": 50.0}
    assert result["subtasks"]["commonsense_reasoning"] == {"acc": 50.0, "acc_plus": 0.0, "score": 50.0}
    assert result["perception"] == 175.0
    assert result["cognition"] == 50.0
    assert "OCR" in result["missing_subtasks"] and "color" not in result["missing_subtasks"]


def test_perfect_predictions_score_200_per_subtask(data, answers):
    qs = mme.load_questions(data)
    gts = [a for images in RELEASE.values() for qas in images.values() for _, a in qas]
    result = mme.score(data, answers(qs, gts))
    assert result["perception"] == 400.0  # 2 perception subtasks here; 2000 with all 10
    assert result["cognition"] == 200.0


def test_allow_missing_drops_half_answered_images(data, answers):
    qs = mme.load_questions(data)
    preds = answers(qs, ["Yes", "No", "Yes", "No", "Yes", "No", "Yes", "No"])
    with pytest.raises(AlignKDError, match=r"1 of 8 question\(s\) have no prediction \(question_id 'existence/e1.jpg'\)"):
        mme.score(data, preds[1:])
    result = mme.score(data, preds[1:], allow_missing=True)
    assert result["subtasks"]["existence"] == {"acc": 100.0, "acc_plus": 100.0, "score": 200.0}
    assert result["n_scored"] == 6 and result["partial"]


def test_prediction_for_an_unknown_question(data, answers):
    qs = mme.load_questions(data)
    preds = answers(qs, ["Yes"] * 8)
    preds[0] = dict(preds[0], prompt="Is there a unicorn?" + SUFFIX)
    with pytest.raises(AlignKDError, match=r"1 prediction\(s\) match no question.*'existence/e1.jpg'"):
        mme.score(data, preds)


def test_malformed_ground_truth_line(data, answers):
    (data / mme.RELEASE_DIR / "existence/e2.txt").write_text("Is there a car? Please answer yes or no. Yes\n")
    with pytest.raises(AlignKDError, match=r"e2\.txt line 1: expected 'question<TAB>answer'"):
        mme.score(data, answers(mme.load_questions(data), ["Yes"] * 8))


def test_missing_release_folder(data, answers):
    import shutil

    shutil.rmtree(data / mme.RELEASE_DIR)
    with pytest.raises(AlignKDError, match=r"MME_Benchmark_release_version not found.*MME authors"):
        mme.score(data, [])
