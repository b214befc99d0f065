"""Exact parity with the official MobileVLM implementation on its tiny checkpoint (tests/fixtures/).

Tolerances are the fixture README's: pixels 1e-5, features/embeddings/hidden states 5e-5, logits 1e-4,
attention probabilities 1e-5, loss 1e-5; integers (ids, labels, masks, generated tokens) exactly.
"""

import copy

import numpy as np
import pytest
import torch

from alignkd.data.image import ImageProcessor, load_image
from alignkd.models.checkpoint import read_state_dict
from alignkd.runtime.generation import EagerBackend, GenerationConfig, generate


def _pixels(model, fixture_dir):
    images = [load_image(fixture_dir / "images" / f"img{i}.png") for i in range(3)]
    return ImageProcessor(model.config.image)(images)


def _close(actual, path, atol):
    want = np.load(path)
    assert actual.shape == want.shape
    np.testing.assert_allclose(actual.detach().float().numpy(), want, atol=atol, rtol=0)


@pytest.mark.parametrize("case_index", [0, 1])
def test_forward_matches_official(official, expected, fixture_dir, case_index):
    model, _ = official
    case = expected["cases"][case_index]
    files = {k: fixture_dir / v for k, v in case["files"].items()}
    pixels = _pixels(model, fixture_dir)[case["image_index"]:case["image_index"] + 1]
    ids = torch.tensor([case["input_ids"]])
    with torch.no_grad():
        _close(model.vision_features(pixels), files["vision_tower_features"], 5e-5)
        out = model(ids, pixels, output_hidden_states=True)
    _close(out.spliced.image_features, files["image_features"], 5e-5)
    _close(out.spliced.inputs_embeds, files["inputs_embeds"], 5e-5)
    _close(out.hidden_states[-1], files["last_hidden_state"], 5e-5)
    _close(out.logits, files["logits"], 1e-4)
    assert out.logits.shape[1] == case["expanded_length"]
    assert int(out.logits[0, -1].argmax()) == case["logits_last_argmax"]
    pos = out.spliced.image_positions[0]
    assert pos.tolist() == list(range(case["image_token_position"], case["image_token_position"] + case["n_image_tokens"]))


def test_layer0_attention_matches_official(official, expected, fixture_dir):
    model, _ = official
    eager = copy.deepcopy(model)
    eager.llm.set_attn_implementation("eager")
    case = expected["cases"][0]
    pixels = _pixels(model, fixture_dir)[:1]
    with torch.no_grad():
        out = eager(torch.tensor([case["input_ids"]]), pixels, output_attentions=True)
    _close(out.attentions[0], fixture_dir / case["files"]["attn_layer0"], 1e-5)


@pytest.mark.parametrize("case_index", [0, 1])
def test_greedy_generation_matches_official(official, expected, fixture_dir, case_index):
    model, tok = official
    case = expected["cases"][case_index]
    pixels = _pixels(model, fixture_dir)[case["image_index"]:case["image_index"] + 1]
    gen = case["generate"]
    result = generate(EagerBackend(model), tok, case["prompt"], pixels, GenerationConfig(max_new_tokens=gen["max_new_tokens"]))
    assert result.input_ids == case["input_ids"]
    assert result.output_ids == gen["new_token_ids"]
    assert result.input_ids + result.output_ids == gen["output_ids"]
    assert result.n_prompt_positions == case["expanded_length"]


def test_training_batch_matches_official(official, expected, fixture_dir):
    model, _ = official
    batch = expected["train"]["batch"]
    pixels = _pixels(model, fixture_dir)[batch["images_are_pixel_values_rows"]]
    ids, labels = torch.tensor(batch["input_ids"]), torch.tensor(batch["labels"])
    mask = torch.tensor(batch["attention_mask"]).bool()
    with torch.no_grad():
        out = model(ids, pixels, attention_mask=mask, labels=labels)
    np.testing.assert_array_equal(out.spliced.labels.numpy(), np.load(fixture_dir / "train" / "spliced_labels.npy"))
    np.testing.assert_array_equal(out.spliced.attention_mask.numpy(), np.load(fixture_dir / "train" / "spliced_attention_mask.npy"))
    _close(out.logits, fixture_dir / "train" / "batch_logits.npy", 1e-4)
    assert abs(float(out.loss) - expected["train"]["loss"]) < 1e-5


def test_bin_and_safetensors_hold_identical_tensors(fixture_dir, expected, tmp_path):
    ckpt = fixture_dir / "checkpoint"
    safe = read_state_dict(ckpt)
    only_bin = tmp_path / "bin"
    only_bin.mkdir()
    (only_bin / "pytorch_model.bin").symlink_to(ckpt / "pytorch_model.bin")
    pickled = read_state_dict(only_bin)
    assert safe.keys() == pickled.keys()
    assert {k: list(v.shape) for k, v in safe.items()} == expected["state_dict"]
    for key in safe:
        assert torch.equal(safe[key], pickled[key]), key


def test_mixed_batch_equals_single_samples(official, expected, fixture_dir):
    """Different lengths, an image sample next to a text-only one: each row equals its own forward."""
    model, tok = official
    case = expected["cases"][1]
    pixels = _pixels(model, fixture_dir)[1:2]
    image_ids = case["input_ids"]
    text_ids = tok("USER: what is two plus two? ASSISTANT:")
    width = max(len(image_ids), len(text_ids))
    ids = torch.tensor([image_ids + [0] * (width - len(image_ids)), text_ids + [0] * (width - len(text_ids))])
    mask = torch.tensor([[1] * len(image_ids) + [0] * (width - len(image_ids)), [1] * len(text_ids) + [0] * (width - len(text_ids))]).bool()
    with torch.no_grad():
        both = model(ids, pixels, attention_mask=mask)
        alone_image = model(torch.tensor([image_ids]), pixels)
        alone_text = model(torch.tensor([text_ids]))
    n_img = alone_image.logits.shape[1]
    torch.testing.assert_close(both.logits[0, :n_img], alone_image.logits[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(both.logits[1, :len(text_ids)], alone_text.logits[0], atol=1e-4, rtol=0)
    assert both.spliced.attention_mask[1].sum() == len(text_ids)
    assert both.spliced.image_positions[1].numel() == 0
