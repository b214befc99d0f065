"""Configs: every shipped preset loads; unknown keys and wrong types are errors naming the key; overrides work."""

from pathlib import Path

import pytest

import alignkd
from alignkd.config import load_config
from alignkd.distill.config import AttnBlock, Divergence, TrainConfig
from alignkd.errors import AlignKDError

CONFIGS = sorted((Path(alignkd.__file__).parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.student is not None and cfg.data.train


def test_paper_defaults():
    cfg = load_config(TrainConfig, None, ["student.path=x", "data.train=d.json"])
    loss = cfg.loss
    assert (loss.attn_layer, loss.focus_k, loss.weights.vision_focus, loss.temperature) == (0, 16, 0.1, 1.0)
    assert loss.divergence == Divergence.reverse and loss.attn_block == AttnBlock.text_vision
    assert (loss.weights.ce, loss.weights.kd, loss.weights.attn, loss.weights.vision_all) == (1, 1, 1, 1)


def test_overrides_and_yaml_number_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("student: {path: x}\ndata: {train: d.json}\noptim: {lr: 1e-4}\n")
    cfg = load_config(TrainConfig, path, ["optim.lr=3e-5", "loss.weights.attn=0", "loss.attn_block=full", "max_steps=7"])
    assert cfg.optim.lr == 3e-5 and cfg.loss.weights.attn == 0.0 and cfg.loss.attn_block == AttnBlock.full
    assert cfg.max_steps == 7
    assert load_config(TrainConfig, path).optim.lr == 1e-4  # "1e-4" is a string to PyYAML


@pytest.mark.parametrize("override,message", [
    ("optim.learning_rate=1", "unknown config key 'optim.learning_rate'"),
    ("batch_size=four", "'batch_size' must be an integer"),
    ("loss.divergence=js", "'loss.divergence': 'js' is not one of reverse, forward"),
    ("loss.weights.kd=-1", "loss.weights.kd must be >= 0"),
    ("mixed_precision=fp8", "'mixed_precision': 'fp8' is not one of no, bf16, fp16"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(AlignKDError, match=message):
        load_config(TrainConfig, None, ["student.path=x", "data.train=d.json", override])


def test_missing_config_file(tmp_path):
    with pytest.raises(AlignKDError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "none.yaml")
