"""LLaVA-format dataset: official labels, length policy, lazy JSONL, mixed collation, every bad-record case."""

import json
import shutil

import numpy as np
import pytest

from alignkd.data.dataset import Collator, Example, LlavaDataset, Skipped
from alignkd.data.image import ImageConfig
from alignkd.errors import AlignKDError


@pytest.fixture
def world(fixture_dir, tmp_path):
    """An image folder with the fixture's images plus a corrupt one."""
    root = tmp_path / "images"
    shutil.copytree(fixture_dir / "images", root)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def _dataset(tmp_path, records, root, tok, suffix=".json", **kw):
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return LlavaDataset(path, root, tok, ImageConfig(size=72), **kw)


def _qa(image="img0.png", question="<image>\nWhat is it?", answer="A circle."):
    rec = {"id": "r", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        rec["image"] = image
    return rec


def test_official_training_batch(official, expected, fixture_dir):
    """Dataset + collator on the fixture's LLaVA JSON give the official ids, labels, mask and images."""
    _, tok = official
    ds = LlavaDataset(fixture_dir / "train" / "conversations.json", fixture_dir, tok, ImageConfig(size=72))
    collate = Collator(tok.pad_id)
    batch = collate([ds[0], ds[1]])
    want = expected["train"]["batch"]
    assert batch["input_ids"].tolist() == want["input_ids"]
    assert batch["labels"].tolist() == want["labels"]
    assert batch["attention_mask"].long().tolist() == want["attention_mask"]
    pixels = np.load(fixture_dir / "preprocess" / "pixel_values.npy")[want["images_are_pixel_values_rows"]]
    np.testing.assert_array_equal(batch["images"].numpy(), pixels)


def test_mixed_batch_of_image_and_text_only(official, world, tmp_path):
    _, tok = official
    records = [_qa(), _qa(image=None, question="Say hi.", answer="hi"), _qa(image="img1.png", answer="Two squares and a very long answer here.")]
    ds = _dataset(tmp_path, records, world, tok)
    batch = Collator(tok.pad_id)([ds[i] for i in range(3)])
    assert batch["images"].shape == (2, 3, 72, 72)  # one row per placeholder, text-only sample takes none
    assert (batch["input_ids"] == -200).sum(1).tolist() == [1, 0, 1]
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths == [len(ds[i].input_ids) for i in range(3)] and len(set(lengths)) == 3
    assert (batch["labels"][~batch["attention_mask"]] == -100).all()


def test_length_policy_drops_and_counts(official, world, tmp_path):
    _, tok = official
    records = [_qa(answer="short"), _qa(answer="word " * 400)]
    ds = _dataset(tmp_path, records, world, tok, max_length="short")
    assert ds.max_length == 512
    first, second = ds[0], ds[1]
    assert isinstance(first, Example)
    assert len(first.input_ids) + 143 <= 512
    assert isinstance(second, Skipped) and second.reason == "too_long"
    # the image counts as 144 positions: a record that fits as text but not with its image is dropped
    text_len = len(first.input_ids)
    tight = _dataset(tmp_path, records[:1], world, tok, max_length=text_len + 100)
    assert isinstance(tight[0], Skipped) and tight[0].reason == "too_long"
    assert isinstance(_dataset(tmp_path, records[:1], world, tok, max_length=text_len + 143)[0], Example)


def test_jsonl_is_lazy_and_reports_bad_lines(official, world, tmp_path):
    _, tok = official
    ds = _dataset(tmp_path, [_qa(), "{not json", _qa(image="img2.png")], world, tok, suffix=".jsonl")
    assert ds.records.items is None and len(ds.records.offsets) == 3
    assert isinstance(ds[0], Example) and isinstance(ds[2], Example)
    assert ds[1].reason == "malformed"


BAD = [
    ("missing_image", _qa(image="nope.png")),
    ("corrupt_image", _qa(image="broken.png")),
    ("image_outside_root", _qa(image="../secret.png")),
    ("image_outside_root", _qa(image="/etc/passwd")),
    ("no_conversations", {"id": "r", "image": "img0.png", "conversations": []}),
    ("no_conversations", {"id": "r", "image": "img0.png"}),
    ("unknown_role", {"id": "r", "conversations": [{"from": "system", "value": "x"}, {"from": "gpt", "value": "y"}]}),
    ("too_many_image_tags", _qa(question="<image>\n<image>\nCompare them.")),
    ("too_many_image_tags", _qa(image=None, question="<image>\nWhat?")),
    ("malformed", ["not", "a", "dict"]),
]


@pytest.mark.parametrize("reason,record", BAD, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD)])
def test_bad_records_skip_counted_or_strict(official, world, tmp_path, reason, record):
    _, tok = official
    (world.parent / "secret.png").write_bytes((world / "img0.png").read_bytes())
    ds = _dataset(tmp_path, [record, _qa()], world, tok)
    collate = Collator(tok.pad_id)
    batch = collate([ds[0], ds[1]])
    assert collate.skipped == {reason: 1}
    assert batch["input_ids"].shape[0] == 1 and batch["n_skipped"] == 1
    assert reason in collate.summary()
    strict = _dataset(tmp_path, [record], world, tok, strict=True)
    with pytest.raises(AlignKDError, match=r"record .* in .*data.json"):
        strict[0]


