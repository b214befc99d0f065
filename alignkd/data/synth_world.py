"""The synthetic world: a seeded, offline stand-in for LLaVA's training data and the six benchmarks.

`synthesize(out_dir, config)` writes everything the tests and the quickstart run on (this project has no
model hub and no dataset hub):

    out_dir/world.json                 config + counts (the summary this function returns)
    out_dir/train/pretrain.json        LLaVA JSON, captions for the `plain` template
    out_dir/train/finetune.json        LLaVA JSON, single/multi-turn Q/A for `v1` (+ text-only records)
    out_dir/train/images/*.png
    out_dir/eval/...                   the six benchmarks in LLaVA's eval layout (docs/benchmark-layout.md)
    out_dir/tokenizer/                 SentencePiece BPE, LLaMA-style folder (sp_tokenizer.py)
    out_dir/scenes/{train,eval}.jsonl  every image's scene record; scenes/eval_questions.jsonl the truth

Train and eval scenes come from disjoint seed strings ("{seed}/train/..." vs "{seed}/eval/..."), so they
never share a picture. Exercised by `alignkd data synth --out DIR` and tests/data/test_synth.py.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from alignkd.data.sp_tokenizer import train_tokenizer
from alignkd.data.synth_bench import (
    EvalSink, write_gqa, write_jsonl, write_json, write_mme, write_pope, write_textvqa,
)
from alignkd.data.synth_bench_choice import n_options, options_block, sqa_prompt, write_mmbench, \
    write_scienceqa
from alignkd.data.synth_questions import (
    OPTION_LETTER, SHORT_ANSWER, ask, ask_any, caption, multiple_choice, ocr_tokens, text_only, verify_pair,
)
from alignkd.data.synth_scene import png_bytes, render_scene, sample_arithmetic_scene, sample_scene
from alignkd.errors import AlignKDError

OUTPUTS = ("world.json", "train", "eval", "tokenizer", "scenes")
MME_TRAIN_CATEGORIES = ("existence", "count", "position", "color", "OCR")


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of the synthetic world. The defaults write in about 10 s on 2 cores; `tiny` in under a second."""

    seed: int = 0
    image_size: int = 224
    train_images: int = 2000
    max_turns: int = 3                 # finetune records have 1..max_turns Q/A rounds
    text_only_records: int = 100       # finetune records with no "image" key
    arithmetic_share: float = 0.1      # share of training images that are arithmetic cards
    gqa_questions: int = 300
    sqa_questions: int = 300
    textvqa_questions: int = 300
    mme_images_per_category: int = 40  # two questions each, six categories
    mmbench_questions: int = 300       # base questions; circular copies come on top
    pope_images: int = 60              # 3 yes + 3 no per image in each of the three subsets
    vocab_size: int = 1024

    def __post_init__(self):
        if self.image_size < 32:
            raise AlignKDError(f"SynthConfig.image_size={self.image_size} is too small to draw legible "
                               f"scenes; use 32 or more (224 is the default).")
        counts = {k: v for k, v in asdict(self).items() if k not in ("seed", "arithmetic_share")}
        least = {"text_only_records": 0}
        bad = [k for k, v in counts.items() if not isinstance(v, int) or v < least.get(k, 1)]
        if bad:
            raise AlignKDError(f"SynthConfig fields {bad} must be positive integers; got "
                               f"{ {k: counts[k] for k in bad} }.")
        if not 0.0 <= self.arithmetic_share <= 1.0:
            raise AlignKDError(f"SynthConfig.arithmetic_share={self.arithmetic_share} must be within [0, 1].")
        if self.vocab_size < 300:
            raise AlignKDError(f"SynthConfig.vocab_size={self.vocab_size} leaves no room beyond the 259 "
                               f"byte and special pieces; use 300 or more.")

    @classmethod
    def tiny(cls, **overrides) -> "SynthConfig":
        """A few dozen images per split: what unit tests use (well under a second)."""
        base = dict(image_size=64, train_images=40, max_turns=2, text_only_records=4, gqa_questions=12,
                    sqa_questions=12, textvqa_questions=8, mme_images_per_category=2, mmbench_questions=8,
                    pope_images=4, vocab_size=512)
        return cls(**{**base, **overrides})


SYNTH_PRESETS = {"default": SynthConfig(), "tiny": SynthConfig.tiny()}


def synth_preset(name: str, **overrides) -> SynthConfig:
    if name not in SYNTH_PRESETS:
        raise AlignKDError(f"unknown synthetic-world preset {name!r}; choose one of {sorted(SYNTH_PRESETS)}.")
    return replace(SYNTH_PRESETS[name], **overrides)


