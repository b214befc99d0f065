"""Prompts, placeholder tokenization and training labels equal the official code's."""

import json

import pytest

from alignkd.data.templates import (IGNORE_INDEX, get_template, normalize_image_turns, tokenize_conversation,
                                    tokenize_with_image, user_message)
from alignkd.errors import AlignKDError


def test_v1_prompt_and_ids(official, expected):
    _, tok = official
    for case in expected["cases"]:
        prompt = get_template("v1").prompt(user_message(case["question"], 1))
        assert prompt == case["prompt"]
        ids = tokenize_with_image(prompt, tok)
        assert ids == case["input_ids"]
        assert ids.index(-200) == case["image_token_position"]
    assert get_template("v1").stop_str == expected["cases"][0]["stop_str"]


def test_v1_training_labels(official, expected, fixture_dir):
    _, tok = official
    records = json.loads((fixture_dir / "train" / "conversations.json").read_text())
    for record, want in zip(records, expected["train"]["samples"]):
        turns = normalize_image_turns(record["conversations"])
        assert turns == want["after_preprocess_multimodal"]
        ex = tokenize_conversation(turns, "v1", tok, has_image="image" in record)
        assert ex.prompt == want["prompt"]
        assert ex.input_ids == want["input_ids"]
        assert ex.labels == want["labels"]
        assert sum(l != IGNORE_INDEX for l in ex.labels) == want["n_supervised"]
        assert not ex.mismatch


def test_plain_template_masks_image_and_bos(official):
    _, tok = official
    ex = tokenize_conversation([{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a red circle"}], "plain", tok, True)
    assert ex.prompt == "<image>a red circle\n"
    assert ex.input_ids[:2] == [tok.bos_id, -200]
    assert ex.labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]
    assert ex.labels[2:] == ex.input_ids[2:]


def test_text_only_multi_turn(official):
    _, tok = official
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
             {"from": "human", "value": "bye"}, {"from": "gpt", "value": "see you"}]
    ex = tokenize_conversation(turns, "v1", tok, has_image=False)
    supervised = [i for i, l in zip(ex.input_ids, ex.labels) if l != IGNORE_INDEX]
    assert tok.decode(supervised) == "hello see you"
    assert supervised.count(tok.eos_id) == 2  # each answer's </s> is supervised
    assert -200 not in ex.input_ids


def test_bad_turns_and_template():
    with pytest.raises(AlignKDError, match="unknown conversation template 'chatml'"):
        get_template("chatml")
