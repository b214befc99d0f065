"""The synthetic world end to end: `alignkd data synth` -> dataset -> the toy teacher and student models;
and `alignkd eval score` on the world's benchmark files."""

import json
import subprocess
import sys

import pytest
import torch

from alignkd.data.dataset import Collator, LlavaDataset
from alignkd.data.synth_world import SynthConfig, synthesize
from alignkd.data.tokenizer import Tokenizer
from alignkd.models.mobilevlm import MobileVLM, get_preset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    synthesize(out, SynthConfig.tiny(), overwrite=True)
    return out


def test_teacher_and_student_differ_where_7b_and_1_7b_do():
    teacher, student = get_preset("synth_teacher"), get_preset("synth_student")
    assert teacher.vision.to_dict() == student.vision.to_dict()
    assert teacher.image == student.image
    assert teacher.hidden_size != student.hidden_size and teacher.num_heads != student.num_heads
    assert teacher.num_image_tokens == student.num_image_tokens == 36  # four tokens per scene cell (SYNTH_POOLED_GRID)


@pytest.mark.parametrize("template,data", [("v1", "finetune.json"), ("plain", "pretrain.json")])
def test_world_feeds_both_models(world, template, data):
    tok = Tokenizer.from_folder(world / "tokenizer")
    torch.manual_seed(0)
    models = [MobileVLM(get_preset(name)) for name in ("synth_teacher", "synth_student")]
    for m in models:
        m.llm.resize_token_embeddings(tok.vocab_size)
    cfg = models[0].config
    ds = LlavaDataset(world / "train" / data, world / "train" / "images", tok, cfg.image, template=template)
    collate = Collator(tok.pad_id)
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items[:6])
    assert collate.skipped == {}, collate.summary()
    lengths = []
    for m in models:
        with torch.no_grad():
            out = m(batch["input_ids"], batch["images"], batch["attention_mask"], batch["labels"])
        assert torch.isfinite(out.loss)
        lengths.append(out.logits.shape[1])
    assert lengths[0] == lengths[1]  # position by position, teacher and student see the same sequence
    if template == "v1":
        text_only = [x for x in items if x.pixel_values is None]
        assert text_only, "the world has text-only fine-tuning records"


def test_cli_synth_and_eval_score(world, tmp_path):
    out = tmp_path / "w"
    run = lambda *a: subprocess.run([sys.executable, "-m", "alignkd.cli", *a], capture_output=True, text=True, timeout=120)
    done = run("data", "synth", "--out", str(out), "--preset", "tiny")
    assert done.returncode == 0, done.stderr
    again = run("data", "synth", "--out", str(out), "--preset", "tiny")
    assert again.returncode == 2 and "not empty" in again.stderr
    truths = [json.loads(l) for l in (out / "scenes" / "eval_questions.jsonl").read_text().splitlines()]
    gqa = [t for t in truths if t["bench"] == "gqa"]
    questions = [json.loads(l) for l in (out / "eval" / "gqa" / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines()]
    answer = {t["question_id"]: t["answer"] for t in gqa}
    preds = tmp_path / "answers.jsonl"
    rows = [{"question_id": q["question_id"], "prompt": q["text"], "text": answer[q["question_id"]].capitalize() + ".",
             "answer_id": str(i), "model_id": "truth", "metadata": {}} for i, q in enumerate(questions)]
    rows[0]["text"] = "definitely not"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = run("eval", "score", "--bench", "gqa", "--data", str(out / "eval"), "--predictions", str(preds), "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["accuracy"] == pytest.approx(100 * (len(rows) - 1) / len(rows))
    preds.write_text(json.dumps({**rows[0], "question_id": "nope"}) + "\n")
    bad = run("eval", "score", "--bench", "gqa", "--data", str(out / "eval"), "--predictions", str(preds))
    assert bad.returncode == 2 and "nope" in bad.stderr
