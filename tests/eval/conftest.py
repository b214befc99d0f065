"""Fixtures shared by the benchmark tests."""

import pytest

from alignkd.eval.common import answer_record


@pytest.fixture
def answers():
    """answers(questions, texts) -> LLaVA answer records, one text per question in order."""

    def build(questions, texts):
        assert len(questions) == len(texts)
        return [answer_record(q, t, "test-model") for q, t in zip(questions, texts)]

    return build
