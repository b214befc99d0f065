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


@pytest.fixture(scope="session")
def tiny_llama_folder():
    """Factory: (folder, tokenizer_from, vocab=512) -> a plain LLaMA folder (see _tiny_llama_folder)."""
    return _tiny_llama_folder


@pytest.fixture(scope="session")
def tiny_clip_folder():
    """Factory: (folder, **tiny_clip shape) -> a CLIP folder (see _tiny_clip_folder)."""
    return _tiny_clip_folder


def _tiny_llama_folder(folder: Path, tokenizer_from: Path, vocab: int = 512) -> Path:
    """A plain Hugging Face LLaMA folder as transformers saves it, with a SentencePiece tokenizer (init-student's input)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignkd.data.tokenizer import TOKENIZER_FILES

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_from / name, folder / name)
    return folder


def _tiny_clip_folder(folder: Path, **shape) -> Path:
    """A CLIPVisionModel folder as transformers saves it, plus its preprocessor_config.json."""
    import torch
    from transformers import CLIPVisionModel

    from alignkd.data.image import ImageConfig
    from alignkd.models.mobilevlm import tiny_clip

    torch.manual_seed(1)
    config = tiny_clip(**shape)
    CLIPVisionModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(ImageConfig(size=config.image_size).to_preprocessor_config()))
    return folder
