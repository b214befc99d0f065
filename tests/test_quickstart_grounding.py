"""The toy teacher's grounding stage: which image tokens show an object, and one tiny run end to end."""

import json

import pytest
import torch

from alignkd.quickstart_grounding import GroundingAuxiliary, GroundingConfig, ground_teacher, object_tokens


def _scene(*objects):
    return {"size": [224, 224], "objects": [dict(zip(("cx", "cy", "r", "color", "shape"), o)) for o in objects]}


def test_an_object_at_its_cell_centre_covers_the_cells_four_tokens():
    side = 224 / 3  # the world's 3x3 layout on a 6x6 token grid: a cell is 2x2 tokens
    small = _scene((side / 2, side / 2, 16.8, "red", "circle"))
    assert sorted(object_tokens(small, 6)) == [0, 1, 6, 7]
    two = _scene((side / 2, side / 2, 16.8, "red", "circle"), (2.5 * side, 1.5 * side, 29.1, "blue", "square"))
    tokens = object_tokens(two, 6)
    assert sorted(i for i, o in tokens.items() if o["color"] == "blue") == [16, 17, 22, 23]
    assert sorted(i for i, o in tokens.items() if o["color"] == "red") == [0, 1, 6, 7]


def test_an_object_off_centre_covers_only_the_tokens_its_disc_reaches():
    side = 224 / 6
    # a small disc well inside token (row 1, col 1), away from its edges
    assert list(object_tokens(_scene((1.5 * side, 1.5 * side, 10.0, "red", "circle")), 6)) == [7]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from alignkd.data.synth_world import SynthConfig, synthesize
    from alignkd.data.tokenizer import Tokenizer
    from alignkd.models.checkpoint import save_checkpoint
    from alignkd.models.mobilevlm import MobileVLM, get_preset

    root = tmp_path_factory.mktemp("grounding")
    synthesize(root / "world", SynthConfig.tiny(vocab_size=1024, train_images=60))
    tok = Tokenizer.from_folder(root / "world" / "tokenizer")
    cfg = get_preset("synth_teacher")
    cfg.llm.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    save_checkpoint(MobileVLM(cfg), tok, root / "vision")
    return root


def test_a_tiny_run_writes_a_teacher_checkpoint_and_its_curve(world):
    from alignkd.distill.checkpoint import load_spec
    from alignkd.distill.config import ModelSpec
    from alignkd.models.checkpoint import read_state_dict

    out = world / "grounded"
    cfg = GroundingConfig(steps=2, batch_size=2, compact_batch=4, align_steps=2, align_images=2, eval_every=1, val_questions=8)
    report = ground_teacher(world / "world", world / "vision", out, cfg, progress=False)
    assert [r["step"] for r in report["curve"]] == [0, 1, 2] and 0.5 <= report["majority"] <= 1.0
    assert report["preset"] == "synth_teacher"
    assert json.loads((out / "report.json").read_text())["checkpoint"] == str(out / "checkpoint")
    model, _ = load_spec(ModelSpec(path=str(out / "checkpoint")))  # the fine-tuning's starting point loads
    vision = "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(read_state_dict(out / "checkpoint")[vision], read_state_dict(world / "vision")[vision])  # CLIP frozen
    projector = [k for k in read_state_dict(out / "checkpoint") if "mm_projector" in k][0]
    assert not torch.equal(read_state_dict(out / "checkpoint")[projector], read_state_dict(world / "vision")[projector])


def test_the_auxiliary_draws_its_examples_from_the_step_and_trains_projector_and_llm(world):
    """What the teacher's fine-tuning adds to each step: the same step gives the same loss (so a resumed run
    draws the same examples), another step other examples; its gradient reaches the projector and the LLM."""
    from alignkd.distill.checkpoint import load_spec
    from alignkd.distill.config import ModelSpec

    model, _ = load_spec(ModelSpec(path=str(world / "vision")))
    model.vision_tower.requires_grad_(False)
    aux = GroundingAuxiliary(world / "world", GroundingConfig(compact_batch=4, align_images=2))
    first, again, other = aux(model, 3), aux(model, 3), aux(model, 4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    first.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("mm_projector" in n for n in grads) and any("embed_tokens" in n for n in grads)
    assert not any("vision_tower" in n for n in grads)


def test_compact_examples_ask_the_kinds_configured_and_refuse_others(world, monkeypatch):
    import random

    import alignkd.data.synth_questions as questions
    from alignkd.data.tokenizer import Tokenizer
    from alignkd.distill.checkpoint import load_spec
    from alignkd.distill.config import ModelSpec
    from alignkd.errors import AlignKDError
    from alignkd.quickstart_grounding import GroundingLosses

    model, _ = load_spec(ModelSpec(path=str(world / "vision")))
    tok = Tokenizer.from_folder(world / "world" / "tokenizer")
    with pytest.raises(AlignKDError, match=r"compact_kinds \['side'\].*answers only"):
        GroundingLosses(model, tok, 64, kinds=("exist", "side"))
    asked, ask = [], questions.ask
    monkeypatch.setattr(questions, "ask", lambda rng, scene, kind: asked.append(kind) or ask(rng, scene, kind))
    assert torch.isfinite(GroundingLosses(model, tok, 64, kinds=("count_all",)).compact_loss(random.Random(0), 4))
    assert asked == ["count_all"] * 4


def test_hard_negatives_ask_about_an_absent_class_made_of_present_colours_and_shapes():
    import random

    from alignkd.quickstart_grounding import _hard_negative

    scene = {"objects": [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}]}
    asked = {_hard_negative(random.Random(i), scene) for i in range(20)}
    assert asked == {"Is there a red square in the image?", "Is there a blue circle in the image?"}
    assert _hard_negative(random.Random(0), {"objects": [{"color": "red", "shape": "circle"}]}) is None


def test_a_student_can_be_grounded_on_the_teachers_clip(world):
    """benchmarks/toy_student_start.py grounds the student preset the same way."""
    from alignkd.models.checkpoint import read_state_dict

    cfg = GroundingConfig(steps=1, batch_size=2, compact_batch=2, align_steps=1, align_images=2, eval_every=1, val_questions=4)
    report = ground_teacher(world / "world", world / "vision", world / "student", cfg, progress=False, preset="synth_student")
    assert report["preset"] == "synth_student"
    config = json.loads((world / "student" / "checkpoint" / "config.json").read_text())
    assert config["hidden_size"] == 128, config
    vision = "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(read_state_dict(world / "student" / "checkpoint")[vision], read_state_dict(world / "vision")[vision])
