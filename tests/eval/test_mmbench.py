"""MMBench: TSV prompts, offline option extraction, CircularEval (a hit needs every rotation right)."""

import base64
import io

import pytest
from PIL import Image

from alignkd.errors import AlignKDError
from alignkd.eval import mmbench

LETTER = "\nAnswer with the option's letter from the given choices directly."
COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "source", "comment", "image"]
# index: (question, hint, options, answer letter, category)
BASE = {
    1: ("Which fruit is yellow?", "nan", ["apple", "banana", "cherry", "date"], "B", "cat_x"),
    2: ("Is it day?", "", ["yes", "no"], "A", "cat_y"),
    3: ("Which color?", "Look closely.", ["red", "green", "blue"], "C", "cat_x"),
}


def _png_b64():
    buf = io.BytesIO()
    Image.new("L", (3, 2), 128).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _rows():
    rows = []
    for index, (question, hint, options, answer, category) in BASE.items():
        n = len(options)
        for k in range(n):
            rotated = options[k:] + options[:k]
            cells = rotated + (["None"] if n == 2 else []) + [""] * 4  # "None" reads as NaN in pandas
            letter = "ABCD"[("ABCD".index(answer) - k) % n]
            rows.append([str(index + 1_000_000 * k), question, hint, *cells[:4], letter, category, "L2a", "src", "", _png_b64()])
    return rows


@pytest.fixture
def data(tmp_path):
    path = tmp_path / mmbench.QUESTION_FILE
    path.parent.mkdir(parents=True)
    path.write_text("\n".join("\t".join(r) for r in [COLUMNS] + _rows()) + "\n")
    return tmp_path


def test_prompts_as_model_vqa_mmbench_builds_them(data):
    qs = {q.question_id: q for q in mmbench.load_questions(data)}
    assert len(qs) == 9
    assert qs[3].record_prompt == "Look closely.\nWhich color?\nA. red\nB. green\nC. blue"
    assert qs[3].prompt == qs[3].record_prompt + LETTER
    assert qs[1].record_prompt.startswith("Which fruit is yellow?\nA. apple")  # hint "nan" is missing
    assert qs[2].extra == {"round_id": 0, "options": ["yes", "no"], "option_char": ["A", "B"]}
    assert qs[1_000_002].extra["options"] == ["no", "yes"]
    assert qs[1].max_new_tokens == 1024
    image = qs[1].load_image()
    assert image.mode == "RGB" and image.size == (3, 2)


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C).", "C"),
        ("**D**", "D"),
        ("The answer is D", "D"),
        ("The answer is A", "A"),  # a letter at the end of a long answer is the choice (VLMEvalKit, MMBench's judge)
        ("The answer is A.", "A"),
        ("I think the answer is A, the red one", "A"),  # among the last four tokens
        ("A cat is on the mat", None),  # "A" opening a longer sentence is an article, not option A
        ("A cat is sitting", "A"),  # ... but in four tokens it is within the reference's window
        ("a cat", None),  # lower case is never an option letter
        ("E", None),  # only the row's own options A-D count
        ("A B", None),
        ("The correct answer is **b** here, see above", "B"),  # the reference's "answer is X" fallback
        ("Cannot determine the answer", "Z"),  # a refusal: option Z, never right
        ("Z", "Z"),
        ("Failed to obtain answer via API", None),
    ],
)
def test_infer_option_as_vlmevalkit(text, letter):
    assert mmbench.infer_option(text) == letter


def test_option_text_fallback():
    row = {"A": "apple", "B": "banana", "C": "cherry", "D": None}
    assert mmbench.extract_choice("It is a Banana", row) == "B"
    assert mmbench.extract_choice("apple or banana", row) is None
    assert mmbench.extract_choice("A cat is on the mat, next to a banana", row) is None  # too long for text matching
    assert mmbench.extract_choice("The answer is A", row) == "A"
    assert mmbench.extract_choice("D", row) is None  # D is no option of this row


def test_the_answer_is_a_scores_as_a(data, answers):
    qs = [q for q in mmbench.load_questions(data) if q.question_id % mmbench.CIRCULAR_OFFSET == 1]
    rows = {r["index"]: r for r in mmbench.read_rows(data)}
    texts = [f"The answer is {rows[q.question_id]['answer']}" for q in qs]
    assert "The answer is A" in texts
    result = mmbench.score(data, answers(qs, texts), allow_missing=True)
    assert result["circular_accuracy"] == 100.0 and result["n_rows_unmatched"] == 0


def test_circular_eval_by_hand(data, answers):
    qs = {q.question_id: q for q in mmbench.load_questions(data)}
    texts = {
        1: "B", 1_000_001: "A.", 2_000_001: "The answer is D", 3_000_001: "(C)",  # all rotations right: hit
        2: "A", 1_000_002: "yes",  # no letter; "yes" is the text of option B in round 1: hit
        3: "C", 1_000_003: "B", 2_000_003: "green",  # "green" is C in round 2, answer A: miss
    }  # fmt: skip
    result = mmbench.score(data, answers([qs[i] for i in texts], list(texts.values())))
    assert result["circular_accuracy"] == pytest.approx(200 / 3, abs=1e-12)
    assert result["per_category"] == {"cat_x": 50.0, "cat_y": 100.0}
    assert result["per_l2_category"] == {"L2a": pytest.approx(200 / 3, abs=1e-12)}
    assert result["n_questions_circular"] == 3 and result["n_questions"] == 9


def test_one_wrong_rotation_loses_the_question(data, answers):
    qs = mmbench.load_questions(data)
    right = {q.question_id: row["answer"] for q, row in zip(qs, mmbench.read_rows(data))}
    texts = [right[q.question_id] for q in qs]
    assert mmbench.score(data, answers(qs, texts))["circular_accuracy"] == 100.0
    texts[[q.question_id for q in qs].index(3_000_001)] = "A"
    result = mmbench.score(data, answers(qs, texts))
    assert result["circular_accuracy"] == pytest.approx(200 / 3, abs=1e-12)
    assert result["per_category"]["cat_x"] == 50.0


def test_allow_missing_skips_incomplete_groups(data, answers):
    qs = [q for q in mmbench.load_questions(data) if q.question_id != 1_000_001]
    right = {row["index"]: row["answer"] for row in mmbench.read_rows(data)}
    with pytest.raises(AlignKDError, match=r"1 of 9 question\(s\) have no prediction \(question_id 1000001\)"):
        mmbench.score(data, answers(qs, [right[q.question_id] for q in qs]))
    result = mmbench.score(data, answers(qs, [right[q.question_id] for q in qs]), allow_missing=True)
    assert result["circular_accuracy"] == 100.0 and result["n_groups_incomplete"] == 1


def test_missing_tsv_names_download(tmp_path):
    with pytest.raises(AlignKDError, match=r"mmbench_dev_en_20231003\.tsv not found.*openmmlab"):
        mmbench.load_questions(tmp_path)


def test_malformed_tsv_line(data):
    with open(data / mmbench.QUESTION_FILE, "a") as f:
        f.write("99\tonly three\tfields\n")
    with pytest.raises(AlignKDError, match=r"mmbench_dev_en_20231003\.tsv line 11: 3 fields, the header has 13"):
        mmbench.load_questions(data)
