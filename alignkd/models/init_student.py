"""The paper's starting student: a MobileVLM V2 checkpoint built from a plain LLaMA, a CLIP tower and a fresh LDPv2.

Align-KD's student is not the released MobileVLM_V2-1.7B: like MobileVLM V2's own recipe (`run.sh`), it starts
from MobileLLaMA-1.4B-Chat (a plain HF LLaMA folder), openai/clip-vit-large-patch14-336 and a projector
initialised the way the official `initialize_vision_modules` does (PyTorch's default init). This writes that
model as an official-format checkpoint folder (`alignkd.models.checkpoint`), tokenizer files copied from the
LLM and checked against its embedding, so `alignkd distill` takes it as `student.path`.

    alignkd init-student --llm MobileLLaMA-1.4B-Chat --vision-tower clip-vit-large-patch14-336 \
        --projector ldpv2 -o checkpoints/student-init
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from alignkd.data.image import ImageConfig
from alignkd.data.tokenizer import TOKENIZER_FILES, Tokenizer
from alignkd.errors import AlignKDError
from alignkd.models.checkpoint import (WEIGHT_FILES, _SKIP, _check_types, _read_json, build_model, llama_config,
                                       load_config, read_state_dict, save_checkpoint, to_official_key)
from alignkd.models.mobilevlm import CLIP_L_336, POOLED_GRID, LDPv2Projector, MobileVLM, MobileVLMConfig, clip_vit_large_336, tiny_clip

PROJECTORS = {"ldpv2": "ldpnetv2"}  # CLI name -> config.json's mm_projector_type
RANDOM = "random:"  # --vision-tower random:PRESET: a randomly initialised tower of that shape
VISION_PRESETS = {"clip-vit-large-patch14-336": clip_vit_large_336, "tiny-clip": tiny_clip}
_VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
# what an official-format checkpoint folder holds: --overwrite replaces a folder holding only these
_CHECKPOINT_NAMES = {"config.json", "generation_config.json", "vision_tower", *WEIGHT_FILES, *TOKENIZER_FILES}


def init_student(llm: str | Path, vision_tower: str, out: str | Path, projector: str = "ldpv2", seed: int = 0,
                 overwrite: bool = False) -> dict:
    """Write the checkpoint folder `out`; returns a summary (sources, dtype, parameter count)."""
    llm, out = Path(llm), Path(out)
    if projector not in PROJECTORS:
        raise AlignKDError(f"--projector {projector!r} is not supported; valid projectors: {', '.join(PROJECTORS)} (MobileVLM V2's LDPv2)")
    _check_output(out, overwrite, [llm, Path(vision_tower)])
    raw, state, tok = _read_llm(llm)
    vision, image, vision_state, vision_name = _read_vision_tower(vision_tower, seed)
    llm_config = llama_config(raw, llm / "config.json")
    # MobileVLM pads with <unk> (train.py); _check_tokenizer refused ids that disagree, this fills in missing ones
    llm_config.bos_token_id, llm_config.eos_token_id, llm_config.pad_token_id = tok.bos_id, tok.eos_id, tok.pad_id
    random_tower = vision_tower.startswith(RANDOM)
    sources = {"llm": llm.name, "vision_tower": vision_name if random_tower else Path(vision_tower).name,
               "random_vision_tower": random_tower, "projector_seed": seed}
    config = MobileVLMConfig(llm=llm_config, vision=vision, image=image, vision_tower_name=vision_name,
                             projector_type=PROJECTORS[projector], context_length=int(raw.get("max_sequence_length", 2048)),
                             extra={"alignkd_init_student": sources})
    state.update(vision_state)
    state.update(fresh_projector(config, seed))
    _check_shapes(config, state, llm, vision_tower)
    dtype = state["model.embed_tokens.weight"].dtype  # the LLM's own: its weights are written unchanged
    model = build_model(config, state, llm, dtype)
    _write(model, tok, llm, out)
    return {"out": str(out), "llm": llm.name, "vision_tower": vision_name, "random_vision_tower": random_tower,
            "projector": PROJECTORS[projector], "seed": seed, "dtype": str(dtype).replace("torch.", ""),
            "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": tok.vocab_size}


def fresh_projector(config: MobileVLMConfig, seed: int) -> dict[str, torch.Tensor]:
    """LDPv2 initialised as the official code does, under official key names.

    `initialize_vision_modules` builds the projector after `from_pretrained`, as plain nn.Linear / nn.Conv2d:
    PyTorch's default init (kaiming-uniform weights, U(+-1/sqrt(fan_in)) biases), not transformers' normal(0, 0.02).
    Seeded on its own generator state, so the same seed gives the same projector whatever ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = LDPv2Projector(config.vision.hidden_size, config.llm.hidden_size, config.pooled_grid)
    return {to_official_key(f"mm_projector.{k}"): v for k, v in projector.state_dict().items()}


