"""Shared test fixtures: the official tiny checkpoint and what the official code computed from it."""

import json
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "mobilevlm_official_tiny"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def expected() -> dict:
    return json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="session")
def official():
    """(model, tokenizer) loaded from the official tiny checkpoint. Read-only: do not train it."""
    from alignkd.models.checkpoint import load_checkpoint

    return load_checkpoint(FIXTURE / "checkpoint")
