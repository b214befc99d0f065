"""Toy CLIP pre-training: labels read from the scene record, a tower that learns, a checkpoint the teacher can use."""

import json
import random

import pytest
import torch

from alignkd.data.synth_scene import COLORS, GRID, SHAPES, SIZES, sample_scene
from alignkd.data.synth_world import SynthConfig, synthesize
from alignkd.distill.vision_pretrain import VisionPretrainConfig, cell_labels, pretrain_vision, train_cell_readout
from alignkd.errors import AlignKDError
from alignkd.models.mobilevlm import MobileVLM, get_preset, tiny_clip


def test_cell_labels_follow_the_scene_record():
    scene = sample_scene(random.Random("labels"), 224, min_objects=3, max_objects=3)
    color, shape, size = cell_labels(scene)
    occupied = {o["row"] * GRID + o["col"]: o for o in scene["objects"]}
    for cell in range(GRID * GRID):
        if cell in occupied:
            o = occupied[cell]
            assert (list(COLORS)[color[cell]], SHAPES[shape[cell]], SIZES[size[cell]]) == (o["color"], o["shape"], o["size"])
        else:  # the extra class past the last name means "no object here"
            assert (color[cell], shape[cell], size[cell]) == (len(COLORS), len(SHAPES), len(SIZES))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    synthesize(out, SynthConfig.tiny(vocab_size=1024))
    return out


def test_pretrained_tower_reads_colour_and_is_what_the_teacher_loads(world, tmp_path):
    from alignkd.distill.checkpoint import load_spec
    from alignkd.distill.config import ModelSpec

    cfg = VisionPretrainConfig(steps=60, batch_size=16, scenes=256, val_scenes=96, eval_every=30)
    report = pretrain_vision(world, tmp_path / "vision", cfg, progress=False)
    # colour is the fastest attribute: 60 steps lift it far above always guessing the commonest colour
    assert report["val"]["color"] > report["majority"]["color"] + 0.2, report
    assert [p["step"] for p in report["curve"]] == [0, 30, 60]
    assert json.loads((tmp_path / "vision" / "report.json").read_text())["val"] == report["val"]
    teacher, _ = load_spec(ModelSpec(preset="synth_teacher", tokenizer=str(world / "tokenizer"),
                                     vision_tower_from=str(tmp_path / "vision" / "checkpoint")))
    torch.manual_seed(0)
    fresh = MobileVLM(get_preset("synth_teacher")).vision_tower.state_dict()
    loaded = teacher.vision_tower.state_dict()
    trained, _ = load_spec(ModelSpec(path=str(tmp_path / "vision" / "checkpoint")))
    assert all(torch.equal(loaded[k], v) for k, v in trained.vision_tower.state_dict().items())
    assert not torch.equal(loaded["embeddings.patch_embedding.weight"], fresh["embeddings.patch_embedding.weight"])


def test_grid_that_does_not_split_into_cells_is_refused():
    config = get_preset("synth_teacher")
    config.vision = tiny_clip(image_size=96, patch=6)  # 16x16 patches: no 3x3 cells
    with pytest.raises(AlignKDError, match="16x16 patch grid.*divisible by 3"):
        train_cell_readout(MobileVLM(config), 224, VisionPretrainConfig(steps=1, scenes=2, val_scenes=2), seed=0,
                           progress=False)


def test_missing_world_is_named(tmp_path):
    with pytest.raises(AlignKDError, match="world.json not found.*alignkd data synth"):
        pretrain_vision(tmp_path / "nowhere", tmp_path / "vision")
