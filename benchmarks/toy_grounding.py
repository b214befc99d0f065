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

Curricula (docs/quickstart.md has the curves; all with --objects 3 --question exist --frozen-vision
--vision-from alignkd/assets/synth_teacher --batch 32 --lr 1e-3 --warmup 30):

    ... --no-system --steps 1000                # shorter context: still at chance
    ... --text-steps 400 --align-steps 300      # compact text first, then the projector alone, then all
    ... --caption-steps 400                     # captions first (the `plain` pre-training form)
    ... --bare-steps 500                        # image + bare question first, no template
    ... --oracle-steps 800                      # ideal image tokens: is it the image or the context?
    ... --word-align-steps 300 --word-align-weight 1                   # image tokens fitted to word embeddings
    ... --mix-compact 64 --steps 400                                   # compact ideal-token examples alongside
    ... --mix-compact 64 --word-align-steps 300 --word-align-weight 1  # both: what the grounding stage does
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
    ap.add_argument("--no-system", action="store_true", help="drop the v1 template's system sentence (about 40 "
                    "tokens before the image): does the length of the context slow the comparison?")
    ap.add_argument("--text-steps", type=int, default=0, help="curriculum: first train the language model this many "
                    "steps on the question in compact text (\"red circle, blue square. Is there a red circle in the "
                    "image?\" -> Yes; no template, no image), as a real teacher's LLM comes pre-trained")
    ap.add_argument("--align-steps", type=int, default=0, help="curriculum: then this many steps on the image form with "
                    "the language model frozen (only the projector learns: LLaVA's alignment stage)")
    ap.add_argument("--text-batch", type=int, default=64)
    ap.add_argument("--word-align-steps", type=int, default=0, help="curriculum: first fit the projector alone (CLIP and "
                    "LLM fixed) so that each image token on an object points the way of the sum of the LLM's input "
                    "embeddings of the object's colour and shape words (cosine): image tokens start where the "
                    "question's words are, so the comparison is the text one")
    ap.add_argument("--oracle-steps", type=int, default=0, help="curriculum: first train this many steps with ideal image "
                    "tokens in place of the encoder's (on an object: its colour + shape word embeddings, from the live "
                    "embedding table; elsewhere zero): is it the image tokens or the context that is slow to learn?")
    ap.add_argument("--mix-compact", type=int, default=0, help="add to every step this many compact examples: the scene as "
                    "one ideal token per object (colour + shape word embeddings) right before the bare question, no "
                    "template (about 15 positions): the short form the comparison is learnt quickly in, trained "
                    "alongside the template form")
    ap.add_argument("--word-align-weight", type=float, default=0.0, help="keep that fit as an auxiliary loss with this "
                    "weight while training (0: only the initial fit)")
    ap.add_argument("--bare-steps", type=int, default=0, help="curriculum: first train this many steps on the image and "
                    "the bare question, no template (\"<image>Is there a red circle in the image?\" -> Yes): about 45 "
                    "positions instead of the v1 template's 110")
    ap.add_argument("--caption-steps", type=int, default=0, help="curriculum: first train this many steps on captions "
                    "(the `plain` template: the image, then the world's description of it; every word about an object "
                    "is a direct lookup in the image, where a yes/no answer is one comparison per sequence)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from alignkd.data.dataset import Collator, Example
    from alignkd.data.image import ImageProcessor
    from alignkd.data.synth_scene import render_scene, sample_scene
    from alignkd.data.synth_world import SynthConfig, synthesize
    from dataclasses import replace

    from alignkd.data.templates import get_template, tokenize_conversation
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
    template = replace(get_template("v1"), system="") if args.no_system else get_template("v1")

    def sample(rng: random.Random, turns: int = 1):
        scene = sample_scene(rng, 224, min_objects=args.objects, max_objects=args.objects)
        question, answer = _question(rng, scene, args.question)
        if turns > 1 and not args.scene_as_text:
            convo = [{"from": "human", "value": f"<image>\n{question}\n{SHORT}"}, {"from": "gpt", "value": answer}]
            for _ in range(turns - 1):
                q, a = _question(rng, scene, args.question)
                convo += [{"from": "human", "value": f"{q}\n{SHORT}"}, {"from": "gpt", "value": a}]
            ex = tokenize_conversation(convo, template, tok, has_image=True)
            return Example(answer, ex.input_ids, ex.labels, processor([render_scene(scene)]))
        if args.scene_as_text:
            listed = ", ".join(f"{o['color']} {o['shape']}" for o in scene["objects"])
            turns = [{"from": "human", "value": f"Scene: {listed}.\n{question}\n{SHORT}"}, {"from": "gpt", "value": answer}]
            ex = tokenize_conversation(turns, template, tok, has_image=False)
            return Example(answer, ex.input_ids, ex.labels, None)
        turns = [{"from": "human", "value": f"<image>\n{question}\n{SHORT}"}, {"from": "gpt", "value": answer}]
        ex = tokenize_conversation(turns, template, tok, has_image=True)
        if oracle_scenes is not None:  # the pixels only carry the scene's index for the patched encoder
            oracle_scenes.append(scene)
            return Example(answer, ex.input_ids, ex.labels, torch.full((1, 3, 2, 2), float(len(oracle_scenes) - 1)))
        return Example(answer, ex.input_ids, ex.labels, processor([render_scene(scene)]))

    oracle_scenes = None

    def compact(rng: random.Random):
        scene = sample_scene(rng, 224, min_objects=args.objects, max_objects=args.objects)
        question, answer = _question(rng, scene, args.question)
        listed = ", ".join(f"{o['color']} {o['shape']}" for o in scene["objects"])
        prompt, reply = tok.encode(f"{listed}. {question}"), tok.encode(answer, add_special_tokens=False)
        return Example(answer, prompt + reply, [-100] * len(prompt) + reply, None)

    def described(rng: random.Random):
        from alignkd.data.synth_questions import caption

        scene = sample_scene(rng, 224, min_objects=args.objects, max_objects=args.objects)
        convo = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption(scene)}]
        ex = tokenize_conversation(convo, "plain", tok, has_image=True)
        return Example("caption", ex.input_ids, ex.labels, processor([render_scene(scene)]))

    def bare(rng: random.Random):
        from alignkd.data.templates import tokenize_with_image

        scene = sample_scene(rng, 224, min_objects=args.objects, max_objects=args.objects)
        question, answer = _question(rng, scene, args.question)
        prompt, reply = tokenize_with_image(f"<image>{question}", tok), tok.encode(answer, add_special_tokens=False)
        return Example(answer, prompt + reply + [tok.eos_id], [-100] * len(prompt) + reply + [tok.eos_id],
                       processor([render_scene(scene)]))

    from alignkd.quickstart_grounding import GroundingLosses

    # The grounding stage's own losses (alignkd/quickstart_grounding.py; its compact examples ask existence).
    # The session-8 curves in docs/quickstart.md were measured before they moved there, when an object's tokens
    # were those whose centre lay within its radius (or half a token) rather than those its disc reaches.
    losses = GroundingLosses(model, tok, 224, objects=(args.objects, args.objects))
    real_encode = model.encode_images

    def oracle_encode(pixel_values):
        return losses.ideal_tokens([oracle_scenes[int(v)] for v in pixel_values[:, 0, 0, 0]])

    if args.word_align_steps:
        proj_opt = torch.optim.AdamW(model.mm_projector.parameters(), lr=1e-3, weight_decay=0.0)
        align_rng = random.Random(f"{args.seed}/align")
        for k in range(args.word_align_steps):
            loss = losses.align_loss(align_rng, args.batch)
            proj_opt.zero_grad()
            loss.backward()
            proj_opt.step()
            if k % 50 == 0 or k == args.word_align_steps - 1:
                print(json.dumps({"align_step": k, "align_loss": round(loss.item(), 4)}), file=sys.stderr, flush=True)

    collate = Collator(tok.pad_id)  # the training recipe's own padding and image stacking

    def batch(examples):
        b = collate(examples)
        return {k: b[k] for k in ("input_ids", "labels", "attention_mask", "images") if b.get(k) is not None}

    val = [sample(random.Random(f"{args.seed}/val/{i}")) for i in range(args.val)]
    majority = Counter(ex.id for ex in val).most_common(1)[0][1] / len(val)  # Example.id holds the answer here
    val_batch = batch(val)
    bare_batch = batch([bare(random.Random(f"{args.seed}/val/{i}")) for i in range(args.val)]) if args.bare_steps else None
    text_batch = batch([compact(random.Random(f"{args.seed}/val/{i}")) for i in range(args.val)]) if args.text_steps else None

    def accuracy(b):
        """The held-out loss and the accuracy of the answer's first token."""
        model.eval()
        with torch.no_grad():
            out = model(**b)
        model.train()
        logits, labels = out.logits[:, :-1], out.spliced.labels[:, 1:]
        first = (labels != -100).float().argmax(1)
        rows = torch.arange(len(labels))
        return out, (logits[rows, first].argmax(-1) == labels[rows, first]).float().mean().item()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) if args.warmup else 1.0)
    if args.oracle_steps:
        oracle_scenes = []
        oracle_val_batch = batch([sample(random.Random(f"{args.seed}/val/{i}")) for i in range(args.val)])
        oracle_val_scenes, oracle_scenes = oracle_scenes, None
    rng, curve, t0 = random.Random(f"{args.seed}/train"), [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            out, acc = accuracy(val_batch)
            curve.append({"step": step, "val_loss": round(out.loss.item(), 4), "acc": round(acc, 4),
                          "seconds": round(time.perf_counter() - t0, 1)})
            if step <= args.text_steps and args.text_steps:
                curve[-1]["text_acc"] = round(accuracy(text_batch)[1], 4)
            if step <= args.oracle_steps and args.oracle_steps:
                oracle_scenes, model.encode_images = oracle_val_scenes, oracle_encode
                curve[-1]["oracle_acc"] = round(accuracy(oracle_val_batch)[1], 4)
                oracle_scenes, model.encode_images = None, real_encode
            if step <= args.bare_steps and args.bare_steps:
                curve[-1]["bare_acc"] = round(accuracy(bare_batch)[1], 4)
            print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
        if step == args.steps:
            break
        if step < args.oracle_steps:
            oracle_scenes = []
            model.encode_images = oracle_encode
            examples = [sample(rng, args.turns) for _ in range(args.batch)]
        elif step < args.caption_steps:
            examples = [described(rng) for _ in range(args.batch)]
        elif step < args.bare_steps:
            examples = [bare(rng) for _ in range(args.batch)]
        elif step < args.text_steps:
            examples = [compact(rng) for _ in range(args.text_batch)]
        else:
            examples = [sample(rng, args.turns) for _ in range(args.batch)]
        if args.align_steps and step in (args.text_steps, args.text_steps + args.align_steps):
            aligning = step == args.text_steps
            model.llm.requires_grad_(not aligning)  # frozen LLM: only the projector gets gradients
            print(json.dumps({"step": step, "stage": "align" if aligning else "tune"}), file=sys.stderr, flush=True)
        loss = model(**batch(examples)).loss
        oracle_scenes, model.encode_images = None, real_encode
        if args.word_align_weight:
            loss = loss + args.word_align_weight * losses.align_loss(rng, 8)
        if args.mix_compact:
            loss = loss + losses.compact_loss(rng, args.mix_compact)
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
