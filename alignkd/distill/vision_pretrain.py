"""Pre-training the synthetic world's toy CLIP: the stand-in for the pretrained CLIP ViT-L/336 of MobileVLM.

The real MobileVLM V2 starts from OpenAI's CLIP, trained on far more images than LLaVA's data, and keeps it
frozen through both of its training stages. The toy world has no such tower, and a randomly initialised one
does not learn shapes from the VLM's answer tokens within a quickstart's budget (see docs/quickstart.md). So
the toy CLIP is pre-trained here, with dense supervision read from the scene records: for each cell of the
world's 3x3 object grid, the colour, the shape and the size of the object in it, or "empty". The readout is
a linear head per attribute on the mean of the cell's patch features at `select_layer`, the very features
the projector reads; only the tower is kept, the heads are thrown away. The images are drawn fresh from the
world's own scene generator (seeded from the world's seed), not taken from its training or evaluation split.

    report = pretrain_vision(Path("runs/world"), Path("runs/vision"), VisionPretrainConfig(steps=1000))
    report["val"]  # {"color": ..., "shape": ..., "size": ...}: held-out accuracy on occupied cells
    # then train the teacher with student.vision_tower_from=runs/vision/checkpoint, freeze_vision_tower: true

CLI: `alignkd data pretrain-vision --world runs/world --out runs/vision`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from alignkd.errors import AlignKDError

ATTRIBUTES = ("color", "shape", "size")


@dataclass
class VisionPretrainConfig:
    steps: int = 1500  # ~2 min on 2 cores for the synth presets' 96 px / 8 px-patch tower
    batch_size: int = 32
    lr: float = 1e-3
    scenes: int = 6000  # fresh training scenes, cycled with replacement
    val_scenes: int = 300
    eval_every: int = 250
    preset: str = "synth_teacher"  # whose vision config to build (the teacher and the students share it)
    seed: int = 0


def _classes():
    from alignkd.data.synth_scene import COLORS, SHAPES, SIZES

    return {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES)}


def cell_labels(scene: dict) -> list[list[int]]:
    """[attribute][cell] class index, with len(classes) meaning an empty cell: the targets of one scene."""
    from alignkd.data.synth_scene import GRID

    classes = _classes()
    labels = [[len(classes[a])] * (GRID * GRID) for a in ATTRIBUTES]
    for obj in scene["objects"]:
        cell = obj["row"] * GRID + obj["col"]
        for k, a in enumerate(ATTRIBUTES):
            labels[k][cell] = classes[a].index(obj[a])
    return labels


def _draw(n: int, tag: str, seed: int, image_size: int, processor):
    import torch

    from alignkd.data.synth_scene import render_scene, sample_scene

    rng = random.Random(f"{seed}/vision-pretrain/{tag}")
    images, labels = [], []
    for _ in range(n):
        scene = sample_scene(rng, image_size)
        images.append(render_scene(scene))
        labels.append(cell_labels(scene))
    return processor(images), torch.tensor(labels)  # [n, 3, H, W], [n, attributes, cells]


def pretrain_vision(world: Path, out: Path, cfg: VisionPretrainConfig | None = None, progress: bool = True) -> dict:
    """Train the toy CLIP of `cfg.preset` on fresh scenes; writes OUT/checkpoint (the tower inside a MobileVLM
    checkpoint, usable as `vision_tower_from`) and OUT/report.json (held-out accuracy per attribute)."""
    import torch

    from alignkd.distill.checkpoint import load_spec
    from alignkd.distill.config import ModelSpec
    from alignkd.models.checkpoint import save_checkpoint

    cfg = cfg or VisionPretrainConfig()
    world, out = Path(world), Path(out)
    meta = world / "world.json"
    if not meta.is_file():
        raise AlignKDError(f"{meta} not found: --world must be a folder written by `alignkd data synth --out DIR`")
    world_cfg = json.loads(meta.read_text())["config"]
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model, tok = load_spec(ModelSpec(preset=cfg.preset, tokenizer=str(world / "tokenizer")))
    result = train_cell_readout(model, world_cfg["image_size"], cfg, seed=world_cfg["seed"] * 1000 + cfg.seed,
                                progress=progress)
    save_checkpoint(model, tok, out / "checkpoint")
    report = {"config": asdict(cfg), **result, "seconds": round(time.perf_counter() - t0, 1),
              "checkpoint": str(out / "checkpoint")}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")  # written last: marks the stage done
    return report


def train_cell_readout(model, image_size: int, cfg: VisionPretrainConfig, seed: int, progress: bool = True) -> dict:
    """Train `model.vision_tower` (left frozen afterwards) through per-cell linear heads; returns
    {"val", "majority", "curve"}: held-out accuracy on occupied cells, per attribute and over the steps."""
    import torch
    from tqdm.auto import tqdm

    from alignkd.data.image import ImageProcessor
    from alignkd.data.synth_scene import GRID

    t0 = time.perf_counter()
    tower = model.vision_tower.requires_grad_(True)
    grid = model.config.vision.image_size // model.config.vision.patch_size
    if grid % GRID:
        raise AlignKDError(f"vision tower with a {grid}x{grid} patch grid: it does not split into the world's {GRID}x{GRID} "
                           "object cells; the cell readout needs a grid divisible by 3")
    processor = ImageProcessor(model.config.image)
    x_train, y_train = _draw(cfg.scenes, "train", seed, image_size, processor)
    x_val, y_val = _draw(cfg.val_scenes, "val", seed, image_size, processor)
    classes = _classes()
    dim = model.config.vision.hidden_size
    heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(classes[a]) + 1) for a in ATTRIBUTES)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    side = grid // GRID

    def cells(pixels):  # mean of each object cell's patch features: [B, 9, dim]
        f = model.vision_features(pixels)
        b = f.shape[0]
        return f.view(b, GRID, side, GRID, side, dim).mean((2, 4)).reshape(b, GRID * GRID, dim)

    occupied = y_val[:, 0] < len(classes["color"])

    def validate(step: int) -> dict:
        with torch.no_grad():
            f = cells(x_val)
        acc = {a: round(((heads[k](f).argmax(-1) == y_val[:, k])[occupied]).float().mean().item(), 4)
               for k, a in enumerate(ATTRIBUTES)}
        return {"step": step, **acc, "seconds": round(time.perf_counter() - t0, 1)}

    gen = torch.Generator().manual_seed(seed)
    curve = []
    for step in tqdm(range(cfg.steps + 1), desc="toy CLIP", disable=not progress):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append(validate(step))
        if step == cfg.steps:
            break
        idx = torch.randint(0, len(x_train), (cfg.batch_size,), generator=gen)
        f, y = cells(x_train[idx]), y_train[idx]
        loss = sum(torch.nn.functional.cross_entropy(h(f).flatten(0, 1), y[:, k].flatten()) for k, h in enumerate(heads))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    tower.requires_grad_(False)
    majority = {a: round(torch.bincount(y_val[:, k][occupied]).max().item() / occupied.sum().item(), 4)
                for k, a in enumerate(ATTRIBUTES)}
    return {"val": {a: curve[-1][a] for a in ATTRIBUTES}, "majority": majority, "curve": curve}
