"""GQA: LLaVA's rstrip('.').lower() then exact match, binary/open split, bad inputs."""

import pytest
from evalfiles import write_json, write_jsonl

from alignkd.errors import AlignKDError
from alignkd.eval import gqa
from alignkd.eval.common import read_answers, write_answers

SUFFIX = "\nAnswer the question using a single word or phrase."
GT = {
    "q1": ("Is the cat black?", "yes", "verify"),
    "q2": ("Which side is the cup on?", "left", "query"),
    "q3": ("Is it sunny or rainy?", "yes", "logical"),
    "q4": ("What is the man sitting on?", "chair", "query"),
}


@pytest.fixture
def data(tmp_path):
    write_jsonl(
        tmp_path / gqa.QUESTION_FILE,
        [{"question_id": q, "image": f"n{i}.jpg", "text": t + SUFFIX, "category": "x"} for i, (q, (t, _, _)) in enumerate(GT.items())],
    )
    write_json(
        tmp_path / gqa.ANNOTATION_FILE,
        {
            q: {"imageId": f"n{i}", "question": t, "answer": a, "fullAnswer": a, "isBalanced": True, "types": {"structural": s, "semantic": "attr"}}
            for i, (q, (t, a, s)) in enumerate(GT.items())
        },
    )
    return tmp_path


def test_questions_follow_the_llava_file(data):
    qs = gqa.load_questions(data)
    assert [q.question_id for q in qs] == ["q1", "q2", "q3", "q4"]
    assert qs[0].prompt == "Is the cat black?" + SUFFIX
    assert qs[0].max_new_tokens == 128
    assert qs[1].image_path == data / "gqa/data/images/n1.jpg"


def test_postprocess_matches_convert_gqa_for_eval():
    assert gqa.postprocess("Yes.") == "yes"
    assert gqa.postprocess("Left...") == "left"
    assert gqa.postprocess("Yes!") == "yes!"
    assert gqa.postprocess("Yes. ") == "yes. "


def test_hand_worked_scores(data, answers):
    preds = answers(gqa.load_questions(data), ["Yes.", "Left...", "Yes!", "table"])
    result = gqa.score(data, preds)
    assert result["accuracy"] == 50.0
    assert result["binary"] == 50.0  # q1 right, q3 wrong
    assert result["open"] == 50.0  # q2 right, q4 wrong
    assert result["per_structural_type"] == {"logical": 0.0, "query": 50.0, "verify": 100.0}
    assert result["partial"] is False and result["n_scored"] == 4


def test_perfect_predictions_score_100(data, answers, tmp_path):
    preds = answers(gqa.load_questions(data), ["Yes", "left", "yes", "Chair."])
    path = write_answers(tmp_path / "answers.jsonl", preds)
    assert gqa.BENCHMARK.score_file(data, path)["accuracy"] == 100.0
    assert read_answers(path)[0]["prompt"] == "Is the cat black?" + SUFFIX


def test_missing_question_file_names_file_and_source(tmp_path):
    with pytest.raises(AlignKDError, match=r"llava_gqa_testdev_balanced\.jsonl not found.*eval\.zip"):
        gqa.load_questions(tmp_path)


def test_missing_annotation_file(data, answers):
    (data / gqa.ANNOTATION_FILE).unlink()
    with pytest.raises(AlignKDError, match=r"testdev_balanced_questions\.json not found.*GQA site"):
        gqa.score(data, answers(gqa.load_questions(data), ["a"] * 4))


def test_missing_predictions_are_an_error_unless_allowed(data, answers):
    preds = answers(gqa.load_questions(data), ["yes", "left", "no", "sofa"])[:2]
    with pytest.raises(AlignKDError, match=r"answers\.jsonl: 2 of 4 question\(s\) have no prediction \(question_id 'q3', 'q4'\)"):
        gqa.score(data, preds, source="answers.jsonl")
    result = gqa.score(data, preds, allow_missing=True)
    assert result["accuracy"] == 100.0
    assert result["partial"] is True and result["n_scored"] == 2 and "not comparable" in result["note"]


def test_unknown_question_ids_are_an_error(data, answers):
    preds = answers(gqa.load_questions(data), ["yes"] * 4)
    preds += [dict(preds[0], question_id="zz1"), dict(preds[0], question_id="zz2")]
    with pytest.raises(AlignKDError, match=r"2 prediction\(s\) match no question.*'zz1', 'zz2'"):
        gqa.score(data, preds, allow_missing=True)


def test_malformed_answer_line_names_file_and_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": "q1", "prompt": "p", "text": "yes"}\n{"question_id": "q2", \n')
    with pytest.raises(AlignKDError, match=r"answers\.jsonl line 2: not valid JSON"):
        read_answers(path)
    path.write_text('{"question_id": "q1", "text": "yes"}\n')
    with pytest.raises(AlignKDError, match=r"answers\.jsonl line 1: missing key\(s\) prompt"):
        read_answers(path)


def test_malformed_question_line(data):
    with open(data / gqa.QUESTION_FILE, "a") as f:
        f.write("not json\n")
    with pytest.raises(AlignKDError, match=r"llava_gqa_testdev_balanced\.jsonl line 5: not valid JSON"):
        gqa.load_questions(data)
