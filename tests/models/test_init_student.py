"""init-student: a plain LLaMA folder + a CLIP folder + a fresh LDPv2 -> an official-format checkpoint that loads and runs.

The inputs are made here the way their owners write them: a tiny LlamaForCausalLM and CLIPVisionModel saved by
transformers, with the official tiny fixture's SentencePiece tokenizer files next to the LLaMA."""

import json
import math
import shutil

import pytest
import torch
from transformers import CLIPVisionModel, LlamaForCausalLM

from alignkd.errors import AlignKDError
from alignkd.models.checkpoint import load_checkpoint, read_state_dict
from alignkd.models.init_student import fresh_projector, init_student
from alignkd.data.tokenizer import TOKENIZER_FILES as TOKENIZER
from alignkd.models.mobilevlm import IMAGE_TOKEN_INDEX, mobilevlm_tiny


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fixture_dir, tiny_llama_folder, tiny_clip_folder):
    root = tmp_path_factory.mktemp("inputs")
    return tiny_llama_folder(root / "llama", fixture_dir / "checkpoint"), tiny_clip_folder(root / "clip")


@pytest.fixture(scope="module")
def student(inputs, tmp_path_factory):
    llm, clip = inputs
    out = tmp_path_factory.mktemp("student") / "init"
    init_student(llm, str(clip), out, seed=7)
    return out


def _edit(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_loads_and_runs_with_the_llm_and_tower_unchanged(inputs, student, fixture_dir):
    llm, clip = inputs
    model, tok = load_checkpoint(student)
    source = LlamaForCausalLM.from_pretrained(llm).eval()
    ids = torch.tensor([tok("USER: hello ASSISTANT:")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, source(ids).logits)  # the LLM is the plain LLaMA, number for number
        tower = CLIPVisionModel.from_pretrained(clip).eval()
        pixels = torch.randn(1, 3, 72, 72)
        assert torch.equal(model.vision_tower(pixels).last_hidden_state, tower(pixels).last_hidden_state)
        with_image = torch.tensor([[tok.bos_id, IMAGE_TOKEN_INDEX, *tok("what is it?", add_special_tokens=False)]])
        out = model(with_image, images=pixels)
    assert out.logits.shape == (1, with_image.shape[1] - 1 + 144, 512) and torch.isfinite(out.logits).all()
    for name in TOKENIZER:
        assert (student / name).read_bytes() == (llm / name).read_bytes(), name


def test_config_has_the_official_multimodal_keys(student):
    cfg = json.loads((student / "config.json").read_text())
    assert cfg["model_type"] == "mobilevlm" and cfg["architectures"] == ["MobileLlamaForCausalLM"]
    assert cfg["mm_projector_type"] == "ldpnetv2"
    assert (cfg["mm_hidden_size"], cfg["mm_vision_select_layer"], cfg["mm_vision_select_feature"]) == (32, -2, "patch")
    assert (cfg["mm_use_im_start_end"], cfg["vision_tower_type"], cfg["image_aspect_ratio"]) == (False, "clip", "pad")
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 0)
    assert cfg["alignkd_init_student"]["projector_seed"] == 7
    assert (student / "vision_tower" / "config.json").is_file()


def test_projector_is_initialised_as_the_official_code_does(student):
    """PyTorch's default init (kaiming-uniform, a=sqrt(5)): |w| <= 1/sqrt(fan_in), std = bound/sqrt(3); not HF's N(0, 0.02)."""
    state = read_state_dict(student)
    for key, fan_in in (("mlp.mlp.0", 32), ("mlp.mlp.2", 64), ("peg.peg.0", 9)):
        weight, bias = state[f"model.mm_projector.{key}.weight"], state[f"model.mm_projector.{key}.bias"]
        bound = 1 / math.sqrt(fan_in)
        assert weight.abs().max() <= bound and bias.abs().max() <= bound, key
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15), key
    config = mobilevlm_tiny()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again = fresh_projector(config, 7)
    assert torch.equal(torch.rand(1), before)  # the caller's random stream is untouched
    for key, value in again.items():
        assert torch.equal(value, state[key]), key  # same seed, same projector
    assert not torch.equal(fresh_projector(config, 8)["model.mm_projector.peg.peg.0.weight"], again["model.mm_projector.peg.peg.0.weight"])


@pytest.mark.parametrize("layout", ["sharded-safetensors", "sharded-bin"])
def test_sharded_and_pickled_llm_folders(inputs, tmp_path, fixture_dir, layout):
    llm, clip = inputs
    folder = tmp_path / "llama"
    if layout == "sharded-safetensors":
        torch.manual_seed(0)
        LlamaForCausalLM.from_pretrained(llm).save_pretrained(folder, max_shard_size="100KB")
        for name in TOKENIZER:
            shutil.copyfile(llm / name, folder / name)
        assert (folder / "model.safetensors.index.json").is_file()
    else:
        shutil.copytree(llm, folder)
        state = read_state_dict(folder)
        (folder / "model.safetensors").unlink()
        keys = sorted(state)
        shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
        for shard, names in shards.items():
            torch.save({k: state[k] for k in names}, folder / shard)
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {k: s for s, ks in shards.items() for k in ks}}))
    init_student(folder, str(clip), tmp_path / "out")
    model, _ = load_checkpoint(tmp_path / "out")
    reference = read_state_dict(llm)
    assert torch.equal(model.llm.model.layers[1].mlp.down_proj.weight, reference["model.layers.1.mlp.down_proj.weight"])


