"""The shared benchmark pieces' user errors: they name the CLI flag and a layout document that exists.

    python -m pytest tests/eval/test_common.py -q
"""

import re
from pathlib import Path

import pytest

from alignkd.errors import AlignKDError
from alignkd.eval.common import Question, pair_predictions, require_dir, require_file

REPO = Path(__file__).resolve().parents[2]


def _named_docs(message: str) -> list[str]:
    return re.findall(r"[\w./-]+\.md", message)


def test_missing_predictions_name_the_cli_flag(answers):
    qs = [Question(question_id=i, prompt="q", record_prompt="q", max_new_tokens=1) for i in range(3)]
    with pytest.raises(AlignKDError, match=r"pass --allow-missing \(allow_missing=True from Python\)"):
        pair_predictions(qs, answers(qs[:1], ["yes"]), question_key=lambda q: q.question_id,
                         prediction_key=lambda p: p["question_id"], source="answers.jsonl", allow_missing=False)


def test_layout_document_named_by_errors_exists(tmp_path):
    messages = []
    for check in (lambda: require_file(tmp_path / "x.jsonl", "GQA", "somewhere"),
                  lambda: require_dir(tmp_path / "images", "GQA", "somewhere"),
                  lambda: Question(1, "q", "q", 1, image_path=tmp_path / "a.png").load_image()):
        with pytest.raises(AlignKDError) as err:
            check()
        messages.append(str(err.value))
    for message in messages:
        docs = _named_docs(message)
        assert docs and all((REPO / d).is_file() for d in docs), message