def _check_output(out: Path, overwrite: bool, sources: list[Path]) -> None:
    """-o must be new (or empty); --overwrite replaces only a folder that holds nothing but a checkpoint."""
    if out.is_file():
        raise AlignKDError(f"-o {out} is a file; pass a folder path for the new checkpoint")
    for source in sources:
        if source.exists() and (out.resolve() == source.resolve() or out.resolve() in source.resolve().parents):
            raise AlignKDError(f"-o {out} would replace the input {source}; write the new checkpoint to another folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise AlignKDError(f"-o {out} already exists and is not empty; pass another -o, or --overwrite to replace the checkpoint in it")
    other = sorted(p.name for p in out.iterdir() if p.name not in _CHECKPOINT_NAMES and not _is_shard(p.name))
    if other:
        raise AlignKDError(f"--overwrite replaces only a checkpoint folder, but {out} also holds {', '.join(other[:5])}; "
                           "nothing was deleted: pass another -o")


def _is_shard(name: str) -> bool:
    return name.startswith(("model-", "pytorch_model-")) and name.endswith((".safetensors", ".bin"))


def _read_llm(folder: Path) -> tuple[dict, dict[str, torch.Tensor], Tokenizer]:
    """config.json, the weights (official LLM keys: model.* and lm_head.*, memory-mapped) and the checked tokenizer."""
    if not folder.is_dir():
        raise AlignKDError(f"--llm {folder} is not a folder; pass the Hugging Face LLaMA folder (config.json, weights, tokenizer.model)")
    raw = _read_json(folder / "config.json", "--llm needs the LLaMA folder's config.json")
    _check_types(raw, folder / "config.json")
    if raw.get("model_type") == "mobilevlm" or "mm_projector_type" in raw:
        raise AlignKDError(f"--llm {folder} is already a MobileVLM checkpoint; use it directly as student.path, or pass its plain LLaMA")
    if raw.get("model_type") != "llama":
        raise AlignKDError(f"--llm {folder}: model_type {raw.get('model_type')!r} is not 'llama'; init-student takes a LLaMA or "
                           "MobileLLaMA folder such as mtgv/MobileLLaMA-1.4B-Chat")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise AlignKDError(f"--llm {folder} has no weights: expected one of {', '.join(WEIGHT_FILES)} (with every shard its index lists)")
    state = read_state_dict(folder)
    foreign = sorted(k for k in state if not k.startswith(("model.", "lm_head.")) or k.startswith(("model.vision_tower.", "model.mm_projector.")))
    if foreign or "model.embed_tokens.weight" not in state:
        what = f"holds {foreign[0]}" if foreign else "has no model.embed_tokens.weight"
        raise AlignKDError(f"--llm {folder}: its weights are not a plain LlamaForCausalLM (it {what}); pass the LLM's own folder")
    if not (folder / "tokenizer.model").is_file():
        raise AlignKDError(f"--llm {folder} has no tokenizer.model; put the LLM's tokenizer files ({', '.join(TOKENIZER_FILES)}) next to its config.json")
    tok = Tokenizer.from_folder(folder)
    _check_tokenizer(tok, raw, state["model.embed_tokens.weight"].shape[0], folder)
    return raw, state, tok


def _check_tokenizer(tok: Tokenizer, raw: dict, rows: int, folder: Path) -> None:
    """The tokenizer must fit the embedding and agree with config.json on the special tokens."""
    cfg, sp = folder / "config.json", tok.sp
    if raw.get("vocab_size") != rows:
        raise AlignKDError(f"{cfg} says vocab_size {raw.get('vocab_size')} but model.embed_tokens.weight has {rows} rows; "
                           "config.json belongs to other weights, restore the LLM's own config.json")
    if tok.vocab_size > rows:
        raise AlignKDError(f"{folder / 'tokenizer.model'} has {tok.vocab_size} pieces but the LLM's embedding has {rows} rows: "
                           "the tokenizer belongs to another model; use the tokenizer files that came with these weights")
    if not sp.IsUnknown(tok.unk_id):
        raise AlignKDError(f"{folder}: the unk token of tokenizer_config.json is {sp.IdToPiece(tok.unk_id)!r}, not tokenizer.model's "
                           "unknown piece; restore the LLM's tokenizer_config.json")
    for name, token_id in (("bos", tok.bos_id), ("eos", tok.eos_id)):
        if token_id == tok.unk_id or not sp.IsControl(token_id):
            raise AlignKDError(f"{folder}: the {name} token of tokenizer_config.json is not a special piece of tokenizer.model "
                               f"(it reads as {sp.IdToPiece(token_id)!r}); restore the LLM's tokenizer files")
    for key, token_id, name in (("bos_token_id", tok.bos_id, "bos"), ("eos_token_id", tok.eos_id, "eos"),
                                ("pad_token_id", tok.pad_id, "pad (= unk, as MobileVLM pads)")):
        if raw.get(key) is not None and raw[key] != token_id:
            raise AlignKDError(f"{cfg} has {key} {raw[key]} but the tokenizer's {name} token {sp.IdToPiece(token_id)!r} is id "
                               f"{token_id}; config.json and the tokenizer disagree, set {key} to {token_id}")


def _read_vision_tower(source: str, seed: int) -> tuple[CLIPVisionConfig, ImageConfig, dict[str, torch.Tensor], str]:
    """(CLIP config, preprocessing, tensors under official keys, mm_vision_tower name) from a folder or random:PRESET."""
    if source.startswith(RANDOM):
        name = source[len(RANDOM):]
        if name not in VISION_PRESETS:
            raise AlignKDError(f"--vision-tower {source}: unknown preset; valid: {', '.join(RANDOM + n for n in VISION_PRESETS)}")
        config = VISION_PRESETS[name]()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)  # not the projector's stream
            state = CLIPVisionModel(config).state_dict()
        image = ImageConfig(size=config.image_size)
        tower_name = CLIP_L_336 if name == "clip-vit-large-patch14-336" else f"random/{name}"
    else:
        config, image, state = _vision_folder(Path(source))
        tower_name = CLIP_L_336 if _same_shape(config, clip_vit_large_336()) else Path(source).name
    _check_grid(config, image, source)
    return config, image, {_VISION_PREFIX + k: v for k, v in state.items() if not _SKIP.search(k)}, tower_name


