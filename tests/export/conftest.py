"""Session-scoped bundles of the official tiny checkpoint: each export runs once per test session.

The default run exports ExecuTorch fp32 and 8da4w (+ int8 embedding), ONNX fp32 / int8 / int4 and Core ML fp16
and int4; slow tests export more. Each bundle is produced lazily by the first test that asks for it.
"""

from pathlib import Path

import pytest

CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / "mobilevlm_official_tiny" / "checkpoint"
MAX_SEQ_LEN = 512  # the tiny prompts are ~190 positions; a small cache keeps the exports fast


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    return CHECKPOINT


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """bundles(target, quant, **options) -> bundle folder, exported once per distinct call in the session."""
    from alignkd.export import export_bundle

    made = {}
    root = tmp_path_factory.mktemp("bundles")

    def get(target: str, quant: str, **options) -> Path:
        key = (target, quant, tuple(sorted(options.items())))
        if key not in made:
            name = "_".join([target, quant] + [f"{k}{v}" for k, v in sorted(options.items())])
            options.setdefault("max_seq_len", MAX_SEQ_LEN)
            made[key] = export_bundle(CHECKPOINT, target, quant, root / name, **options)
        return made[key]

    return get


def manifest_of(bundle: Path) -> dict:
    import json

    return json.loads((bundle / "manifest.json").read_text())
