"""Registry lookups, the answer-file record shape, image loading errors, and no torch in alignkd.eval."""

import subprocess
import sys
from pathlib import Path

import pytest

from alignkd.errors import AlignKDError
from alignkd.eval.common import Question, answer_record
from alignkd.eval.registry import BENCHMARKS, get_benchmark


def test_registry_names():
    assert list(BENCHMARKS) == ["gqa", "sqa", "textvqa", "mme", "mmbench", "pope"]
    assert get_benchmark("mme").headline == "perception"


def test_unknown_benchmark_lists_valid_names():
    with pytest.raises(AlignKDError, match=r"unknown benchmark 'vqav2'; choose one of: gqa, sqa, textvqa, mme, mmbench, pope"):
        get_benchmark("vqav2")


def test_answer_record_has_llava_fields():
    q = Question(question_id=7, prompt="Q\nA. x" + "\nAnswer.", record_prompt="Q\nA. x", max_new_tokens=1024,
                 extra={"round_id": 0, "options": ["x"], "option_char": ["A"]})  # fmt: skip
    record = answer_record(q, "A", "m")
    assert list(record) == ["question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id", "model_id", "metadata"]
    assert record["prompt"] == "Q\nA. x" and record["metadata"] == {}


def test_image_errors_name_the_file(tmp_path):
    missing = Question(question_id=1, prompt="p", record_prompt="p", max_new_tokens=128, image_path=tmp_path / "nope.jpg")
    with pytest.raises(AlignKDError, match=r"nope\.jpg not found: question 1 needs it"):
        missing.load_image()
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    corrupt = Question(question_id=2, prompt="p", record_prompt="p", max_new_tokens=128, image_path=tmp_path / "bad.jpg")
    with pytest.raises(AlignKDError, match=r"bad\.jpg is not a readable image"):
        corrupt.load_image()


def test_eval_package_does_not_import_torch():
    code = "import sys, alignkd.eval.registry; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
