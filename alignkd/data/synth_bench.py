"""Writers for the synthetic evaluation suite in the real benchmarks' own formats: GQA, TextVQA, MME, POPE.

The layout (LLaVA's `playground/data/eval/`) is the contract in docs/benchmark-layout.md, read by
`alignkd.eval`; ScienceQA and MMBench (multiple choice) are in `synth_bench_choice.py`. Every writer also
records each question's structured ground truth (`EvalSink.truths`) and each image's scene record
(`EvalSink.scenes`), which `synth_world.py` saves under `scenes/` so tests can re-derive every answer.

    sink = EvalSink(Path("out/eval"), seed=0, image_size=224)
    write_gqa(sink, n_questions=300)        # exercised by `alignkd data synth --out DIR`
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from alignkd.data.synth_questions import (
    SHORT_ANSWER, ask, ask_any, class_stats, object_name, ocr_tokens, pope_negatives, verify_pair,
)
from alignkd.data.synth_scene import sample_arithmetic_scene, sample_scene, png_bytes, render_scene

GQA_KINDS = ("color", "shape", "size", "count_shape", "count_color", "side", "relation", "exist")
# GQA's question-type triple (structural, semantic, detailed) for each of our kinds.
GQA_TYPES = {
    "color": ("query", "attr", "colorQuery"), "shape": ("query", "obj", "shapeQuery"),
    "size": ("choose", "attr", "sizeChoose"), "count_shape": ("query", "obj", "countQuery"),
    "count_color": ("query", "obj", "countQuery"), "side": ("query", "rel", "positionQuery"),
    "relation": ("verify", "rel", "relVerify"), "exist": ("verify", "obj", "existVerify"),
}
MME_CATEGORIES = ("existence", "count", "position", "color", "OCR", "numerical_calculation")
POPE_MODES = ("adversarial", "popular", "random")


@dataclass
class EvalSink:
    """Where the eval writers put images, and the structured truth they keep for tests and debugging."""

    root: Path
    seed: int
    image_size: int
    scenes: list[dict] = field(default_factory=list)
    truths: list[dict] = field(default_factory=list)

    def rng(self, bench: str, i: int) -> random.Random:
        # The "/eval/" part keeps every eval scene's seed apart from the training scenes' seeds.
        return random.Random(f"{self.seed}/eval/{bench}/{i}")

    def save_image(self, rel: str, scene: dict, to_disk: bool = True) -> bytes:
        """Render, write to root/rel (unless the benchmark embeds the bytes, as MMBench's TSV does)."""
        data = png_bytes(render_scene(scene))
        if to_disk:
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.scenes.append({"image": rel, "scene": scene})
        return data

    def truth(self, bench: str, qid, image: str | None, q: dict, answer: str, **extra) -> None:
        self.truths.append({"bench": bench, "question_id": qid, "image": image, "kind": q["kind"],
                            "args": q["args"], "answer": answer, **extra})


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def short_prompt(question: str) -> str:
    return f"{question}\n{SHORT_ANSWER}"


def sample_until(rng: random.Random, image_size: int, accept, **scene_kw) -> tuple[dict, object]:
    """Resample a scene until `accept(scene)` gives a non-None value (a question needing some content)."""
    for _ in range(200):
        scene = sample_scene(rng, image_size, **scene_kw)
        got = accept(scene)
        if got is not None:
            return scene, got
    raise RuntimeError("no scene satisfied the request in 200 tries; the sampler constraints are inconsistent")


def write_gqa(sink: EvalSink, n_questions: int, per_image: int = 3) -> int:
    """gqa/llava_gqa_testdev_balanced.jsonl + gqa/data/testdev_balanced_questions.json + images."""
    lines, official = [], {}
    i = 0
    while len(lines) < n_questions:
        rng = sink.rng("gqa", i)
        scene = sample_scene(rng, sink.image_size, min_objects=2)
        image_id = f"n{100000 + i}"
        image = f"{image_id}.png"
        sink.save_image(f"gqa/data/images/{image}", scene)
        asked = set()
        for _ in range(per_image * 4):
            if len(asked) == per_image or len(lines) == n_questions:
                break
            q = ask_any(rng, scene, GQA_KINDS)
            if q["question"] in asked:
                continue
            asked.add(q["question"])
            qid = str(20000000 + len(lines))
            structural, semantic, detailed = GQA_TYPES[q["kind"]]
            lines.append({"question_id": qid, "image": image, "text": short_prompt(q["question"]),
                          "category": "default"})
            official[qid] = {
                "question": q["question"], "imageId": image_id, "answer": q["answer"],
                "fullAnswer": q["full_answer"], "isBalanced": True, "equivalent": [qid], "entailed": [],
                "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
                "semantic": [], "semanticStr": "", "groups": {"global": None, "local": None},
                "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            }
            sink.truth("gqa", qid, f"gqa/data/images/{image}", q, q["answer"])
        i += 1
    write_jsonl(sink.root / "gqa/llava_gqa_testdev_balanced.jsonl", lines)
    write_json(sink.root / "gqa/data/testdev_balanced_questions.json", official)
    return len(lines)


def _annotator_answers(rng: random.Random, answer: str) -> list[str]:
    """Ten human-like answers: mostly the text, some casing/article variants, a few misreads."""
    variants = [answer.upper(), answer.capitalize(), f"the {answer}", f"{answer}."]
    misreads = ["unanswerable", answer[:-1] or "0", answer + "s" if not answer.isdigit() else answer + "0"]
    answers = [answer] * rng.randint(6, 10)
    while len(answers) < 10:
        answers.append(rng.choice(variants) if rng.random() < 0.6 else rng.choice(misreads))
    rng.shuffle(answers)
    return answers


def write_textvqa(sink: EvalSink, n_questions: int) -> int:
    """textvqa/llava_textvqa_val_v051_ocr.jsonl + textvqa/TextVQA_0.5.1_val.json + textvqa/train_images/."""
    lines, data = [], []
    for i in range(n_questions):
        rng = sink.rng("textvqa", i)
        scene, q = sample_until(rng, sink.image_size, lambda s: ask(rng, s, "text"), min_objects=2,
                                text_prob=0.9)
        # One question per image: LLaVA's file uses the image id as question_id, so it must be unique.
        image_id = hashlib.sha1(f"{sink.seed}/textvqa/{i}".encode()).hexdigest()[:16]
        image = f"{image_id}.png"
        sink.save_image(f"textvqa/train_images/{image}", scene)
        tokens = ", ".join(ocr_tokens(scene))
        lines.append({"question_id": image_id, "image": image, "category": "default",
                      "text": f"{q['question']}\nReference OCR token: {tokens}\n{SHORT_ANSWER}"})
        data.append({
            "question": q["question"], "image_id": image_id, "image_classes": [], "flickr_original_url": "",
            "flickr_300k_url": "", "image_width": sink.image_size, "image_height": sink.image_size,
            "answers": _annotator_answers(rng, q["answer"]),
            "question_tokens": q["question"].rstrip("?").lower().split(), "question_id": 30000 + i,
            "set_name": "val", "image_name": image_id,
        })
        sink.truth("textvqa", image_id, f"textvqa/train_images/{image}", q, q["answer"])
    write_jsonl(sink.root / "textvqa/llava_textvqa_val_v051_ocr.jsonl", lines)
    write_json(sink.root / "textvqa/TextVQA_0.5.1_val.json",
               {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})
    return len(lines)


def _mme_scene(rng: random.Random, image_size: int, category: str) -> tuple[dict, tuple[dict, dict]]:
    if category == "numerical_calculation":
        scene = sample_arithmetic_scene(rng, image_size)
        return scene, verify_pair(rng, scene, category)
    kw = {"existence": {}, "count": {"min_objects": 2}, "position": {"min_objects": 2},
          "color": {}, "OCR": {"text_prob": 0.9}}[category]
    return sample_until(rng, image_size, lambda s: verify_pair(rng, s, category), **kw)


def write_mme(sink: EvalSink, images_per_category: int) -> int:
    """MME/llava_mme.jsonl + MME/MME_Benchmark_release_version/{category}/{images,questions_answers_YN}/."""
    lines = []
    base = "MME/MME_Benchmark_release_version"
    for category in MME_CATEGORIES:
        for i in range(images_per_category):
            rng = sink.rng(f"mme/{category}", i)
            scene, pair = _mme_scene(rng, sink.image_size, category)
            image = f"{i:04d}.png"
            sink.save_image(f"{base}/{category}/images/{image}", scene)
            txt = []
            # As in the release: two questions per image, the "Yes" one first.
            for q in pair:
                label = q["answer"].capitalize()
                txt.append(f"{q['question']} Please answer yes or no.\t{label}\n")
                lines.append({"question_id": f"{category}/{image}", "image": f"{category}/{image}",
                              "text": short_prompt(q["question"]), "category": category})
                sink.truth("mme", f"{category}/{image}", f"{base}/{category}/images/{image}", q, label)
            qa = sink.root / base / category / "questions_answers_YN" / f"{i:04d}.txt"
            qa.parent.mkdir(parents=True, exist_ok=True)
            qa.write_text("".join(txt), encoding="utf-8")
    write_jsonl(sink.root / "MME/llava_mme.jsonl", lines)
    return len(lines)


def write_pope(sink: EvalSink, n_images: int, per_label: int = 3) -> dict[str, int]:
    """pope/coco/coco_pope_{mode}.json (JSONL with label) + pope/llava_pope_test.jsonl + pope/val2014/."""
    scenes = []
    for i in range(n_images):
        rng = sink.rng("pope", i)
        scene, _ = sample_until(
            rng, sink.image_size,
            lambda s: s if len({object_name(o) for o in s["objects"]}) >= per_label else None,
            min_objects=per_label, distinct=True)
        image = f"synth_val2014_{i:012d}.png"
        sink.save_image(f"pope/val2014/{image}", scene)
        scenes.append((image, scene))
    # Frequencies and co-occurrences come from the POPE image pool, as POPE derives them from COCO val.
    freq, co = class_stats([s for _, s in scenes])
    llava, counts, qid = [], {}, 1
    for mode in POPE_MODES:
        rows = []
        for i, (image, scene) in enumerate(scenes):
            rng = sink.rng(f"pope/{mode}", i)
            positives = rng.sample(sorted({object_name(o) for o in scene["objects"]}), per_label)
            negatives = pope_negatives(rng, scene, per_label, mode, freq, co)
            asked = [(n, "yes") for n in positives] + [(n, "no") for n in negatives]
            rng.shuffle(asked)
            for name, label in asked:
                question = f"Is there a {name} in the image?"
                rows.append({"question_id": qid, "image": image, "text": question, "label": label})
                llava.append({"question_id": qid, "image": image, "text": short_prompt(question),
                              "category": mode})
                color, shape = name.split(" ")
                q = {"kind": "exist", "args": {"color": color, "shape": shape, "mode": mode}}
                sink.truth("pope", qid, f"pope/val2014/{image}", q, label)
                qid += 1
        write_jsonl(sink.root / f"pope/coco/coco_pope_{mode}.json", rows)
        counts[mode] = len(rows)
    write_jsonl(sink.root / "pope/llava_pope_test.jsonl", llava)
    return counts
