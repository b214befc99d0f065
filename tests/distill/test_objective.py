"""On a real forward of a tiny teacher/student pair, every Align-KD term has a non-zero gradient for the
student parameters it should train (and the adapters), and none reaches the frozen vision tower."""

import pytest
import torch

from alignkd.data.dataset import Collator, LlavaDataset
from alignkd.distill.checkpoint import load_spec
from alignkd.distill.config import LossConfig, ModelSpec
from alignkd.distill.objective import AlignKDModule, run_teacher


@pytest.fixture(scope="module")
def setup(world, teacher_ckpt):
    torch.manual_seed(0)
    student, tok = load_spec(ModelSpec(preset="synth_student", tokenizer=str(world / "tokenizer")))
    teacher, _ = load_spec(ModelSpec(path=str(teacher_ckpt)), train=False)
    ds = LlavaDataset(world / "train" / "finetune.json", world / "train" / "images", tok, student.config.image)
    items = [ds[i] for i in range(len(ds))]
    text_only = next(x for x in items if x.pixel_values is None)
    with_image = [x for x in items if x.pixel_values is not None][:3]
    batch = Collator(tok.pad_id)(with_image + [text_only])  # mixed batch: the released code stops distilling here
    return student, teacher, batch


def _grads(module, loss):
    module.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for n, p in module.named_parameters()}


def test_every_term_trains_what_it_should(setup):
    student, teacher, batch = setup
    cfg = LossConfig()
    module = AlignKDModule(student, cfg, teacher.config.num_heads, teacher.config.hidden_size)
    t_out = run_teacher(teacher, batch, cfg)
    terms = module(batch, t_out)
    for name in ("ce", "kd", "attn", "vision_all", "vision_focus"):
        assert terms[name].item() > 0, name
    expect = {
        "ce": ["student.llm.lm_head.weight", "student.llm.model.layers.1.mlp.up_proj.weight", "student.mm_projector.peg.weight"],
        "kd": ["student.llm.lm_head.weight", "student.mm_projector.mlp.0.weight"],
        "attn": ["student.llm.model.layers.0.self_attn.q_proj.weight", "student.llm.model.layers.0.self_attn.k_proj.weight",
                 "student.mm_projector.mlp.2.weight", "head_adapter.weight", "head_adapter.bias"],
        "vision_all": ["student.mm_projector.mlp.0.weight", "vision_adapter.weight", "vision_adapter.bias"],
        "vision_focus": ["student.mm_projector.peg.weight", "vision_adapter.weight"],
    }
    for name, params in expect.items():
        g = _grads(module, terms[name])
        for p in params:
            assert g[p] > 0, f"{name} gives no gradient to {p}"
        assert all(g[p] == 0 for p in g if p.startswith("student.vision_tower")), name
        if name == "vision_all":
            assert g["student.llm.lm_head.weight"] == 0  # vision terms only reach the projector
    # the teacher is untouched
    assert all(p.grad is None for p in teacher.parameters())


def test_weights_switch_terms_off(setup):
    student, teacher, batch = setup
    cfg = LossConfig()
    cfg.weights.attn = cfg.weights.kd = 0.0
    module = AlignKDModule(student, cfg, teacher.config.num_heads, teacher.config.hidden_size)
    terms = module(batch, run_teacher(teacher, batch, cfg))
    assert terms["attn"].item() == 0.0 and terms["kd"].item() == 0.0
    expected = terms["ce"] + terms["vision_all"] + 0.1 * terms["vision_focus"]
    torch.testing.assert_close(terms["loss"], expected)
    g = _grads(module, terms["loss"])
    assert "head_adapter.weight" in g  # present (zero grad) so DDP sees every parameter


@pytest.mark.parametrize("block", ["vision_vision", "text_text", "full"])
def test_other_attention_blocks(setup, block):
    student, teacher, batch = setup
    cfg = LossConfig(attn_block=block)
    module = AlignKDModule(student, cfg, teacher.config.num_heads, teacher.config.hidden_size)
    terms = module(batch, run_teacher(teacher, batch, cfg))
    assert terms["attn"].item() > 0
    assert _grads(module, terms["attn"])["student.llm.model.layers.0.self_attn.q_proj.weight"] > 0


def test_forward_divergence_differs_from_reverse(setup):
    student, teacher, batch = setup
    values = {}
    for div in ("reverse", "forward"):
        cfg = LossConfig(divergence=div)
        module = AlignKDModule(student, cfg, teacher.config.num_heads, teacher.config.hidden_size)
        values[div] = module(batch, run_teacher(teacher, batch, cfg))["kd"].item()
    assert values["reverse"] != pytest.approx(values["forward"], rel=1e-3)


def test_ce_only_module(setup):
    student, _, batch = setup
    module = AlignKDModule(student, LossConfig())
    terms = module(batch)
    torch.testing.assert_close(terms["loss"], terms["ce"])
    assert not hasattr(module, "head_adapter")