def test_all_skipped_batch_is_empty_not_a_crash(official, world, tmp_path):
    _, tok = official
    ds = _dataset(tmp_path, [_qa(image="nope.png")], world, tok)
    batch = Collator(tok.pad_id)([ds[0]])
    assert batch["input_ids"] is None and batch["n_skipped"] == 1


def test_plain_template_pretraining(official, world, tmp_path):
    _, tok = official
    cap = {"id": "c", "image": "img0.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A red circle."}]}
    ds = _dataset(tmp_path, [cap, _qa(image=None, question="Say hi.")], world, tok, template="plain")
    ex = ds[0]
    assert ex.input_ids[:2] == [1, -200] and ex.labels[:2] == [-100, -100]
    assert tok.decode([i for i, l in zip(ex.input_ids, ex.labels) if l != -100]) == "A red circle.\n"
    assert ds[1].reason == "plain_needs_image_pair"


def test_missing_and_invalid_data_file(official, tmp_path):
    _, tok = official
    with pytest.raises(AlignKDError, match="does not exist"):
        LlavaDataset(tmp_path / "none.json", tmp_path, tok, ImageConfig(size=72))
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(AlignKDError, match="not valid JSON"):
        LlavaDataset(bad, tmp_path, tok, ImageConfig(size=72))


def test_strict_errors_count_lines_and_items_from_one(official, world, tmp_path):
    _, tok = official
    ds = _dataset(tmp_path, [_qa(), "", _qa(image="nope.png"), "{not json"], world, tok, suffix=".jsonl")
    assert len(ds) == 3 and ds[2].reason == "malformed" and ds[2].detail == "line 4"  # the blank line 2 counts too
    strict = _dataset(tmp_path, [_qa(), "", _qa(image="nope.png"), "{not json"], world, tok, suffix=".jsonl", strict=True)
    with pytest.raises(AlignKDError, match=r"record 'r' \(line 3\) in .*data.jsonl: the image file does not exist"):
        strict[1]
    with pytest.raises(AlignKDError, match=r"record '#3' \(line 4\) in .*data.jsonl: the record is not a JSON object"):
        strict[2]
    listed = _dataset(tmp_path, [_qa(), _qa(image="nope.png")], world, tok, strict=True)
    with pytest.raises(AlignKDError, match=r"record 'r' \(item 2\) in .*data.json:"):
        listed[1]


def test_skip_counts_count_records_not_passes(official, world, tmp_path):
    _, tok = official
    ds = _dataset(tmp_path, [_qa(image="nope.png"), _qa(), _qa(image="broken.png")], world, tok)
    in_worker, in_main = Collator(tok.pad_id), Collator(tok.pad_id)
    for _epoch in range(3):
        batch = in_worker([ds[i] for i in range(3)])
        in_main.record(batch["skipped"])  # what the training loop does with a batch collated in a worker
    assert in_worker.skipped == in_main.skipped == {"missing_image": 1, "corrupt_image": 1}
    assert "skipped 2 records" in in_main.summary()


def test_huge_record_dropped_before_tokenising(official, world, tmp_path, monkeypatch):
    import alignkd.data.dataset as dataset

    _, tok = official
    tokenize = dataset.tokenize_conversation

    def guarded(turns, *args, **kwargs):
        assert sum(len(t["value"]) for t in turns) < 10**6, "a 10 MB record was tokenised"
        return tokenize(turns, *args, **kwargs)

    monkeypatch.setattr(dataset, "tokenize_conversation", guarded)
    ds = _dataset(tmp_path, [_qa(answer="word " * 2_000_000), _qa()], world, tok, suffix=".jsonl")
    huge = ds[0]
    assert isinstance(huge, Skipped) and huge.reason == "too_long" and "10000019 characters" in huge.detail
    assert isinstance(ds[1], Example)
    assert ds.max_chars < 10**6  # the bound is derived from max_length, not a fixed size


def test_decompression_bomb_is_a_skipped_record(official, world, tmp_path, monkeypatch):
    from PIL import Image

    _, tok = official
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # the fixture's small images now count as bombs
    ds = _dataset(tmp_path, [_qa(), _qa(image=None, question="Say hi.", answer="hi")], world, tok)
    collate = Collator(tok.pad_id)
    batch = collate([ds[0], ds[1]])
    assert collate.skipped == {"corrupt_image": 1} and batch["input_ids"].shape[0] == 1
    with pytest.raises(AlignKDError, match=r"record 'r' \(item 1\) .* cannot be decoded"):
        _dataset(tmp_path, [_qa()], world, tok, strict=True)[0]
