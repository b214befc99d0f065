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
    ("optim.lr=-1e-4", r"optim.lr must be >= 0, got -0.0001"),
    ("optim.projector_lr=-1", r"optim.projector_lr must be >= 0"),
    ("optim.lr=.nan", r"optim.lr must be >= 0, got nan"),
    ("optim.warmup_ratio=1.5", r"optim.warmup_ratio .* between 0 and 1; got 1.5"),
    ("optim.warmup_ratio=-0.1", r"optim.warmup_ratio .* between 0 and 1; got -0.1"),
    ("optim.max_grad_norm=0", r"optim.max_grad_norm must be > 0"),
    ("optim.betas=[0.9]", r"config key 'optim.betas' must be a list of 2 values, got \[0.9\]"),
    ("optim.betas=[0.9, 0.99, 0.999]", r"'optim.betas' must be a list of 2 values"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas must be two numbers in \[0, 1\)"),
    ("save_every=0", r"save_every must be >= 1 .* or null"),
    ("log_every=0", r"log_every must be >= 1"),
    ("data.num_workers=-1", r"data.num_workers must be >= 0"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(AlignKDError, match=message):
        load_config(TrainConfig, None, ["student.path=x", "data.train=d.json", override])


def test_missing_config_file(tmp_path):
    with pytest.raises(AlignKDError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "none.yaml")


def test_betas_checked_for_python_callers_too():
    from alignkd.distill.config import OptimConfig

    with pytest.raises(AlignKDError, match=r"optim.betas must be two numbers .*; got \[0.9\]"):
        OptimConfig(betas=(0.9,))


def test_paper_stages_chain_from_init_student_to_stage_two():
    """Stage 1 starts from init-student's -o (the command in its header); stage 2 takes stage 1's student and adapters."""
    import re

    folder = Path(alignkd.__file__).parent / "configs"
    stage1_text = (folder / "paper_7b_to_1_7b_stage1.yaml").read_text()
    stage1 = load_config(TrainConfig, folder / "paper_7b_to_1_7b_stage1.yaml")
    stage2 = load_config(TrainConfig, folder / "paper_7b_to_1_7b_stage2.yaml")
    command = re.search(r"alignkd init-student --llm \S+ --vision-tower \S+ \\\n#\s+--projector ldpv2 --seed \d+ -o (\S+)", stage1_text)
    assert command and stage1.student.path == command.group(1)
    assert stage2.student.path == f"{stage1.output_dir}/student"
    assert stage2.adapters_from == f"{stage1.output_dir}/adapters.safetensors"
    assert stage1.teacher.path == stage2.teacher.path and stage1.teacher_dtype == stage2.teacher_dtype == "bfloat16"


def test_adapters_from_needs_a_teacher():
    with pytest.raises(AlignKDError, match="adapters_from a.safetensors needs a teacher.*set adapters_from=null"):
        load_config(TrainConfig, None, ["student.path=x", "data.train=d.json", "adapters_from=a.safetensors"])
