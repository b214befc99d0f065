"""Open whatever `--model` names: a checkpoint folder (eager PyTorch) or an exported bundle, as a `LoadedModel`.

The one entry the commands share (`generate`, `eval`, `profile`, export's golden pairs): it dispatches on the
folder's contents so that the generation loop (`generation.py`) and the bundle reader (`bundle.py`) need not
know each other.

    alignkd generate --model CHECKPOINT_OR_BUNDLE --image photo.jpg --prompt "What is in the picture?"
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignkd.errors import AlignKDError
from alignkd.runtime.generation import EagerBackend, LoadedModel


def load_model(path, dtype: str = "float32", vision_tower=None) -> LoadedModel:
    """A checkpoint folder (config.json) or an exported bundle (manifest.json), as a LoadedModel."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        from alignkd.runtime.bundle import load_bundle  # exported bundles: the export stage's backends

        return load_bundle(path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise AlignKDError(f"{path} is neither a checkpoint folder (config.json) nor an exported bundle (manifest.json); "
                           "pass a MobileVLM checkpoint folder or a folder written by `alignkd export`.")
    from alignkd.models.checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(path, dtype=getattr(torch, dtype), vision_tower=vision_tower)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
    return LoadedModel(EagerBackend(model), tokenizer, model.config.image, "checkpoint", str(path), size_bytes=size,
                       info={"dtype": dtype, "context_length": model.config.context_length})