def _vision_folder(folder: Path) -> tuple[CLIPVisionConfig, ImageConfig, dict[str, torch.Tensor]]:
    if not folder.is_dir():
        raise AlignKDError(f"--vision-tower {folder} is neither a folder nor a preset ({', '.join(RANDOM + n for n in VISION_PRESETS)}); "
                           f"download {CLIP_L_336} (huggingface-cli download {CLIP_L_336} --local-dir DIR) and pass DIR")
    raw = _read_json(folder / "config.json", "--vision-tower needs the CLIP folder's config.json")
    if raw.get("model_type") not in ("clip", "clip_vision_model"):
        raise AlignKDError(f"--vision-tower {folder}: model_type {raw.get('model_type')!r} is not a CLIP model; pass a CLIPVisionModel "
                           f"or CLIPModel folder such as {CLIP_L_336}")
    fields = raw.get("vision_config", raw)  # a full CLIPModel nests the vision part
    config = CLIPVisionConfig(**{k: v for k, v in fields.items() if k not in ("model_type", "transformers_version", "architectures")})
    pre = folder / "preprocessor_config.json"
    image = ImageConfig.from_preprocessor_config(pre) if pre.is_file() else ImageConfig(size=config.image_size)
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise AlignKDError(f"--vision-tower {folder} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    # transformers 4 writes vision_model.* (and a CLIPModel text_model.*, projections, logit_scale); 5 drops the prefix
    state = {}
    for key, value in read_state_dict(folder).items():
        if key.startswith("vision_model."):
            state[key[len("vision_model."):]] = value
        elif key.startswith(("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")):
            state[key] = value
    return config, image, state


def _same_shape(a: CLIPVisionConfig, b: CLIPVisionConfig) -> bool:
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _check_grid(config: CLIPVisionConfig, image: ImageConfig, source: str) -> None:
    """LDPv2 pools the CLIP patch grid to 12x12 in equal windows (24 -> 12 in the paper's models)."""
    if image.size != config.image_size:
        raise AlignKDError(f"--vision-tower {source}: preprocessor_config.json crops {image.size} px but the tower takes "
                           f"{config.image_size} px images; restore the tower's own preprocessor_config.json")
    grid = config.image_size // config.patch_size
    if config.image_size % config.patch_size or grid % POOLED_GRID:
        raise AlignKDError(f"--vision-tower {source}: {config.image_size} px images in {config.patch_size} px patches do not make a "
                           f"patch grid that LDPv2's {POOLED_GRID}x{POOLED_GRID} pool splits evenly (MobileVLM V2: 336 px / 14 px = "
                           f"24x24); use {CLIP_L_336}")


def _check_shapes(config: MobileVLMConfig, state: dict[str, torch.Tensor], llm: Path, vision_tower: str) -> None:
    """Every tensor must be where the model wants it, in its shape; the message names the input it came from."""
    with torch.device("meta"):
        want = {to_official_key(k): v.shape for k, v in MobileVLM(config).state_dict().items()}
    if config.llm.tie_word_embeddings:
        want.pop("lm_head.weight", None)
    source = lambda key: f"--vision-tower {vision_tower}" if key.startswith(_VISION_PREFIX) else f"--llm {llm}"  # noqa: E731
    got = {k: v for k, v in state.items() if not _SKIP.search(k)}
    for key in sorted(set(want) | set(got)):
        if key not in got:
            raise AlignKDError(f"{source(key)}: its weights lack {key} (its config.json describes a bigger model); the weights are incomplete")
        if key not in want:
            raise AlignKDError(f"{source(key)}: its weights hold {key}, which its config.json does not describe; the config belongs to other weights")
        if tuple(got[key].shape) != tuple(want[key]):
            raise AlignKDError(f"{source(key)}: {key} has shape {tuple(got[key].shape)} but its config.json implies "
                               f"{tuple(want[key])}; the config belongs to other weights")


def _write(model: MobileVLM, tok: Tokenizer, llm: Path, out: Path) -> None:
    """Through a temporary sibling folder, renamed at the end: an interrupted run leaves no half checkpoint at -o."""
    tmp = out.parent / f".{out.name}.init-student.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tok, tmp)
    for name in TOKENIZER_FILES:  # the LLM's own files, byte for byte (save_checkpoint wrote equivalent ones)
        if (llm / name).is_file():
            shutil.copyfile(llm / name, tmp / name)
    load_config(tmp)  # the loader accepts what was written
    if out.exists():
        shutil.rmtree(out)  # _check_output allowed only an empty folder or a checkpoint
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
