"""Questions, captions and multiple-choice items about a synthetic scene, answered from its record.

Each question is a dict {"kind", "question", "answer", "full_answer", "args"}: `args` names exactly what
the answer was computed from (e.g. {"shape": "circle"} for a count), so a test can recompute every answer
from the scene record. The benchmark writers (`synth_bench*.py`) and the training split (`synth_world.py`)
only format these into each benchmark's prompt convention. POPE-style negative sampling lives here too.

    q = ask(rng, scene, "count_shape")  # {"question": "How many circles are there?", "answer": "2", ...}
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import combinations

from alignkd.data.synth_scene import COLORS, POSITIONS_H, POSITIONS_V, SHAPES, WORDS, object_name

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
# Kinds that every shapes scene can be asked; `ask` returns None when a scene cannot support one.
SHAPE_KINDS = ("color", "shape", "size", "count_shape", "count_color", "count_all", "side",
               "relation", "exist", "text")
RELATIONS = {"left of": ("col", -1), "right of": ("col", 1), "above": ("row", -1), "below": ("row", 1)}
RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above",
                  "below": "below"}


def plural(shape: str) -> str:
    return shape + "s"


def there_are(n: int, noun: str) -> str:
    """'There is 1 circle.' / 'There are 2 circles.'"""
    return f"There is 1 {noun}." if n == 1 else f"There are {n} {noun}s."


def count(scene: dict, color: str | None = None, shape: str | None = None) -> int:
    """Objects matching the filters: the ground truth of every counting question."""
    return sum(1 for o in scene["objects"]
               if (color is None or o["color"] == color) and (shape is None or o["shape"] == shape))


def relation_holds(a: dict, b: dict, rel: str) -> bool:
    axis, sign = RELATIONS[rel]
    return (a[axis] - b[axis]) * sign > 0


def _unique(scene: dict, key) -> list[dict]:
    """Objects that a phrase built from `key(obj)` refers to unambiguously."""
    counts = Counter(key(o) for o in scene["objects"])
    return [o for o in scene["objects"] if counts[key(o)] == 1]


def _by_class(scene):
    return _unique(scene, lambda o: (o["color"], o["shape"]))


def _q(kind: str, question: str, answer: str, full: str, **args) -> dict:
    return {"kind": kind, "question": question, "answer": answer, "full_answer": full, "args": args}


def ask(rng: random.Random, scene: dict, kind: str) -> dict | None:
    """One question of `kind` about `scene`, or None if the scene has nothing to ask it about."""
    if scene["kind"] == "arithmetic":
        if kind != "arith":
            return None
        r = str(scene["result"])
        return _q("arith", "What is the answer to the arithmetic question in the image?", r,
                  f"{scene['text']} {r}", a=scene["a"], op=scene["op"], b=scene["b"])
    objs = scene["objects"]
    if kind == "color" and (cands := _unique(scene, lambda o: o["shape"])):
        o = rng.choice(cands)
        return _q(kind, f"What color is the {o['shape']}?", o["color"],
                  f"The {o['shape']} is {o['color']}.", shape=o["shape"])
    if kind == "shape" and (cands := _unique(scene, lambda o: o["color"])):
        o = rng.choice(cands)
        return _q(kind, f"What shape is the {o['color']} object?", o["shape"],
                  f"The {o['color']} object is a {o['shape']}.", color=o["color"])
    if kind == "size" and (cands := _by_class(scene)):
        o = rng.choice(cands)
        return _q(kind, f"Is the {object_name(o)} small or large?", o["size"],
                  f"The {object_name(o)} is {o['size']}.", color=o["color"], shape=o["shape"])
    if kind == "count_shape":
        # Mostly shapes that are present; sometimes an absent one so that "0" is a possible answer.
        pool = [o["shape"] for o in objs] if rng.random() < 0.8 else list(SHAPES)
        shape = rng.choice(pool)
        n = count(scene, shape=shape)
        return _q(kind, f"How many {plural(shape)} are there?", str(n), there_are(n, shape), shape=shape)
    if kind == "count_color":
        color = rng.choice([o["color"] for o in objs])
        n = count(scene, color=color)
        return _q(kind, f"How many {color} objects are there?", str(n), there_are(n, f"{color} object"),
                  color=color)
    if kind == "count_all":
        n = len(objs)
        return _q(kind, "How many objects are there in the image?", str(n), there_are(n, "object"))
    if kind == "side" and (cands := [o for o in _by_class(scene) if o["col"] != 1]):
        o = rng.choice(cands)
        side = POSITIONS_H[o["col"]]
        return _q(kind, f"On which side of the image is the {object_name(o)}?", side,
                  f"The {object_name(o)} is on the {side} of the image.", color=o["color"],
                  shape=o["shape"])
    if kind == "relation":
        return _ask_relation(rng, scene)
    if kind == "exist":
        present = sorted({object_name(o) for o in objs})
        if rng.random() < 0.5:
            name, ans = rng.choice(present), "yes"
        else:
            name, ans = rng.choice(absent_classes(scene)), "no"
        color, shape = name.split(" ")
        full = f"{'Yes' if ans == 'yes' else 'No'}, there is {'a' if ans == 'yes' else 'no'} {name}."
        return _q(kind, f"Is there a {name} in the image?", ans, full, color=color, shape=shape)
    if kind == "text" and (cands := [o for o in _by_class(scene) if o["text"] is not None]):
        o = rng.choice(cands)
        what = "number" if o["text"].isdigit() else "word"
        return _q(kind, f"What {what} is written on the {object_name(o)}?", o["text"],
                  f"The {object_name(o)} says \"{o['text']}\".", color=o["color"], shape=o["shape"])
    return None


def _ask_relation(rng: random.Random, scene: dict) -> dict | None:
    pairs = []
    for a, b in combinations(_by_class(scene), 2):
        for rel in RELATIONS:
            axis = RELATIONS[rel][0]
            if a[axis] != b[axis]:
                pairs.append((a, b, rel))
    if not pairs:
        return None
    a, b, rel = rng.choice(pairs)
    if rng.random() < 0.5:
        a, b = b, a
    ans = "yes" if relation_holds(a, b, rel) else "no"
    words = RELATION_WORDS[rel]
    full = f"{'Yes' if ans == 'yes' else 'No'}, the {object_name(a)} is {'' if ans == 'yes' else 'not '}" \
           f"{words} the {object_name(b)}."
    return _q("relation", f"Is the {object_name(a)} {words} the {object_name(b)}?", ans, full,
              a=[a["color"], a["shape"]], b=[b["color"], b["shape"]], rel=rel)


def ask_any(rng: random.Random, scene: dict, kinds=SHAPE_KINDS) -> dict:
    """A question of the first kind (in a random order) that the scene supports; count_all always does."""
    if scene["kind"] == "arithmetic":
        return ask(rng, scene, "arith")
    order = list(kinds)
    rng.shuffle(order)
    for kind in order + ["count_all"]:
        q = ask(rng, scene, kind)
        if q is not None:
            return q
    raise AssertionError("count_all always applies")


def all_classes() -> list[str]:
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def absent_classes(scene: dict) -> list[str]:
    present = {object_name(o) for o in scene["objects"]}
    return [c for c in all_classes() if c not in present]


def caption(scene: dict) -> str:
    """One-paragraph description used by the `plain` pre-training split."""
    bg = scene["background"]
    if bg["kind"] == "plain":
        where = f"on a plain {bg['colors'][0]} background"
    else:
        where = f"on a background fading from {bg['colors'][0]} to {bg['colors'][1]}"
    if scene["kind"] == "arithmetic":
        return f"A card showing the sum \"{scene['text']}\" {where}."
    parts = []
    for o in scene["objects"]:
        pos = "center" if (o["row"], o["col"]) == (1, 1) else \
            f"{POSITIONS_V[o['row']]} {POSITIONS_H[o['col']]}".replace("middle ", "").replace(" middle", "")
        parts.append(f"a {o['size']} {object_name(o)} at the {pos}")
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text = listed[0].upper() + listed[1:] + f" {where}."
    for o in scene["objects"]:
        if o["text"] is not None:
            text += f" The {object_name(o)} carries the {'number' if o['text'].isdigit() else 'word'} " \
                    f"\"{o['text']}\"."
    return text


def ocr_tokens(scene: dict) -> list[str]:
    """What an OCR system would read, in reading order (rows, then columns), like TextVQA's Rosetta line."""
    if scene["kind"] == "arithmetic":
        return scene["text"].split(" ")
    with_text = sorted((o for o in scene["objects"] if o["text"]), key=lambda o: (o["row"], o["col"]))
    return [o["text"] for o in with_text]


