"""A tiny synthetic world and a (random) toy teacher checkpoint, shared by the distill tests."""

import pytest
import torch

from alignkd.data.synth_world import SynthConfig, synthesize
from alignkd.data.tokenizer import Tokenizer
from alignkd.models.checkpoint import save_checkpoint
from alignkd.models.mobilevlm import MobileVLM, get_preset


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    synthesize(out, SynthConfig.tiny(train_images=24), overwrite=True)
    return out


@pytest.fixture(scope="session")
def teacher_ckpt(world, tmp_path_factory):
    tok = Tokenizer.from_folder(world / "tokenizer")
    torch.manual_seed(1)
    cfg = get_preset("synth_teacher")
    cfg.llm.vocab_size = tok.vocab_size
    return save_checkpoint(MobileVLM(cfg), tok, tmp_path_factory.mktemp("teacher") / "student")


def synth_config(world, teacher_ckpt, out, **extra):
    """A TrainConfig dict for the tiny world (teacher=None for CE-only)."""
    data = {
        "student": {"preset": "synth_student", "tokenizer": str(world / "tokenizer"), "vision_tower_from": str(teacher_ckpt)},
        "teacher": {"path": str(teacher_ckpt)},
        "data": {"train": str(world / "train" / "finetune.json"), "image_root": str(world / "train" / "images")},
        "output_dir": str(out),
        "batch_size": 4,
        "max_steps": 4,
        "tensorboard": False,
        "optim": {"lr": 1e-3},
    }
    data.update(extra)
    return data