def test_random_tower_preset(inputs, tmp_path):
    llm, _ = inputs
    summary = init_student(llm, "random:tiny-clip", tmp_path / "out")
    assert summary["random_vision_tower"] and summary["vision_tower"] == "random/tiny-clip"
    model, _ = load_checkpoint(tmp_path / "out")
    assert model.config.vision.image_size == 72


def test_overwrite_replaces_only_a_checkpoint(inputs, student, tmp_path):
    llm, clip = inputs
    out = tmp_path / "out"
    shutil.copytree(student, out)
    with pytest.raises(AlignKDError, match="already exists and is not empty; pass another -o, or --overwrite"):
        init_student(llm, str(clip), out, seed=3)
    init_student(llm, str(clip), out, seed=3, overwrite=True)
    assert json.loads((out / "config.json").read_text())["alignkd_init_student"]["projector_seed"] == 3
    (out / "notes.txt").write_text("mine")
    with pytest.raises(AlignKDError, match="also holds notes.txt; nothing was deleted"):
        init_student(llm, str(clip), out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    with pytest.raises(AlignKDError, match="would replace the input"):
        init_student(llm, str(clip), llm, overwrite=True)
    assert (llm / "model.safetensors").is_file()


def _copy_llm(inputs, tmp_path):
    return shutil.copytree(inputs[0], tmp_path / "llama")


@pytest.mark.parametrize("edit,message", [
    (lambda f: _edit(f / "tokenizer_config.json", bos_token="<bos>"), "bos token of tokenizer_config.json is not a special piece"),
    (lambda f: _edit(f / "config.json", eos_token_id=5), "eos_token_id 5 but the tokenizer's eos token '</s>' is id 2"),
    (lambda f: _edit(f / "config.json", pad_token_id=3), "pad_token_id 3 but the tokenizer's pad"),
    (lambda f: _edit(f / "config.json", vocab_size=600), "vocab_size 600 but model.embed_tokens.weight has 512 rows"),
    (lambda f: (f / "model.safetensors").unlink(), "has no weights: expected one of model.safetensors"),
    (lambda f: (f / "tokenizer.model").unlink(), "has no tokenizer.model; put the LLM's tokenizer files"),
    (lambda f: _edit(f / "config.json", model_type="gpt2"), "model_type 'gpt2' is not 'llama'"),
    (lambda f: _edit(f / "config.json", model_type="mobilevlm"), "already a MobileVLM checkpoint"),
])
def test_bad_llm_folder(inputs, tmp_path, edit, message):
    folder = _copy_llm(inputs, tmp_path)
    edit(folder)
    with pytest.raises(AlignKDError, match=message):
        init_student(folder, str(inputs[1]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tokenizer_larger_than_the_embedding(inputs, tmp_path, fixture_dir, tiny_llama_folder):
    folder = tiny_llama_folder(tmp_path / "llama", fixture_dir / "checkpoint", vocab=256)
    with pytest.raises(AlignKDError, match="has 512 pieces but the LLM's embedding has 256 rows: the tokenizer belongs to another model"):
        init_student(folder, str(inputs[1]), tmp_path / "out")


def test_missing_shard(inputs, tmp_path):
    llm, clip = inputs
    folder = tmp_path / "llama"
    LlamaForCausalLM.from_pretrained(llm).save_pretrained(folder, max_shard_size="100KB")
    for name in TOKENIZER:
        shutil.copyfile(llm / name, folder / name)
    sorted(folder.glob("model-*.safetensors"))[-1].unlink()
    with pytest.raises(AlignKDError, match="lists shards that are missing"):
        init_student(folder, str(clip), tmp_path / "out")


@pytest.mark.parametrize("shape,message", [
    ({"image_size": 64, "patch": 4}, r"64 px images in 4 px patches do not make a patch grid that LDPv2's 12x12 pool splits evenly"),
    ({"image_size": 70, "patch": 3}, r"70 px images in 3 px patches"),
])
def test_clip_of_the_wrong_image_size(inputs, tmp_path, tiny_clip_folder, shape, message):
    clip = tiny_clip_folder(tmp_path / "clip", **shape)
    with pytest.raises(AlignKDError, match=message):
        init_student(inputs[0], str(clip), tmp_path / "out")


def test_bad_clip_folders(inputs, tmp_path):
    llm, clip = inputs
    folder = shutil.copytree(clip, tmp_path / "clip")
    _edit(folder / "preprocessor_config.json", crop_size={"height": 336, "width": 336})
    with pytest.raises(AlignKDError, match="crops 336 px but the tower takes 72 px images"):
        init_student(llm, str(folder), tmp_path / "out")
    (folder / "preprocessor_config.json").unlink()
    (folder / "model.safetensors").unlink()
    with pytest.raises(AlignKDError, match="--vision-tower .* has no weights"):
        init_student(llm, str(folder), tmp_path / "out")
    with pytest.raises(AlignKDError, match="neither a folder nor a preset"):
        init_student(llm, "openai/clip-vit-large-patch14-336", tmp_path / "out")
    with pytest.raises(AlignKDError, match="unknown preset; valid: random:clip-vit-large-patch14-336"):
        init_student(llm, "random:vit-huge", tmp_path / "out")
    with pytest.raises(AlignKDError, match="--projector 'ldpnet' is not supported"):
        init_student(llm, str(clip), tmp_path / "out", projector="ldpnet")


def test_clip_weights_of_another_shape(inputs, tmp_path):
    llm, clip = inputs
    folder = shutil.copytree(clip, tmp_path / "clip")
    _edit(folder / "config.json", hidden_size=48)
    with pytest.raises(AlignKDError, match="--vision-tower .*: model.vision_tower.vision_tower.vision_model.* has shape"):
        init_student(llm, str(folder), tmp_path / "out")
