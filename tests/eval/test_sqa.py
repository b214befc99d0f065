"""ScienceQA-IMG: LLaVA's answer parsing (letter, "X. ", "The answer is X."), FAILED, IMG accuracy."""

import pytest
from evalfiles import write_json

from alignkd.errors import AlignKDError
from alignkd.eval import sqa

LETTER = "\nAnswer with the option's letter from the given choices directly."
# pid: (choices, answer index, has image, split)
PROBLEMS = {
    "p1": (["cat", "dog", "cow", "hen"], 1, True, "test"),
    "p2": (["cat", "dog", "cow"], 0, True, "test"),
    "p3": (["yes", "no"], 1, False, "test"),
    "p4": (["up", "down"], 1, True, "test"),
    "p5": (["red", "blue"], 0, True, "test"),
    "p6": (["x", "y"], 0, True, "val"),
}


def _body(pid, choices):
    return f"Context: hint {pid}\nWhich one?\n" + "\n".join(f"{'ABCDE'[i]}. {c}" for i, c in enumerate(choices))


@pytest.fixture
def data(tmp_path):
    items = []
    for pid, (choices, _, has_image, _) in PROBLEMS.items():
        item = {"id": pid, "conversations": [{"from": "human", "value": ("<image>\n" if has_image else "") + _body(pid, choices)}, {"from": "gpt", "value": "A"}]}
        if has_image:
            item["image"] = f"{pid}/image.png"
        items.append(item)
    write_json(tmp_path / sqa.QUESTION_FILE, items)
    write_json(
        tmp_path / sqa.PROBLEMS_FILE,
        {pid: {"question": "Which one?", "choices": c, "answer": a, "hint": "", "image": "image.png" if img else None, "split": s} for pid, (c, a, img, s) in PROBLEMS.items()},
    )
    splits = {"train": [], "val": ["p6"], "test": ["p1", "p2", "p3", "p4", "p5"]}
    write_json(tmp_path / sqa.SPLITS_FILE, splits)
    return tmp_path


def test_prompts_as_model_vqa_science_builds_them(data):
    qs = {q.question_id: q for q in sqa.load_questions(data)}
    assert qs["p1"].prompt == _body("p1", PROBLEMS["p1"][0]) + LETTER
    assert qs["p1"].record_prompt == "<image>\n" + qs["p1"].prompt
    assert qs["p1"].image_path == data / "scienceqa/images/test/p1/image.png"
    assert qs["p3"].has_image is False and qs["p3"].record_prompt == qs["p3"].prompt
    assert qs["p1"].max_new_tokens == 1024


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("C", "C"),
        ("D. dog", "D"),
        ("The answer is B.", "B"),
        ("The answer is B", "FAILED"),  # the regex needs one character after the letter
        ("The answer is A. The answer is A.", "FAILED"),  # two matches
        ("(B)", "FAILED"),
        ("b", "FAILED"),
        ("F", "FAILED"),
        ("B.", "FAILED"),  # "X. " needs the space
    ],
)
def test_parse_answer(text, parsed):
    assert sqa.parse_answer(text) == parsed


def test_hand_worked_scores(data, answers):
    qs = sqa.load_questions(data)
    texts = {"p1": "The answer is B.", "p2": "A. cat", "p3": "B", "p4": "The answer is B", "p5": "E", "p6": "A"}
    result = sqa.score(data, answers(qs, [texts[q.question_id] for q in qs]))
    assert result["img_accuracy"] == 50.0  # p1, p2 right; p4 FAILED; p5 "E" is not a choice
    assert result["accuracy"] == 60.0  # + text-only p3; p6 (val split) ignored
    assert result["n_img"] == 4 and result["n_failed_parse"] == 1
    assert result["n_questions"] == 5


def test_perfect_predictions_score_100(data, answers):
    qs = [q for q in sqa.load_questions(data) if q.question_id != "p6"]
    result = sqa.score(data, answers(qs, ["ABCDE"[PROBLEMS[q.question_id][1]] for q in qs]))
    assert result["img_accuracy"] == 100.0 and result["accuracy"] == 100.0


def test_missing_problems_file(data, answers):
    (data / sqa.PROBLEMS_FILE).unlink()
    with pytest.raises(AlignKDError, match=r"problems\.json not found.*lupantech/ScienceQA"):
        sqa.score(data, [])


def test_missing_and_unknown_predictions(data, answers):
    qs = [q for q in sqa.load_questions(data) if q.question_id != "p6"]
    preds = answers(qs, ["B"] * 5)
    with pytest.raises(AlignKDError, match=r"1 of 5 question\(s\) have no prediction \(question_id 'p5'\)"):
        sqa.score(data, preds[:4])
    assert sqa.score(data, preds[:1], allow_missing=True)["img_accuracy"] == 100.0
    with pytest.raises(AlignKDError, match=r"1 prediction\(s\) match no question.*'p99'"):
        sqa.score(data, preds + [dict(preds[0], question_id="p99")])


def test_question_file_must_be_a_list(tmp_path):
    write_json(tmp_path / sqa.QUESTION_FILE, {"id": "p1"})
    with pytest.raises(AlignKDError, match=r"llava_test_CQM-A\.json: expected a JSON list"):
        sqa.load_questions(tmp_path)
