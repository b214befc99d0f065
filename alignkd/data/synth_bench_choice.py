"""Writers for the multiple-choice benchmarks of the synthetic suite: ScienceQA-IMG and MMBench (CircularEval).

Formats follow docs/benchmark-layout.md: ScienceQA as LLaVA's `llava_test_CQM-A.json` (the suffix "Answer with
the option's letter..." is appended by the eval loop, as LLaVA's `model_vqa_science.py --single-pred-prompt`
does) with `problems.json` and `pid_splits.json`; MMBench as the dev TSV with base64 images whose circular
copies are extra rows at `index + 1000000 * k` with the options rotated by k.

    write_mmbench(sink, n_questions=300)    # exercised by `alignkd data synth --out DIR`
"""

from __future__ import annotations

import base64
import csv
import io
import random

from alignkd.data.synth_bench import EvalSink, write_json
from alignkd.data.synth_questions import multiple_choice, text_only
from alignkd.data.synth_scene import sample_scene

LETTERS = "ABCD"
CIRCULAR_OFFSET = 1_000_000
MMBENCH_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category",
                   "source", "comment", "image")
# Our kinds mapped onto MMBench's (category, l2-category) names.
MMBENCH_CATEGORIES = {
    "color": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "shape": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "size": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "count_shape": ("object_localization", "finegrained_perception (instance-level)"),
    "count_all": ("object_localization", "finegrained_perception (instance-level)"),
    "side": ("spatial_relationship", "finegrained_perception (cross-instance)"),
    "exist_mc": ("image_scene", "coarse_perception"),
    "text": ("ocr", "finegrained_perception (instance-level)"),
}
SQA_HINTS = ("", "", "Look at the picture.", "The picture shows some shapes.")


def n_options(rng: random.Random) -> int:
    return rng.choices((2, 3, 4), weights=(1, 2, 4))[0]


def options_block(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[k]}. {opt}" for k, opt in enumerate(options))


def _text_only_choice(rng: random.Random) -> dict:
    q = text_only(rng)
    right = int(q["answer"])
    pool = [str(v) for v in range(max(0, right - 4), right + 5) if v != right]
    options = rng.sample(pool, n_options(rng) - 1) + [q["answer"]]
    rng.shuffle(options)
    return {**q, "options": options, "answer_index": options.index(q["answer"])}


def sqa_prompt(hint: str, question: str, options: list[str]) -> str:
    """The CQM-A human turn body (without <image> and without the answer-letter suffix)."""
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{question}\n{options_block(options)}"


def write_scienceqa(sink: EvalSink, n_questions: int, text_only_share: float = 0.1,
                    n_val: int = 10) -> int:
    """scienceqa/llava_test_CQM-A.json + problems.json + pid_splits.json + images/test/{pid}/image.png."""
    records, problems = [], {}
    splits = {"train": [], "val": [], "test": [], "trainval": [], "minitrain": [], "minival": [],
              "minitest": []}
    # A few val problems exist only in problems.json, so a reader must really filter by pid_splits["test"].
    for i in range(n_questions + n_val):
        split = "test" if i < n_questions else "val"
        rng = sink.rng("scienceqa", i)
        pid = str(i + 1)
        has_image = rng.random() >= text_only_share
        if has_image:
            scene = sample_scene(rng, sink.image_size)
            mc = multiple_choice(rng, scene, n_options(rng))
            if split == "test":
                sink.save_image(f"scienceqa/images/test/{pid}/image.png", scene)
        else:
            mc = _text_only_choice(rng)
        hint = rng.choice(SQA_HINTS) if has_image else ""
        problems[pid] = {
            "question": mc["question"], "choices": mc["options"], "answer": mc["answer_index"],
            "hint": hint, "image": "image.png" if has_image else None, "task": "closed choice",
            "grade": "grade2", "subject": "natural science", "topic": "shapes", "category": mc["kind"],
            "skill": mc["kind"], "lecture": "", "solution": "", "split": split,
        }
        splits[split].append(pid)
        splits["trainval" if split == "val" else "minitest"].append(pid)
        if split != "test":
            continue
        body = sqa_prompt(hint, mc["question"], mc["options"])
        record = {"id": pid, "conversations": [{"from": "human", "value": body},
                                               {"from": "gpt", "value": LETTERS[mc["answer_index"]]}]}
        if has_image:
            record["image"] = f"{pid}/image.png"
            record["conversations"][0]["value"] = "<image>\n" + body
        records.append(record)
        sink.truth("scienceqa", pid, f"scienceqa/images/test/{pid}/image.png" if has_image else None, mc,
                   LETTERS[mc["answer_index"]], options=mc["options"])
    write_json(sink.root / "scienceqa/llava_test_CQM-A.json", records)
    write_json(sink.root / "scienceqa/problems.json", problems)
    write_json(sink.root / "scienceqa/pid_splits.json", splits)
    return len(records)



def rotate(options: list[str], answer_index: int, k: int) -> tuple[list[str], str]:
    """CircularEval copy k: option j of the copy is option (j + k) mod n of the original."""
    n = len(options)
    rotated = [options[(j + k) % n] for j in range(n)]
    return rotated, LETTERS[(answer_index - k) % n]


def write_mmbench(sink: EvalSink, n_questions: int) -> int:
    """mmbench/mmbench_dev_en_20231003.tsv: base rows first, then circular copies (index + 1e6 * k)."""
    base_rows, copies = [], []
    for i in range(n_questions):
        rng = sink.rng("mmbench", i)
        scene = sample_scene(rng, sink.image_size)
        mc = multiple_choice(rng, scene, n_options(rng), kinds=tuple(MMBENCH_CATEGORIES))
        # The picture lives only inside the TSV; the scene log names it by the row's index.
        data = sink.save_image(f"mmbench/mmbench_dev_en_20231003.tsv#{i}", scene, to_disk=False)
        image_b64 = base64.b64encode(data).decode("ascii")
        hint = "Look at the picture." if rng.random() < 0.3 else ""
        category, l2 = MMBENCH_CATEGORIES[mc["kind"]]
        for k in range(len(mc["options"])):
            options, answer = rotate(mc["options"], mc["answer_index"], k)
            cells = {LETTERS[j]: options[j] if j < len(options) else "" for j in range(4)}
            row = {"index": i + CIRCULAR_OFFSET * k, "question": mc["question"], "hint": hint, **cells,
                   "answer": answer, "category": category, "l2-category": l2, "source": "synthetic",
                   "comment": "", "image": image_b64}
            (base_rows if k == 0 else copies).append(row)
            sink.truth("mmbench", row["index"], f"mmbench/mmbench_dev_en_20231003.tsv#{i}", mc, answer,
                       options=options)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MMBENCH_COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(base_rows + copies)
    path = sink.root / "mmbench/mmbench_dev_en_20231003.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return len(base_rows)
