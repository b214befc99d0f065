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


@pytest.fixture
def no_load(monkeypatch):
    """Fails the test if the model is loaded: bad input must be caught before."""
    from alignkd.runtime import loader

    def refuse(*args, **kwargs):
        raise AssertionError("load_model was called")

    monkeypatch.setattr(loader, "load_model", refuse)
