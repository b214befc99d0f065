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


def test_focus_selects_fewer_tokens_than_all_on_the_toy_presets(setup):
    """With the toy presets' image tokens and the quickstart's K, L_V-focus is a selection, not L_V-all again
    (with 9 tokens and K=16 the top-K was every token and the focus term repeated the all term)."""
    from alignkd.quickstart import QuickstartConfig

    student, teacher, batch = setup
    k = QuickstartConfig().focus_k
    assert 0 < k < student.config.num_image_tokens == teacher.config.num_image_tokens
    cfg = LossConfig(focus_k=k)
    module = AlignKDModule(student, cfg, teacher.config.num_heads, teacher.config.hidden_size)
    t_out = run_teacher(teacher, batch, cfg)
    terms = module(batch, t_out)
    assert terms["vision_focus"].item() > 0
    assert not torch.isclose(terms["vision_focus"], terms["vision_all"], rtol=1e-4)


def test_extra_attention_term_on_the_last_layer(setup):
    """Table 4's "A1,t-v + A_last,all": a second (layer, block) term with its own head adapter trains the last layer."""
    from alignkd.distill.config import AttnTerm

    student, teacher, batch = setup
    base = LossConfig()
    cfg = LossConfig(attn_extra=[{"layer": -1, "block": "full"}])
    assert cfg.attn_terms()[1] == AttnTerm(-1, "full")
    module = AlignKDModule(student, cfg, teacher.config.num_heads, teacher.config.hidden_size, teacher.config.llm.num_hidden_layers)
    terms = module(batch, run_teacher(teacher, batch, cfg))
    plain = AlignKDModule(student, base, teacher.config.num_heads, teacher.config.hidden_size)(batch, run_teacher(teacher, batch, base))
    assert terms["attn"].item() > plain["attn"].item()
    g = _grads(module, terms["attn"])
    last = len(student.llm.model.layers) - 1
    assert g[f"student.llm.model.layers.{last}.self_attn.q_proj.weight"] > 0 and g["extra_head_adapters.0.weight"] > 0


def test_attention_term_on_a_layer_the_model_lacks_is_refused(setup):
    from alignkd.errors import AlignKDError

    student, teacher, _ = setup
    cfg = LossConfig(attn_extra=[{"layer": 7, "block": "full"}])
    with pytest.raises(AlignKDError, match="on layer 7 \\(full\\): the student has 2 decoder layers"):
        AlignKDModule(student, cfg, teacher.config.num_heads, teacher.config.hidden_size, teacher.config.llm.num_hidden_layers)
    with pytest.raises(AlignKDError, match="repeats an attention term"):
        LossConfig(attn_extra=[{"layer": 0, "block": "text_vision"}])
    with pytest.raises(AlignKDError, match="block 'diagonal' is not one of"):
        LossConfig(attn_extra=[{"layer": 0, "block": "diagonal"}])


def test_released_vision_text_block_is_a_no_op_and_normalising_scales_the_term(setup):
    """The released code's vision-query x text-key block is causally empty: no gradient reaches the student. The
    normalised term (a departure) is the same MSE divided by the teacher block's mean square: order 1, not ~1e-5."""
    student, teacher, batch = setup
    cfg = LossConfig(attn_block="vision_text")
    module = AlignKDModule(student, cfg, teacher.config.num_heads, teacher.config.hidden_size)
    g = _grads(module, module(batch, run_teacher(teacher, batch, cfg))["attn"])
    assert g["student.llm.model.layers.0.self_attn.q_proj.weight"] == 0 and g["student.mm_projector.mlp.2.weight"] == 0
    raw, norm = LossConfig(), LossConfig(attn_normalise=True)
    a = AlignKDModule(student, raw, teacher.config.num_heads, teacher.config.hidden_size)(batch, run_teacher(teacher, batch, raw))["attn"]
    b = AlignKDModule(student, norm, teacher.config.num_heads, teacher.config.hidden_size)(batch, run_teacher(teacher, batch, norm))["attn"]
    assert 0 < a.item() < 1e-2 and b.item() > 100 * a.item()
