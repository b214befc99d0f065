"""How fast does the toy teacher learn to look at the image? A learning-speed probe for sizing the quickstart.

Trains `synth_teacher` (the quickstart's toy teacher: LLaMA 256 wide, 4 layers, toy CLIP 96 px) from scratch
(or from a pre-trained toy CLIP with --vision-from) on ONE focused question type, on freshly drawn scenes of
the synthetic world, with the recipe's optimizer settings (AdamW, grad-norm clip 1.0, constant LR), and
reports the held-out accuracy of the answer's first token every `--eval-every` steps next to the
majority-answer baseline (what a model that ignores the image gets). Questions: `color` ("What color is the
{shape}?"; with --objects 1 the colour of the only object) and `exist` ("Is there a {color} {shape} in the
image?", half yes, half no: the POPE question). `--scene-as-text` gives the same model the scene as a line of
text instead of the image ("Scene: red circle, blue square."; no image at all), which isolates the language
model: if the text form is as slow to learn as the image form, the vision side is not what holds it back.

Prints one JSON object: settings, `majority_acc`, `curve` ([{step, val_loss, acc, seconds}]).

    python benchmarks/toy_grounding.py --objects 1 --question color --steps 200            # ~2 min on 2 cores
    python benchmarks/toy_grounding.py --objects 3 --question exist --steps 300
    python benchmarks/toy_grounding.py --objects 1 --question color --steps 200 --frozen-vision
    python benchmarks/toy_grounding.py --objects 3 --question exist --steps 300 --frozen-vision \
        --vision-from runs/quickstart/vision/checkpoint          # the quickstart's pre-trained toy CLIP
    python benchmarks/toy_grounding.py --objects 3 --question exist --steps 600 --scene-as-text
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

SHORT = "Answer the question using a single word or phrase."


def _question(rng: random.Random, scene: dict, kind: str) -> tuple[str, str]:
    from alignkd.data.synth_questions import ask

    if kind == "exist":
        q = ask(rng, scene, "exist")
        return q["question"], q["answer"].capitalize()
    obj = rng.choice(scene["objects"])
    return f"What color is the {obj['shape']}?", obj["color"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=1, help="objects per scene (1-5)")
    ap.add_argument("--question", choices=("color", "exist"), default="color")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--val", type=int, default=128, help="held-out questions")
    ap.add_argument("--frozen-vision", action="store_true", help="keep the CLIP fixed (only projector + LLM learn)")
    ap.add_argument("--vision-from", default=None, help="checkpoint whose toy CLIP to start from, e.g. the OUT/checkpoint of "
                    "`alignkd data pretrain-vision` (default: random init)")
    ap.add_argument("--scene-as-text", action="store_true", help="state the scene's objects in the prompt instead of "
                    "showing the image (the language model alone)")
    ap.add_argument("--turns", type=int, default=1, help="questions per training sequence about the same scene "
                    "(multi-turn, as the fine-tuning records; the held-out set stays single-turn)")
    ap.add_argument("--warmup", type=int, default=0, help="linear warm-up steps before the constant LR")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from alignkd.data.dataset import Collator, Example
    from alignkd.data.image import ImageProcessor
    from alignkd.data.synth_scene import render_scene, sample_scene
    from alignkd.data.synth_world import SynthConfig, synthesize
    from alignkd.data.templates import tokenize_conversation
    from alignkd.data.tokenizer import Tokenizer
    from alignkd.models.mobilevlm import MobileVLM, get_preset

    with tempfile.TemporaryDirectory() as tmp:  # only for the world's tokenizer
        synthesize(Path(tmp), SynthConfig.tiny(vocab_size=1024, train_images=200))
        tok = Tokenizer.from_folder(Path(tmp) / "tokenizer")
    torch.manual_seed(args.seed)
    config = get_preset("synth_teacher")
    config.llm.vocab_size = tok.vocab_size
    model = MobileVLM(config).train()
    if args.vision_from:
        from alignkd.distill.checkpoint import copy_vision_tower

        copy_vision_tower(model, Path(args.vision_from))
    model.vision_tower.requires_grad_(not args.frozen_vision)
    processor = ImageProcessor(config.image)

    def sample(rng: random.Random, turns: int = 1):
        scene = sample_scene(rng, 224, min_objects=args.objects, max_objects=args.objects)
        question, answer = _question(rng, scene, args.question)
        if turns > 1 and not args.scene_as_text:
            convo = [{"from": "human", "value": f"<image>\n{question}\n{SHORT}"}, {"from": "gpt", "value": answer}]
            for _ in range(turns - 1):
                q, a = _question(rng, scene, args.question)
                convo += [{"from": "human", "value": f"{q}\n{SHORT}"}, {"from": "gpt", "value": a}]
            ex = tokenize_conversation(convo, "v1", tok, has_image=True)
            return Example(answer, ex.input_ids, ex.labels, processor([render_scene(scene)]))
        if args.scene_as_text:
            listed = ", ".join(f"{o['color']} {o['shape']}" for o in scene["objects"])
            turns = [{"from": "human", "value": f"Scene: {listed}.\n{question}\n{SHORT}"}, {"from": "gpt", "value": answer}]
            ex = tokenize_conversation(turns, "v1", tok, has_image=False)
            return Example(answer, ex.input_ids, ex.labels, None)
        turns = [{"from": "human", "value": f"<image>\n{question}\n{SHORT}"}, {"from": "gpt", "value": answer}]
        ex = tokenize_conversation(turns, "v1", tok, has_image=True)
        return Example(answer, ex.input_ids, ex.labels, processor([render_scene(scene)]))

    collate = Collator(tok.pad_id)  # the training recipe's own padding and image stacking

    def batch(examples):
        b = collate(examples)
        return {k: b[k] for k in ("input_ids", "labels", "attention_mask", "images") if b.get(k) is not None}

    val = [sample(random.Random(f"{args.seed}/val/{i}")) for i in range(args.val)]
    majority = Counter(ex.id for ex in val).most_common(1)[0][1] / len(val)  # Example.id holds the answer here
    val_batch = batch(val)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) if args.warmup else 1.0)
    rng, curve, t0 = random.Random(f"{args.seed}/train"), [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                out = model(**val_batch)
            model.train()
            logits, labels = out.logits[:, :-1], out.spliced.labels[:, 1:]
            first = (labels != -100).float().argmax(1)  # the answer's first token
            rows = torch.arange(len(val))
            acc = (logits[rows, first].argmax(-1) == labels[rows, first]).float().mean().item()
            curve.append({"step": step, "val_loss": round(out.loss.item(), 4), "acc": round(acc, 4),
                          "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
        if step == args.steps:
            break
        loss = model(**batch([sample(rng, args.turns) for _ in range(args.batch)])).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    result = {"model": "synth_teacher", **vars(args), "majority_acc": round(majority, 4), "curve": curve}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