def multiple_choice(rng: random.Random, scene: dict, n_options: int, kinds=None) -> dict:
    """A question with 2-4 options, one right: {"question", "options", "answer_index", "kind", "args"}."""
    kinds = kinds or ("color", "shape", "size", "count_shape", "count_all", "side", "exist_mc", "text")
    order = list(kinds)
    rng.shuffle(order)
    for kind in order + ["count_all"]:
        if kind == "exist_mc":
            present = sorted({object_name(o) for o in scene["objects"]})
            right = rng.choice(present)
            q = _q(kind, "Which of these objects is in the image?", right, right,
                   color=right.split()[0], shape=right.split()[1])
            pool = absent_classes(scene)
        else:
            q = ask(rng, scene, kind)
            if q is None:
                continue
            pool = _distractors(kind, q["answer"])
        pool = [p for p in pool if p != q["answer"]]
        n = min(n_options, len(pool) + 1)
        options = rng.sample(pool, n - 1) + [q["answer"]]
        rng.shuffle(options)
        return {**q, "options": options, "answer_index": options.index(q["answer"])}
    raise AssertionError("count_all always applies")


def _distractors(kind: str, answer: str) -> list[str]:
    if kind == "color":
        return list(COLORS)
    if kind == "shape":
        return list(SHAPES)
    if kind == "size":
        return ["small", "large"]
    if kind == "side":
        return ["left", "right"]
    if kind == "text":
        return [str(n) for n in range(100)] if answer.isdigit() else list(WORDS)
    if kind == "arith":
        return [str(n) for n in range(0, 19)]
    return [str(n) for n in range(0, 7)]


