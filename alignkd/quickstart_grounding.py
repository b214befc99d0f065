"""Grounding pre-training of the toy teacher: the stage before its fine-tuning that teaches it to compare a
question's object with what its image shows.

Why (docs/quickstart.md, "What makes the comparison slow"): a 4-layer language model trained from scratch
learns POPE's comparison ("Is there a red circle in the image?") in a few hundred steps when scene and question
take a dozen positions, but stays at chance for 1,000 steps in the v1 template (about 110 positions), with the
encoder's image tokens and with ideal ones alike. A real teacher's LLM comes pre-trained; this stage stands in
for that. Each step sums three losses:
- template: fresh scenes in the v1 template, the image and one existence question (the fine-tuning's form);
- compact: the scene as one position per object, the sum of its colour and shape word embeddings, followed by
  the bare question (about 15 positions), where the comparison is learnt quickly;
- alignment: each image token on an object points the way of that sum (1 - cosine), so what the compact form
  teaches applies to the image tokens. The projector is fitted to it alone first (`align_steps`).
The toy CLIP stays frozen, as in the fine-tuning; the projector and the language model learn. Measured with
`benchmarks/toy_grounding.py` (held-out existence accuracy, 3 objects, majority 53.9%): template alone 56% at
step 400; with the compact form and the alignment 84% at step 400.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from alignkd.errors import AlignKDError


@dataclass
class GroundingConfig:
    steps: int = 800
    batch_size: int = 32  # template examples per step
    compact_batch: int = 64  # compact examples per step (short: cheap)
    align_steps: int = 300  # projector-only fit of the alignment before the joint steps
    align_weight: float = 1.0
    align_images: int = 8  # images per step for the alignment loss during the joint steps
    lr: float = 1e-3
    warmup: int = 30
    eval_every: int = 100
    val_questions: int = 128
    seed: int = 0
    # Keep the compact examples and the alignment as an auxiliary loss through the teacher's fine-tuning on the
    # world's records (`GroundingAuxiliary`): without them those steps undo the stage (docs/quickstart.md).
    keep_in_finetune: bool = True
    # Question kinds of the compact examples (alignkd.data.synth_questions.ask), in the stage and in the
    # fine-tuning. Only kinds answered from the objects' colours and shapes: the compact scene has no positions or
    # sizes. Measured (docs/quickstart.md): the six kinds in the fine-tuning lift GQA and MME-P over existence alone.
    compact_kinds: tuple[str, ...] = ("exist",)
    finetune_kinds: tuple[str, ...] = ("exist", "color", "shape", "count_shape", "count_color", "count_all")
    # Share of the fine-tuning's compact "no" existence questions asked about a class whose colour and whose shape
    # are both in the scene, on other objects (POPE's scenes hold 3-4 classes, so most of its negatives are such).
    finetune_hard_negatives: float = 0.0


def object_tokens(scene: dict, grid: int) -> dict[int, dict]:
    """Image-token index -> the object it shows: the tokens (raster order, a grid x grid split of the image) whose
    square the object's disc reaches. An object sits inside its cell of the world's 3x3 layout, so with a 6x6
    token grid it covers some of its cell's four tokens and no other object's."""
    side = scene["size"][0] / grid
    out = {}
    for o in scene["objects"]:
        for i in range(grid):
            for j in range(grid):
                dx = max(j * side - o["cx"], 0.0, o["cx"] - (j + 1) * side)  # from the centre to the nearest point of the square
                dy = max(i * side - o["cy"], 0.0, o["cy"] - (i + 1) * side)
                if dx * dx + dy * dy < o["r"] ** 2:
                    out[i * grid + j] = o
    return out


COMPACT_KINDS = ("exist", "color", "shape", "count_shape", "count_color", "count_all")


class GroundingLosses:
    """The three losses on one model (also what `benchmarks/toy_grounding.py` probes with). `objects`: the
    (fewest, most) objects per scene, default the world's."""

    def __init__(self, model, tok, image_size: int, objects: tuple[int, int] | None = None, kinds: tuple[str, ...] = ("exist",),
                 hard_negatives: float = 0.0):
        from alignkd.data.image import ImageProcessor
        from alignkd.data.synth_scene import COLORS, SHAPES

        self.model, self.tok, self.image_size, self.objects = model, tok, image_size, objects
        unknown = set(kinds) - set(COMPACT_KINDS)
        if unknown:
            raise AlignKDError(f"compact_kinds {sorted(unknown)}: the compact scene (colour and shape per object) answers only {list(COMPACT_KINDS)}")
        self.kinds, self.hard_negatives = tuple(kinds), hard_negatives
        self.grid = model.config.pooled_grid
        self.processor = ImageProcessor(model.config.image)
        self.word = {}
        for w in (*COLORS, *SHAPES):
            ids = tok.encode(w, add_special_tokens=False)
            if len(ids) != 1:
                raise AlignKDError(f"the world's tokenizer splits {w!r} into {len(ids)} pieces; the grounding stage needs one "
                                   "piece per colour and shape word (a larger --vocab-size for the world)")
            self.word[w] = ids[0]

    def _scene(self, rng: random.Random) -> dict:
        from alignkd.data.synth_scene import sample_scene

        if self.objects is None:
            return sample_scene(rng, self.image_size)
        return sample_scene(rng, self.image_size, min_objects=self.objects[0], max_objects=self.objects[1])

    def object_vector(self, o: dict):
        """The ideal image token of an object: its colour and shape words' input embeddings, summed."""
        emb = self.model.llm.get_input_embeddings().weight
        return emb[self.word[o["color"]]] + emb[self.word[o["shape"]]]

    def template_example(self, rng: random.Random):
        from alignkd.data.dataset import Example
        from alignkd.data.synth_questions import ask
        from alignkd.data.synth_scene import render_scene
        from alignkd.data.synth_questions import SHORT_ANSWER
        from alignkd.data.templates import tokenize_conversation

        scene = self._scene(rng)
        q = ask(rng, scene, "exist")
        answer = q["answer"].capitalize()
        turns = [{"from": "human", "value": f"<image>\n{q['question']}\n{SHORT_ANSWER}"}, {"from": "gpt", "value": answer}]
        ex = tokenize_conversation(turns, "v1", self.tok, has_image=True)
        return Example(answer, ex.input_ids, ex.labels, self.processor([render_scene(scene)]))

    def compact_loss(self, rng: random.Random, n: int):
        import torch

        from alignkd.data.synth_questions import ask

        emb = self.model.llm.get_input_embeddings()
        rows, labels = [], []
        for _ in range(n):
            scene = self._scene(rng)
            kind = rng.choice(self.kinds) if len(self.kinds) > 1 else self.kinds[0]
            q = ask(rng, scene, kind) or ask(rng, scene, "exist")  # some kinds need e.g. a shape no other object has
            if q["kind"] == "exist" and q["answer"] == "no" and self.hard_negatives and rng.random() < self.hard_negatives:
                q = {**q, "question": _hard_negative(rng, scene) or q["question"]}
            ids = self.tok.encode(q["question"])
            answer = q["answer"].capitalize() if q["answer"] in ("yes", "no") else q["answer"]  # the world's short answers
            reply = self.tok.encode(answer, add_special_tokens=False) + [self.tok.eos_id]
            objects = torch.stack([self.object_vector(o) for o in scene["objects"]])
            rows.append(torch.cat([emb(torch.tensor(ids[:1])), objects, emb(torch.tensor(ids[1:] + reply))]))
            labels.append(torch.tensor([-100] * (len(rows[-1]) - len(reply)) + reply))
        pad = torch.nn.utils.rnn.pad_sequence  # right-padding: zeros, -100 labels, a 0 mask
        x, y = pad(rows, batch_first=True), pad(labels, batch_first=True, padding_value=-100)
        mask = pad([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
        return self.model.llm(inputs_embeds=x, attention_mask=mask, labels=y).loss

    def align_loss(self, rng: random.Random, n: int):
        import torch

        from alignkd.data.synth_scene import render_scene

        scenes = [self._scene(rng) for _ in range(n)]
        tokens = self.model.encode_images(torch.cat([self.processor([render_scene(s)]) for s in scenes]))
        want = self.ideal_tokens(scenes).detach()
        on = want.norm(dim=-1) > 0
        if not on.any():
            return tokens.sum() * 0.0
        return 1 - torch.nn.functional.cosine_similarity(tokens[on], want[on], dim=-1).mean()

    def ideal_tokens(self, scenes: list[dict]):
        """[N, grid * grid, D]: each scene's ideal image tokens (an object's on the tokens it covers, zero elsewhere)."""
        import torch

        dim = self.model.llm.get_input_embeddings().weight.shape[1]
        rows = []
        for scene in scenes:
            cells = [torch.zeros(dim)] * (self.grid * self.grid)
            for index, o in object_tokens(scene, self.grid).items():
                cells[index] = self.object_vector(o)
            rows.append(torch.stack(cells))
        return torch.stack(rows)


def _hard_negative(rng: random.Random, scene: dict) -> str | None:
    """An existence question about an absent class whose colour and shape both appear on other objects, if any."""
    from alignkd.data.synth_questions import absent_classes

    colors, shapes = {o["color"] for o in scene["objects"]}, {o["shape"] for o in scene["objects"]}
    names = [c for c in absent_classes(scene) if c.split(" ")[0] in colors and c.split(" ")[1] in shapes]
    return f"Is there a {rng.choice(names)} in the image?" if names else None


class GroundingAuxiliary:
    """The compact and alignment losses as the recipe's `auxiliary` (alignkd.distill.recipe.run): added to every
    fine-tuning step of the grounded teacher so what the grounding stage taught survives. Examples are drawn from
    the step, so a resumed run draws the same ones."""

    def __init__(self, world: Path, cfg: GroundingConfig):
        meta = Path(world) / "world.json"
        self.world, self.cfg = Path(world), cfg
        self.image_size = json.loads(meta.read_text())["config"]["image_size"]
        self._losses: GroundingLosses | None = None

    def __call__(self, student, step: int):
        if self._losses is None or self._losses.model is not student:
            from alignkd.data.tokenizer import Tokenizer

            self._losses = GroundingLosses(student, Tokenizer.from_folder(self.world / "tokenizer"), self.image_size,
                                           kinds=tuple(self.cfg.finetune_kinds), hard_negatives=self.cfg.finetune_hard_negatives)
        rng = random.Random(f"{self.cfg.seed}/grounding/finetune/{step}")
        loss = self._losses.compact_loss(rng, self.cfg.compact_batch)
        if self.cfg.align_weight:
            loss = loss + self.cfg.align_weight * self._losses.align_loss(rng, self.cfg.align_images)
        return loss


def ground_teacher(world: Path, vision_from: Path, out: Path, cfg: GroundingConfig | None = None, progress: bool = True,
                   preset: str = "synth_teacher") -> dict:
    """Train a fresh `preset` model's projector and language model (on `vision_from`'s frozen toy CLIP) on the
    three losses; writes OUT/checkpoint (the starting point of its fine-tuning) and, last, OUT/report.json
    (held-out existence accuracy)."""
    import torch
    from tqdm.auto import tqdm

    from alignkd.data.dataset import Collator
    from alignkd.distill.checkpoint import load_spec
    from alignkd.distill.config import ModelSpec
    from alignkd.models.checkpoint import save_checkpoint

    cfg = cfg or GroundingConfig()
    world, out = Path(world), Path(out)
    meta = world / "world.json"
    if not meta.is_file():
        raise AlignKDError(f"{meta} not found: the grounding stage needs a world written by `alignkd data synth --out DIR`")
    image_size = json.loads(meta.read_text())["config"]["image_size"]
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model, tok = load_spec(ModelSpec(preset=preset, tokenizer=str(world / "tokenizer"), vision_tower_from=str(vision_from)))
    model.train()
    model.vision_tower.requires_grad_(False)
    g = GroundingLosses(model, tok, image_size, kinds=tuple(cfg.compact_kinds))
    collate = Collator(tok.pad_id)

    def batch(examples):
        b = collate(examples)
        return {k: b[k] for k in ("input_ids", "labels", "attention_mask", "images")}

    val = batch([g.template_example(random.Random(f"{cfg.seed}/grounding/val/{i}")) for i in range(cfg.val_questions)])
    rng = random.Random(f"{cfg.seed}/grounding/train")
    proj_opt = torch.optim.AdamW(model.mm_projector.parameters(), lr=cfg.lr, weight_decay=0.0)
    for _ in tqdm(range(cfg.align_steps), desc="align the projector", disable=not progress):
        loss = g.align_loss(rng, cfg.batch_size)
        proj_opt.zero_grad()
        loss.backward()
        proj_opt.step()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) if cfg.warmup else 1.0)
    curve = []
    for step in tqdm(range(cfg.steps + 1), desc=f"ground the {preset}", disable=not progress):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append({"step": step, "existence_accuracy": round(_accuracy(model, val), 4),
                          "seconds": round(time.perf_counter() - t0, 1)})
        if step == cfg.steps:
            break
        loss = model(**batch([g.template_example(rng) for _ in range(cfg.batch_size)])).loss
        loss = loss + g.compact_loss(rng, cfg.compact_batch)
        if cfg.align_weight:
            loss = loss + cfg.align_weight * g.align_loss(rng, cfg.align_images)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    save_checkpoint(model.eval(), tok, out / "checkpoint")
    labels = val["labels"]
    answers = labels[torch.arange(len(labels)), (labels != -100).float().argmax(1)]  # each question's Yes / No token
    majority = answers.unique(return_counts=True)[1].max().item() / len(answers)
    report = {"config": asdict(cfg), "preset": preset, "curve": curve, "majority": round(majority, 4),
              "seconds": round(time.perf_counter() - t0, 1), "checkpoint": str(out / "checkpoint")}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")  # written last: marks the stage done
    return report


def _accuracy(model, val: dict) -> float:
    """Held-out accuracy of the answer's first token (Yes / No)."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(**val)
    model.train(was_training)
    logits, labels = out.logits[:, :-1], out.spliced.labels[:, 1:]
    first = (labels != -100).float().argmax(1)
    rows = torch.arange(len(labels))
    return (logits[rows, first].argmax(-1) == labels[rows, first]).float().mean().item()
