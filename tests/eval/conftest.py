"""Fixtures shared by the benchmark tests."""

from pathlib import Path

import pytest

from alignkd.eval.common import answer_record


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """The tiny synthetic benchmark suite (every benchmark's files), drawn once per test module."""
    from alignkd.data.synth_world import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("world")
    synthesize(root, SynthConfig.tiny())
    return root / "eval"


@pytest.fixture
def model(fixture_dir) -> Path:
    """The official tiny checkpoint."""
    return fixture_dir / "checkpoint"


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
