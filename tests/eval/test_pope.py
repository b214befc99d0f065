"""POPE: LLaVA's yes/no parsing, per-subset metrics with yes as positive, mean F1 over subsets."""

import pytest
from evalfiles import write_jsonl

from alignkd.errors import AlignKDError
from alignkd.eval import pope

SUFFIX = "\nAnswer the question using a single word or phrase."
# subset -> [(image, object, label, prediction)]
CASES = {
    "adversarial": [("a1.jpg", "dog", "yes", "Yes"), ("a1.jpg", "cat", "yes", "No, there is not."), ("a2.jpg", "car", "no", "No"), ("a2.jpg", "bus", "no", "Yes.")],
    "popular": [("p1.jpg", "dog", "yes", "There is a dog."), ("p1.jpg", "cat", "no", "There is no cat."), ("p2.jpg", "cup", "yes", "NO"), ("p2.jpg", "car", "no", "Not at all")],
    "random": [("r1.jpg", "dog", "yes", "yes"), ("r1.jpg", "bed", "no", "no")],
}


@pytest.fixture
def data(tmp_path):
    rows, qid = [], 0
    for subset, cases in CASES.items():
        labels = []
        for n, (image, obj, label, _) in enumerate(cases, start=1):
            qid += 1
            rows.append({"question_id": qid, "image": image, "text": f"Is there a {obj} in the image?{SUFFIX}", "category": subset})
            labels.append({"question_id": n, "image": image, "text": f"Is there a {obj} in the image?", "label": label})
        write_jsonl(tmp_path / pope.LABEL_FILE.format(subset=subset), labels)
    write_jsonl(tmp_path / pope.QUESTION_FILE, rows)
    return tmp_path


def _predictions(answers, data):
    texts = [case[3] for cases in CASES.values() for case in cases]
    return answers(pope.load_questions(data), texts)


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("Yes", "yes"),
        ("No, there is not.", "no"),
        ("There is no cat.", "no"),
        ("Yes. No.", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # only No / no / not are negative tokens
        ("Not at all", "yes"),
        ("It is not", "no"),
        ("no,", "no"),
    ],
)
def test_parse_answer(text, parsed):
    assert pope.parse_answer(text) == parsed


def test_hand_worked_scores(data, answers):
    result = pope.score(data, _predictions(answers, data))
    adv, pop, rnd = (result["subsets"][s] for s in ("adversarial", "popular", "random"))
    assert (adv["tp"], adv["fp"], adv["tn"], adv["fn"]) == (1, 1, 1, 1)
    assert adv["accuracy"] == adv["precision"] == adv["recall"] == adv["f1"] == adv["yes_ratio"] == 50.0
    assert (pop["tp"], pop["fp"], pop["tn"], pop["fn"]) == (2, 1, 1, 0)
    assert pop["accuracy"] == 75.0 and pop["recall"] == 100.0 and pop["yes_ratio"] == 75.0
    assert pop["precision"] == pytest.approx(200 / 3, abs=1e-9)
    assert pop["f1"] == pytest.approx(80.0, abs=1e-9)
    assert rnd["f1"] == 100.0 and rnd["accuracy"] == 100.0 and rnd["yes_ratio"] == 50.0
    assert result["mean_f1"] == pytest.approx((50 + 80 + 100) / 3, abs=1e-9)
    assert result["mean_accuracy"] == pytest.approx(75.0, abs=1e-9)


def test_perfect_predictions_score_100(data, answers):
    labels = [case[2] for cases in CASES.values() for case in cases]
    result = pope.score(data, answers(pope.load_questions(data), [label.capitalize() + "." for label in labels]))
    assert result["mean_f1"] == 100.0


def test_answer_order_does_not_matter(data, answers):
    preds = _predictions(answers, data)
    assert pope.score(data, preds[::-1])["mean_f1"] == pope.score(data, preds)["mean_f1"]


def test_label_file_out_of_order_is_an_error(data, answers):
    path = data / pope.LABEL_FILE.format(subset="adversarial")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[2:] + lines[:2]) + "\n")
    with pytest.raises(AlignKDError, match=r"coco_pope_adversarial\.json line 1 is about a2\.jpg"):
        pope.score(data, _predictions(answers, data))


def test_missing_label_file_names_source(data, answers):
    (data / pope.LABEL_FILE.format(subset="random")).unlink()
    with pytest.raises(AlignKDError, match=r"coco_pope_random\.json not found.*AoiDragon/POPE"):
        pope.score(data, _predictions(answers, data))


def test_missing_and_unknown_predictions(data, answers):
    preds = _predictions(answers, data)
    with pytest.raises(AlignKDError, match=r"2 of 10 question\(s\) have no prediction \(question_id 9, 10\)"):
        pope.score(data, preds[:8])
    partial = pope.score(data, preds[:8], allow_missing=True)
    assert set(partial["subsets"]) == {"adversarial", "popular"} and partial["partial"]
    with pytest.raises(AlignKDError, match=r"1 prediction\(s\) match no question.*11"):
        pope.score(data, preds + [dict(preds[0], question_id=11)])


def test_bad_category_in_question_file(data):
    write_jsonl(data / pope.QUESTION_FILE, [{"question_id": 1, "image": "x.jpg", "text": "Is there?", "category": "hard"}])
    with pytest.raises(AlignKDError, match=r"category 'hard', expected one of adversarial, popular, random"):
        pope.load_questions(data)
