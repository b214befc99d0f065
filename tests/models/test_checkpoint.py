"""Checkpoint folders: official format round trip, sharded weights, and one clear error per bad input."""

import json
import shutil

import pytest
import torch

from alignkd.errors import AlignKDError
from alignkd.models.checkpoint import (from_official_key, load_checkpoint, load_config, read_state_dict,
                                       save_checkpoint, to_official_key)


@pytest.fixture
def ckpt_copy(fixture_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(fixture_dir / "checkpoint", dst)
    return dst


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("safe", [True, False])
def test_round_trip_keeps_official_keys_and_values(official, fixture_dir, tmp_path, safe):
    model, tok = official
    out = save_checkpoint(model, tok, tmp_path / "saved", safe_serialization=safe)
    original, saved = read_state_dict(fixture_dir / "checkpoint"), read_state_dict(out)
    assert saved.keys() == original.keys()
    for key in original:
        assert torch.equal(saved[key], original[key]), key
    cfg, want = json.loads((out / "config.json").read_text()), json.loads((fixture_dir / "checkpoint" / "config.json").read_text())
    for key in want:
        if key not in ("transformers_version", "_name_or_path"):
            assert cfg[key] == want[key], key
    again, tok2 = load_checkpoint(out)
    ids = torch.tensor([tok("USER: hello ASSISTANT:")])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert tok2("a b c") == tok("a b c")


def test_key_mapping_is_invertible(official):
    model, _ = official
    for key in model.state_dict():
        assert from_official_key(to_official_key(key)) == key
    assert to_official_key("mm_projector.peg.weight") == "model.mm_projector.peg.peg.0.weight"
    assert to_official_key("vision_tower.encoder.layers.0.mlp.fc1.weight") == "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"


def test_sharded_bin_with_index(official, ckpt_copy):
    model, _ = official
    state = read_state_dict(ckpt_copy)
    for name in ("model.safetensors", "pytorch_model.bin"):
        (ckpt_copy / name).unlink()
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2], "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for shard, ks in shards.items():
        torch.save({k: state[k] for k in ks}, ckpt_copy / shard)
    index = {"weight_map": {k: shard for shard, ks in shards.items() for k in ks}}
    (ckpt_copy / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    again, _ = load_checkpoint(ckpt_copy)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    (ckpt_copy / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(AlignKDError, match="pytorch_model-00002-of-00002.bin"):
        load_checkpoint(ckpt_copy)


def test_vision_tower_resolution(ckpt_copy, tmp_path):
    tower = ckpt_copy / "vision_tower"
    moved = tmp_path / "my_tower"
    shutil.move(tower, moved)
    with pytest.raises(AlignKDError, match="--vision-tower DIR"):
        load_config(ckpt_copy)
    assert load_config(ckpt_copy, vision_tower=moved).vision.hidden_size == 32
    _edit_config(ckpt_copy, mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=1024)
    cfg = load_config(ckpt_copy)  # the built-in preset
    assert (cfg.vision.hidden_size, cfg.vision.image_size, cfg.image.size) == (1024, 336, 336)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(AlignKDError, match="does not exist"):
        load_config(tmp_path / "nowhere")
    with pytest.raises(AlignKDError, match="config.json is missing"):
        load_config(tmp_path)


def test_malformed_config(ckpt_copy):
    (ckpt_copy / "config.json").write_text("{not json")
    with pytest.raises(AlignKDError, match="not valid JSON"):
        load_config(ckpt_copy)


def test_not_mobilevlm(ckpt_copy):
    _edit_config(ckpt_copy, model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(AlignKDError, match="not a MobileVLM checkpoint"):
        load_config(ckpt_copy)


@pytest.mark.parametrize("projector,message", [("ldpnet", "MobileVLM V1 projector"), ("mlp2x_gelu", "unsupported")])
def test_unsupported_projector(ckpt_copy, projector, message):
    _edit_config(ckpt_copy, mm_projector_type=projector)
    with pytest.raises(AlignKDError, match=message):
        load_config(ckpt_copy)


def test_missing_and_unexpected_keys_are_listed(ckpt_copy):
    from safetensors.torch import save_file

    state = read_state_dict(ckpt_copy)
    state.pop("lm_head.weight")
    state["model.extra_thing.weight"] = torch.zeros(1)
    (ckpt_copy / "pytorch_model.bin").unlink()
    save_file(state, str(ckpt_copy / "model.safetensors"))
    with pytest.raises(AlignKDError, match=r"missing keys: lm_head.weight; unexpected keys: model.extra_thing.weight"):
        load_checkpoint(ckpt_copy)


def test_no_weights_and_corrupt_weights(ckpt_copy):
    (ckpt_copy / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AlignKDError, match="model.safetensors.*corrupt or truncated"):
        load_checkpoint(ckpt_copy)
    (ckpt_copy / "model.safetensors").unlink()
    (ckpt_copy / "pytorch_model.bin").unlink()
    with pytest.raises(AlignKDError, match="has no weights"):
        load_checkpoint(ckpt_copy)


def test_missing_tokenizer(ckpt_copy):
    (ckpt_copy / "tokenizer.model").unlink()
    with pytest.raises(AlignKDError, match="tokenizer.model is missing"):
        load_checkpoint(ckpt_copy)


def test_checkpoint_path_that_is_a_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(AlignKDError, match="is a file, but a checkpoint is a folder") as err:
        load_config(path)
    assert "does not exist" not in str(err.value)


@pytest.mark.parametrize("content,message", [
    ("[1, 2]", "holds a JSON list, not an object"),
    ('"config"', "holds a JSON str, not an object"),
])
def test_config_that_is_not_an_object(ckpt_copy, content, message):
    (ckpt_copy / "config.json").write_text(content)
    with pytest.raises(AlignKDError, match=message):
        load_config(ckpt_copy)


@pytest.mark.parametrize("key,value,wanted", [
    ("hidden_size", "64", "a positive integer"),
    ("num_hidden_layers", 0, "a positive integer"),
    ("vocab_size", 1.5, "a positive integer"),
    ("mm_vision_select_layer", "-2", "an integer"),
    ("rms_norm_eps", "1e-6", "a number"),
    ("tie_word_embeddings", "no", "true or false"),
    ("mm_projector_type", 3, "a string"),
    ("num_attention_heads", True, "a positive integer"),
])
def test_config_with_wrong_types(ckpt_copy, key, value, wanted):
    _edit_config(ckpt_copy, **{key: value})
    with pytest.raises(AlignKDError, match=f"config.json: {key} must be {wanted}, not {json.dumps(value)}"):
        load_checkpoint(ckpt_copy)


def test_unsafe_pickle_is_refused_without_running_it(ckpt_copy, tmp_path):
    """A pytorch_model.bin whose pickle calls a function is refused by name; the function never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # unpickling would call open(marker, "w"), creating the file
            return (open, (str(marker), "w"))

    state = read_state_dict(ckpt_copy)
    state["payload"] = Payload()
    for name in ("model.safetensors", "pytorch_model.bin"):
        (ckpt_copy / name).unlink(missing_ok=True)
    torch.save(state, ckpt_copy / "pytorch_model.bin")
    with pytest.raises(AlignKDError, match=r"pytorch_model.bin holds objects that are not plain tensors .*not loaded, for safety") as err:
        load_checkpoint(ckpt_copy)
    assert "weights_only=False" not in str(err.value) and "will likely succeed" not in str(err.value)
    assert "corrupt or truncated" not in str(err.value)
    assert not marker.exists()