def class_stats(scenes: list[dict]) -> tuple[Counter, Counter]:
    """Per-class image frequency and pairwise co-occurrence counts over a pool of scenes (POPE's statistics)."""
    freq, co = Counter(), Counter()
    for s in scenes:
        present = sorted({object_name(o) for o in s["objects"]})
        freq.update(present)
        co.update(combinations(present, 2))
    return freq, co


def pope_negatives(rng: random.Random, scene: dict, k: int, mode: str, freq: Counter,
                   co: Counter) -> list[str]:
    """k absent classes: random = uniform; popular = most frequent overall; adversarial = most co-occurring."""
    absent = absent_classes(scene)
    if mode == "random":
        return rng.sample(absent, k)
    if mode == "popular":
        score = {c: freq[c] for c in absent}
    elif mode == "adversarial":
        present = {object_name(o) for o in scene["objects"]}
        score = {c: sum(co[tuple(sorted((c, p)))] for p in present) for c in absent}
    else:
        raise ValueError(f"POPE mode {mode!r} is not one of random, popular, adversarial")
    # Ties broken by class order, so the choice stays deterministic.
    return sorted(absent, key=lambda c: (-score[c], all_classes().index(c)))[:k]


def _yn(kind: str, question: str, truth: bool, **args) -> dict:
    ans = "yes" if truth else "no"
    return _q(kind, question, ans, f"{ans.capitalize()}.", **args)