def _turn(rng: random.Random, scene: dict) -> tuple[str, str]:
    """One (prompt, answer) round, in one of the styles the benchmarks ask in."""
    if scene["kind"] == "arithmetic":
        style = rng.choice(("short", "verify", "long"))
        if style == "verify":
            q = rng.choice(verify_pair(rng, scene, "numerical_calculation"))
            return f"{q['question']}\n{SHORT_ANSWER}", q["answer"].capitalize()
        q = ask(rng, scene, "arith")
        return (f"{q['question']}\n{SHORT_ANSWER}", q["answer"]) if style == "short" \
            else (q["question"], q["full_answer"])
    # Mostly short questions that need the image; "exist" is POPE's question, a yes/no about one object class
    # (half present, half absent), asked often because it is the comparison the toy teacher learns last.
    style = rng.choices(("short", "exist", "verify", "ocr", "choice", "long", "caption"), weights=(5, 4, 3, 2, 3, 1, 1))[0]
    if style == "exist":
        q = ask(rng, scene, "exist")
        return f"{q['question']}\n{SHORT_ANSWER}", q["answer"].capitalize()
    if style == "verify":
        pair = verify_pair(rng, scene, rng.choice(MME_TRAIN_CATEGORIES))
        if pair is not None:
            q = rng.choice(pair)
            return f"{q['question']}\n{SHORT_ANSWER}", q["answer"].capitalize()
    if style == "ocr" and (q := ask(rng, scene, "text")) is not None:
        tokens = ", ".join(ocr_tokens(scene))
        return f"{q['question']}\nReference OCR token: {tokens}\n{SHORT_ANSWER}", q["answer"]
    if style == "choice":
        mc = multiple_choice(rng, scene, n_options(rng))
        hint = rng.choice(("", "Look at the picture."))
        # Both ScienceQA's "Context: ..." form and MMBench's "{hint}\n..." form, as the benchmarks send them.
        body = sqa_prompt(hint, mc["question"], mc["options"]) if rng.random() < 0.5 else \
            (f"{hint}\n" if hint else "") + f"{mc['question']}\n{options_block(mc['options'])}"
        return f"{body}\n{OPTION_LETTER}", "ABCD"[mc["answer_index"]]
    if style == "caption":
        return "Describe the image briefly.", caption(scene)
    q = ask_any(rng, scene)
    if style == "long":
        return q["question"], q["full_answer"]
    answer = q["answer"].capitalize() if q["answer"] in ("yes", "no") else q["answer"]
    return f"{q['question']}\n{SHORT_ANSWER}", answer


def write_train(root: Path, config: SynthConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """train/images/*.png, pretrain.json, finetune.json; returns (pretrain, finetune, scene log)."""
    pretrain, finetune, scenes = [], [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(config.train_images):
        rng = random.Random(f"{config.seed}/train/{i}")
        scene = sample_arithmetic_scene(rng, config.image_size) if rng.random() < config.arithmetic_share \
            else sample_scene(rng, config.image_size)
        image = f"{i:06d}.png"
        (root / "images" / image).write_bytes(png_bytes(render_scene(scene)))
        scenes.append({"image": f"train/images/{image}", "scene": scene})
        pretrain.append({"id": f"pt-{i:06d}", "image": image, "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption(scene)}]})
        conversations, seen = [], set()
        for _ in range(rng.randint(1, config.max_turns)):
            prompt, answer = _turn(rng, scene)
            if prompt in seen:
                continue
            seen.add(prompt)
            if not conversations:
                prompt = "<image>\n" + prompt
            conversations += [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
        finetune.append({"id": f"ft-{i:06d}", "image": image, "conversations": conversations})
    for i in range(config.text_only_records):
        rng = random.Random(f"{config.seed}/train/text/{i}")
        q = text_only(rng)
        finetune.append({"id": f"text-{i:06d}", "conversations": [
            {"from": "human", "value": q["question"]}, {"from": "gpt", "value": q["full_answer"]}]})
    write_json(root / "pretrain.json", pretrain)
    write_json(root / "finetune.json", finetune)
    return pretrain, finetune, scenes


def write_eval(root: Path, config: SynthConfig) -> tuple[dict, EvalSink]:
    sink = EvalSink(root, config.seed, config.image_size)
    counts = {
        "gqa": write_gqa(sink, config.gqa_questions),
        "scienceqa": write_scienceqa(sink, config.sqa_questions),
        "textvqa": write_textvqa(sink, config.textvqa_questions),
        "mme": write_mme(sink, config.mme_images_per_category),
        "mmbench": write_mmbench(sink, config.mmbench_questions),
        "pope": write_pope(sink, config.pope_images),
    }
    return counts, sink


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise AlignKDError(f"{out_dir} exists and is not a folder; pass a folder path for the synthetic world.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise AlignKDError(f"{out_dir} exists already and is not empty; choose a new folder or pass "
                           f"overwrite=True (--overwrite) to replace the synthetic world in it.")
    try:
        # Prove the folder is writable before anything is drawn, so a read-only place is one sentence.
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
        # Only what synthesize writes is removed; anything else the user keeps there stays.
        for name in OUTPUTS if overwrite else ():
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    except OSError as err:
        raise AlignKDError(f"cannot write to {out_dir} ({err.strerror or err}); pass an --out folder you can write to.") from None


def synthesize(out_dir: Path, config: SynthConfig | None = None, *, overwrite: bool = False) -> dict:
    """Write train/, eval/, tokenizer/, scenes/ and world.json under `out_dir`; return the summary."""
    config = config or SynthConfig()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    start = time.perf_counter()
    pretrain, finetune, train_scenes = write_train(out_dir / "train", config)
    eval_counts, sink = write_eval(out_dir / "eval", config)
    texts = [t["value"] for rec in pretrain + finetune for t in rec["conversations"]]
    tok = train_tokenizer(texts, out_dir / "tokenizer", config.vocab_size)
    write_jsonl(out_dir / "scenes/train.jsonl", train_scenes)
    write_jsonl(out_dir / "scenes/eval.jsonl", [{**s, "image": f"eval/{s['image']}"} for s in sink.scenes])
    write_jsonl(out_dir / "scenes/eval_questions.jsonl", sink.truths)
    summary = {
        "config": asdict(config),
        "train": {"images": config.train_images, "pretrain_records": len(pretrain),
                  "finetune_records": len(finetune)},
        "eval": {"images": len(sink.scenes), "questions": eval_counts},
        "tokenizer": tok,
    }
    write_json(out_dir / "world.json", summary)
    # Timing is reported but kept out of world.json, which must be identical for identical configs.
    return {**summary, "seconds": round(time.perf_counter() - start, 2)}
