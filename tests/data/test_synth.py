"""Tests of the synthetic world (`alignkd.data.synth_world.synthesize`) on the tiny preset.

Determinism, the six benchmark formats of docs/benchmark-layout.md, answers re-derived from the scene records
by code independent of the generators, the LLaVA training JSON, and the tokenizer.

    python -m pytest tests/data/test_synth.py -q
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import sentencepiece as spm
from PIL import Image

from alignkd.data.synth_world import SynthConfig, synth_preset, synthesize
from alignkd.errors import AlignKDError

SHORT = "\nAnswer the question using a single word or phrase."
YN = " Please answer yes or no."
MME_BASE = "MME/MME_Benchmark_release_version"
TINY = SynthConfig.tiny()


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    a = root / "a"
    summary = synthesize(a, TINY)
    synthesize(root / "b", TINY)
    synthesize(root / "c", SynthConfig.tiny(seed=1))
    return {"a": a, "b": root / "b", "c": root / "c", "summary": summary}


@pytest.fixture(scope="module")
def world(worlds) -> Path:
    return worlds["a"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def mmbench_rows(world: Path) -> list[dict]:
    with open(world / "eval/mmbench/mmbench_dev_en_20231003.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# --- determinism, layout, images ---------------------------------------------------------------------

def test_same_seed_gives_identical_files(worlds):
    a, b = files(worlds["a"]), files(worlds["b"])
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_different_seed_gives_different_world(worlds):
    a, c = files(worlds["a"]), files(worlds["c"])
    pngs = [k for k in a if k.endswith(".png") and k in c]
    assert pngs and sum(a[k] != c[k] for k in pngs) > 0.9 * len(pngs)
    assert a["train/pretrain.json"] != c["train/pretrain.json"]


def test_world_json_is_the_summary(worlds, world):
    summary = dict(worlds["summary"])
    assert summary.pop("seconds") >= 0
    assert json.loads((world / "world.json").read_text()) == summary
    assert summary["config"]["seed"] == TINY.seed
    assert summary["eval"]["questions"]["gqa"] == TINY.gqa_questions


def test_images_decode_at_configured_size(world):
    pngs = list(world.rglob("*.png"))
    assert len(pngs) > TINY.train_images
    for path in pngs:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (TINY.image_size,) * 2
    for row in mmbench_rows(world):
        with Image.open(io.BytesIO(base64.b64decode(row["image"]))) as im:
            assert im.size == (TINY.image_size,) * 2


def test_train_and_eval_share_no_image(world):
    def digests(paths):
        return {hashlib.sha1(p.read_bytes()).hexdigest() for p in paths}
    train = digests((world / "train/images").glob("*.png"))
    evals = digests((world / "eval").rglob("*.png"))
    evals |= {hashlib.sha1(base64.b64decode(r["image"])).hexdigest() for r in mmbench_rows(world)}
    assert train and evals and not train & evals


def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "world"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AlignKDError, match="exists already") as err:
        synthesize(out, TINY)
    assert str(out) in str(err.value) and "overwrite" in str(err.value)
    synthesize(out, TINY, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine" and (out / "world.json").is_file()


@pytest.fixture
def unwritable(tmp_path, monkeypatch) -> Path:
    """A folder path where creating anything fails with PermissionError (root ignores chmod, so simulate it)."""
    locked = tmp_path / "locked"
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if str(self).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    return locked / "world"


def test_unwritable_out_is_one_sentence(unwritable):
    with pytest.raises(AlignKDError, match=f"cannot write to {unwritable} \\(Permission denied\\); pass an --out folder"):
        synthesize(unwritable, TINY)


def test_cli_unwritable_out_is_one_line(unwritable):
    from typer.testing import CliRunner

    from alignkd.cli import app

    result = CliRunner().invoke(app, ["data", "synth", "--out", str(unwritable), "--preset", "tiny"])
    assert result.exit_code == 2 and "error: cannot write to" in result.output and result.exception.__class__ is SystemExit


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    out = tmp_path / "world"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(AlignKDError, match="cannot write to"):
            synthesize(out, TINY)
    finally:
        out.chmod(0o700)


def test_config_errors_are_user_errors():
    with pytest.raises(AlignKDError, match="image_size"):
        SynthConfig(image_size=8)
    with pytest.raises(AlignKDError, match="gqa_questions"):
        SynthConfig(gqa_questions=0)
    with pytest.raises(AlignKDError, match="tiny"):
        synth_preset("huge")
    assert synth_preset("tiny", seed=3).seed == 3


# --- answers re-derived from the scene records ---------------------------------------------------------

def _find(scene, **attrs):
    return [o for o in scene["objects"] if all(o[k] == v for k, v in attrs.items())]


def _only(scene, **attrs):
    found = _find(scene, **attrs)
    assert len(found) == 1, (attrs, scene)
    return found[0]


def _holds(a, b, rel):
    return {"left of": a["col"] < b["col"], "right of": a["col"] > b["col"],
            "above": a["row"] < b["row"], "below": a["row"] > b["row"]}[rel]


def expected(scene, kind, args):
    """The answer (open kinds) or whether the statement is true (verify kinds), from the record alone."""
    if kind == "count_shape":
        return str(len(_find(scene, shape=args["shape"])))
    if kind == "count_color":
        return str(len(_find(scene, color=args["color"])))
    if kind == "count_all":
        return str(len(scene["objects"]))
    if kind == "count_verify":
        return len(_find(scene, shape=args["shape"])) == args["value"]
    if kind in ("exist", "exist_mc"):
        present = bool(_find(scene, color=args["color"], shape=args["shape"]))
        return f"{args['color']} {args['shape']}" if kind == "exist_mc" else present
    if kind == "color":
        return _only(scene, shape=args["shape"])["color"]
    if kind == "color_verify":
        return _only(scene, shape=args["shape"])["color"] == args["color"]
    if kind == "shape":
        return _only(scene, color=args["color"])["shape"]
    if kind == "size":
        return _only(scene, color=args["color"], shape=args["shape"])["size"]
    if kind == "side":
        return {0: "left", 2: "right"}[_only(scene, color=args["color"], shape=args["shape"])["col"]]
    if kind == "text":
        return _only(scene, color=args["color"], shape=args["shape"])["text"]
    if kind == "text_verify":
        return _only(scene, color=args["color"], shape=args["shape"])["text"] == args["text"]
    if kind == "relation":
        a = _only(scene, color=args["a"][0], shape=args["a"][1])
        b = _only(scene, color=args["b"][0], shape=args["b"][1])
        return _holds(a, b, args["rel"])
    if kind == "arith":
        return str(scene["a"] + scene["b"] if scene["op"] == "+" else scene["a"] - scene["b"])
    if kind == "arith_verify":
        return (scene["a"] + scene["b"] if scene["op"] == "+" else scene["a"] - scene["b"]) == args["value"]
    if kind == "text_only":
        return str(args["a"] + args["b"]) if "a" in args else str(3 if args["shape"] == "triangle" else 4)
    raise AssertionError(f"no checker for kind {kind}")


def test_every_eval_answer_matches_its_scene(world):
    scenes = {r["image"]: r["scene"] for r in read_jsonl(world / "scenes/eval.jsonl")}
    truths = read_jsonl(world / "scenes/eval_questions.jsonl")
    kinds = Counter()
    for t in truths:
        scene = scenes[f"eval/{t['image']}"] if t["image"] else None
        want = expected(scene, t["kind"], t["args"])
        if "options" in t:  # multiple choice: the answer letter must point at the true value
            assert t["options"]["ABCD".index(t["answer"])] == want, t
        elif isinstance(want, bool):
            assert t["answer"].lower() == ("yes" if want else "no"), t
        else:
            assert t["answer"] == want, t
        kinds[t["kind"]] += 1
    assert {"count_shape", "exist", "text", "relation", "arith_verify"} <= set(kinds)
    assert {t["bench"] for t in truths} == {"gqa", "scienceqa", "textvqa", "mme", "mmbench", "pope"}


def test_counting_answers_count_the_objects(world):
    scenes = {r["image"]: r["scene"] for r in read_jsonl(world / "scenes/eval.jsonl")}
    official = json.loads((world / "eval/gqa/data/testdev_balanced_questions.json").read_text())
    checked = 0
    for t in read_jsonl(world / "scenes/eval_questions.jsonl"):
        if t["kind"] not in ("count_shape", "count_verify"):
            continue
        scene = scenes[f"eval/{t['image']}"]
        n = sum(o["shape"] == t["args"]["shape"] for o in scene["objects"])
        if t["bench"] == "gqa":
            assert official[t["question_id"]]["answer"] == str(n)
        elif t["kind"] == "count_verify":
            assert (t["answer"] == "Yes") == (n == t["args"]["value"])
        checked += 1
    assert checked >= 2


# --- benchmark formats ------------------------------------------------------------------------------------

def test_gqa_format(world):
    lines = read_jsonl(world / "eval/gqa/llava_gqa_testdev_balanced.jsonl")
    official = json.loads((world / "eval/gqa/data/testdev_balanced_questions.json").read_text())
    assert len(lines) == TINY.gqa_questions == len(official)
    for line in lines:
        assert set(line) == {"question_id", "image", "text", "category"}
        gt = official[line["question_id"]]
        assert line["text"] == gt["question"] + SHORT
        assert line["image"] == gt["imageId"] + ".png"
        assert (world / "eval/gqa/data/images" / line["image"]).is_file()
        assert gt["answer"] and gt["fullAnswer"] and set(gt["types"]) == {"structural", "semantic", "detailed"}


def test_scienceqa_format(world):
    sqa = world / "eval/scienceqa"
    records = json.loads((sqa / "llava_test_CQM-A.json").read_text())
    problems = json.loads((sqa / "problems.json").read_text())
    splits = json.loads((sqa / "pid_splits.json").read_text())
    assert [r["id"] for r in records] == splits["test"]
    assert set(splits["val"]) and not set(splits["val"]) & set(splits["test"])
    with_image = 0
    for r in records:
        p = problems[r["id"]]
        human, gpt = r["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt") and p["split"] == "test"
        assert 2 <= len(p["choices"]) <= 4 and gpt["value"] == "ABCD"[p["answer"]]
        body = human["value"].replace("<image>", "").strip()
        assert body.splitlines()[-len(p["choices"]):] == [f"{'ABCD'[k]}. {c}" for k, c in enumerate(p["choices"])]
        assert p["question"] in body and ("Context: " + p["hint"] in body) == bool(p["hint"])
        if "image" in r:
            with_image += 1
            assert human["value"].startswith("<image>\n") and r["image"] == f"{r['id']}/image.png"
            assert p["image"] == "image.png" and (sqa / "images/test" / r["image"]).is_file()
        else:
            assert p["image"] is None and "<image>" not in human["value"]
    assert 0 < with_image <= len(records)


def test_textvqa_format(world):
    lines = read_jsonl(world / "eval/textvqa/llava_textvqa_val_v051_ocr.jsonl")
    data = json.loads((world / "eval/textvqa/TextVQA_0.5.1_val.json").read_text())["data"]
    assert len(lines) == len(data) == TINY.textvqa_questions
    by_key = {(d["image_id"], d["question"].lower()): d for d in data}
    assert len(by_key) == len(data)
    for line in lines:
        question, ocr, suffix = line["text"].split("\n")
        assert ocr.startswith("Reference OCR token: ") and "\n" + suffix == SHORT
        gt = by_key[(line["question_id"], question.lower())]
        assert line["image"] == gt["image_id"] + ".png"
        assert (world / "eval/textvqa/train_images" / line["image"]).is_file()
        assert len(gt["answers"]) == 10
        top, votes = Counter(gt["answers"]).most_common(1)[0]
        assert votes >= 6 and top in ocr.split(": ", 1)[1].split(", ")


def test_mme_format(world):
    base = world / "eval" / MME_BASE
    lines = read_jsonl(world / "eval/MME/llava_mme.jsonl")
    categories = {line["category"] for line in lines}
    assert {"existence", "count", "position", "color", "OCR", "numerical_calculation"} <= categories
    per_image = defaultdict(list)
    for line in lines:
        assert line["question_id"] == line["image"] and line["text"].endswith(SHORT)
        per_image[line["question_id"]].append(line["text"][: -len(SHORT)])
    assert len(per_image) == len(categories) * TINY.mme_images_per_category
    for qid, questions in per_image.items():
        category, image = qid.split("/")
        assert (base / category / "images" / image).is_file()
        txt = (base / category / "questions_answers_YN" / image.replace(".png", ".txt")).read_text()
        rows = [row.split("\t") for row in txt.splitlines()]
        assert [a for _, a in rows] == ["Yes", "No"]  # exactly two per image, one yes one no
        assert all(q.endswith(YN) for q, _ in rows)
        assert [q[: -len(YN)] for q, _ in rows] == questions


def test_mmbench_circular_rows(world):
    rows = mmbench_rows(world)
    assert list(rows[0]) == ["index", "question", "hint", "A", "B", "C", "D", "answer", "category",
                             "l2-category", "source", "comment", "image"]
    groups = defaultdict(dict)
    for row in rows:
        groups[int(row["index"]) % 1_000_000][int(row["index"]) // 1_000_000] = row
    assert len(groups) == TINY.mmbench_questions
    for rounds in groups.values():
        base = rounds[0]
        options = [base[c] for c in "ABCD" if base[c]]
        assert sorted(rounds) == list(range(len(options))) and len(options) >= 2
        truth = options["ABCD".index(base["answer"])]
        for k, row in rounds.items():
            rotated = [row[c] for c in "ABCD" if row[c]]
            assert rotated == [options[(j + k) % len(options)] for j in range(len(options))]
            assert rotated["ABCD".index(row["answer"])] == truth
            assert (row["question"], row["image"], row["category"]) == (base["question"], base["image"],
                                                                        base["category"])


def test_pope_subsets(world):
    pope = world / "eval/pope"
    llava = read_jsonl(pope / "llava_pope_test.jsonl")
    assert len({line["question_id"] for line in llava}) == len(llava)
    subsets = {}
    for mode in ("random", "popular", "adversarial"):
        rows = read_jsonl(pope / f"coco/coco_pope_{mode}.json")
        labels = Counter(r["label"] for r in rows)
        assert labels["yes"] == labels["no"] > 0  # balanced
        mine = [line for line in llava if line["category"] == mode]
        assert [(m["question_id"], m["text"]) for m in mine] == [(r["question_id"], r["text"] + SHORT)
                                                                 for r in rows]
        assert all((pope / "val2014" / r["image"]).is_file() for r in rows)
        subsets[mode] = {(r["image"], r["text"]) for r in rows if r["label"] == "no"}
    assert subsets["random"] != subsets["popular"] != subsets["adversarial"] != subsets["random"]


# --- training split and tokenizer ----------------------------------------------------------------------

def test_training_json_is_llava_format(world):
    train = world / "train"
    pretrain = json.loads((train / "pretrain.json").read_text())
    assert len(pretrain) == TINY.train_images
    for r in pretrain:
        human, gpt = r["conversations"]
        assert human == {"from": "human", "value": "<image>"} and gpt["from"] == "gpt" and gpt["value"]
        assert (train / "images" / r["image"]).is_file()
    finetune = json.loads((train / "finetune.json").read_text())
    text_only = [r for r in finetune if "image" not in r]
    assert len(text_only) == TINY.text_only_records and len(finetune) == TINY.train_images + len(text_only)
    prompts = []
    for r in finetune:
        turns = r["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
        assert all(t["value"] for t in turns)
        images = sum(t["value"].count("<image>") for t in turns)
        if "image" in r:
            assert turns[0]["value"].startswith("<image>\n") and images == 1
            assert (train / "images" / r["image"]).is_file()
        else:
            assert images == 0
        prompts += [t["value"] for t in turns[::2]]
    assert any(p.endswith(SHORT) for p in prompts)
    assert any(p.endswith("\nAnswer with the option's letter from the given choices directly.") for p in prompts)
    assert max(len(r["conversations"]) for r in finetune) > 2  # some multi-turn


def test_tokenizer_folder(world):
    folder = world / "tokenizer"
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert 300 <= sp.get_piece_size() <= TINY.vocab_size
    for text in ["A chat between a curious user and an artificial intelligence assistant.",
                 "What color is the star?\nAnswer the question using a single word or phrase.",
                 "Reference OCR token: cake, 42\n  two  spaces", "ünïcödé ✓ 12345"]:
        ids = sp.encode(text)
        assert sp.decode(ids) == text and 0 not in ids  # byte fallback: nothing becomes <unk>
    assert sp.encode("2024", out_type=str) == ["▁", "2", "0", "2", "4"]  # split_digits
    config = json.loads((folder / "tokenizer_config.json").read_text())
    special = json.loads((folder / "special_tokens_map.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["add_bos_token"] is True
    assert config["bos_token"]["content"] == "<s>" and config["eos_token"]["content"] == "</s>"
    assert special["pad_token"] == "<unk>" and special["unk_token"]["content"] == "<unk>"
    try:
        from alignkd.data.tokenizer import Tokenizer
    except ImportError:
        return
    tok = Tokenizer.from_folder(folder)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)