def verify_pair(rng: random.Random, scene: dict, category: str) -> tuple[dict, dict] | None:
    """MME's two questions about one image, the first answered yes and the second no; None if unsupported.

    `category` is an MME subtask name: existence, count, position, color, OCR, numerical_calculation.
    """
    objs = scene["objects"]
    if category == "numerical_calculation":
        if scene["kind"] != "arithmetic":
            return None
        r = scene["result"]
        wrong = rng.choice([v for v in range(max(0, r - 3), r + 4) if v != r])
        text = "Is the answer to the arithmetic question in the image {}?"
        return (_yn("arith_verify", text.format(r), True, value=r),
                _yn("arith_verify", text.format(wrong), False, value=wrong))
    if scene["kind"] != "shapes" or not objs:
        return None
    if category == "existence":
        yes, no = rng.choice(sorted({object_name(o) for o in objs})), rng.choice(absent_classes(scene))
        return (_yn("exist", f"Is there a {yes} in this image?", True, color=yes.split()[0],
                    shape=yes.split()[1]),
                _yn("exist", f"Is there a {no} in this image?", False, color=no.split()[0],
                    shape=no.split()[1]))
    if category == "count":
        shape = rng.choice([o["shape"] for o in objs])
        n = count(scene, shape=shape)
        wrong = n + 1 if n == 1 or rng.random() < 0.5 else n - 1
        def text(v):
            return f"Is there 1 {shape} in this image?" if v == 1 else \
                f"Are there {v} {plural(shape)} in this image?"
        return (_yn("count_verify", text(n), True, shape=shape, value=n),
                _yn("count_verify", text(wrong), False, shape=shape, value=wrong))
    if category == "position":
        pairs = [(a, b, rel) for a, b in combinations(_by_class(scene), 2) for rel in ("left of", "above")
                 if a[RELATIONS[rel][0]] != b[RELATIONS[rel][0]]]
        if not pairs:
            return None
        a, b, rel = rng.choice(pairs)
        if not relation_holds(a, b, rel):
            a, b = b, a
        flipped = {"left of": "right of", "above": "below"}[rel]
        text = "Is the {} {} the {}?"
        args = {"a": [a["color"], a["shape"]], "b": [b["color"], b["shape"]]}
        return (_yn("relation", text.format(object_name(a), RELATION_WORDS[rel], object_name(b)), True,
                    rel=rel, **args),
                _yn("relation", text.format(object_name(a), RELATION_WORDS[flipped], object_name(b)),
                    False, rel=flipped, **args))
    if category == "color":
        cands = _unique(scene, lambda o: o["shape"])
        if not cands:
            return None
        o = rng.choice(cands)
        wrong = rng.choice([c for c in COLORS if c != o["color"]])
        return (_yn("color_verify", f"Is the {o['shape']} {o['color']}?", True, shape=o["shape"],
                    color=o["color"]),
                _yn("color_verify", f"Is the {o['shape']} {wrong}?", False, shape=o["shape"], color=wrong))
    if category == "OCR":
        cands = [o for o in _by_class(scene) if o["text"] is not None]
        if not cands:
            return None
        o = rng.choice(cands)
        pool = [str(n) for n in range(100)] if o["text"].isdigit() else list(WORDS)
        wrong = rng.choice([w for w in pool if w != o["text"]])
        text = "Is the text on the {} \"{}\"?"
        return (_yn("text_verify", text.format(object_name(o), o["text"]), True, color=o["color"],
                    shape=o["shape"], text=o["text"]),
                _yn("text_verify", text.format(object_name(o), wrong), False, color=o["color"],
                    shape=o["shape"], text=wrong))
    raise ValueError(f"MME category {category!r} has no synthetic questions")


def text_only(rng: random.Random) -> dict:
    """A question that needs no image (ScienceQA has such items; LLaVA's mix has text-only dialogues)."""
    if rng.random() < 0.6:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        return _q("text_only", f"What is {a} + {b}?", str(a + b), f"{a} + {b} = {a + b}.", a=a, b=b)
    shape = rng.choice(("triangle", "square", "diamond"))
    sides = 3 if shape == "triangle" else 4
    return _q("text_only", f"How many sides does a {shape} have?", str(sides),
              f"A {shape} has {sides} sides.", shape=shape)
