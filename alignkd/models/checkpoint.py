"""Read and write MobileVLM checkpoint folders in the official format (mtgv/MobileVLM_V2-1.7B, -3B, -7B).

A folder holds `config.json` (`model_type: mobilevlm` plus the `mm_*` keys), the weights as
`model.safetensors` or `pytorch_model.bin` (either possibly sharded with an index json) under the official
key names (`model.layers.*`, `model.vision_tower.vision_tower.vision_model.*`,
`model.mm_projector.mlp.mlp.*`, `model.mm_projector.peg.peg.0.*`, `lm_head.*`), and the SentencePiece
tokenizer files. The CLIP config comes from a `vision_tower/` folder inside the checkpoint when present, else
from the built-in preset for `openai/clip-vit-large-patch14-336`. No network, no `trust_remote_code`.

    model, tokenizer = load_checkpoint("path/to/MobileVLM_V2-1.7B")
    save_checkpoint(model, tokenizer, "out/student")     # same format, readable by the official code
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig

from alignkd.data.image import ImageConfig
from alignkd.data.tokenizer import TOKENIZER_FILES, Tokenizer
from alignkd.errors import AlignKDError
from alignkd.models.mobilevlm import CLIP_L_336, POOLED_GRID, POOLED_GRID_KEY, MobileVLM, MobileVLMConfig, clip_vit_large_336

# official key prefix <-> our module path; the first match wins
_KEY_MAP = [
    # transformers 5 flattened CLIPVisionModel (no `vision_model.` level); the official keys keep it
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower."),
    ("model.mm_projector.mlp.mlp.", "mm_projector.mlp."),
    ("model.mm_projector.peg.peg.0.", "mm_projector.peg."),
    ("model.", "llm.model."),
    ("lm_head.", "llm.lm_head."),
]
# non-persistent buffers some transformers versions wrote into state dicts
_SKIP = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")
_LLAMA_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "pretraining_tp", "initializer_range",
    "attention_bias", "mlp_bias", "use_cache", "attention_dropout",
)
_MM_KEYS = (
    "mm_projector_type", "mm_vision_tower", "vision_tower_type", "mm_hidden_size", "mm_vision_select_layer",
    "mm_vision_select_feature", "image_aspect_ratio", "max_sequence_length",
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def from_official_key(key: str) -> str:
    for official, ours in _KEY_MAP:
        if key.startswith(official):
            return ours + key[len(official):]
    return key


def to_official_key(key: str) -> str:
    for official, ours in _KEY_MAP:
        if key.startswith(ours):
            return official + key[len(ours):]
    return key


# config.json keys we read, by the JSON type they must have (the official files' types).
_POSITIVE_INT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "max_position_embeddings", "mm_hidden_size", "max_sequence_length")
_TYPED_KEYS = {
    **{k: ((int,), "a positive integer") for k in _POSITIVE_INT_KEYS},
    "mm_vision_select_layer": ((int,), "an integer"),
    **{k: ((int, float), "a number") for k in ("rms_norm_eps", "rope_theta", "initializer_range", "attention_dropout")},
    **{k: ((bool, type(None)), "true or false") for k in ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_cache",
                                                          "mm_use_im_start_end")},
    **{k: ((str, type(None)), "a string") for k in ("model_type", "hidden_act", "mm_projector_type", "mm_vision_tower",
                                                    "vision_tower_type", "mm_vision_select_feature", "image_aspect_ratio")},
}


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise AlignKDError(f"{path} is missing: {what}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise AlignKDError(f"{path} is not valid JSON ({err}); restore it from the original checkpoint") from err
    if not isinstance(data, dict):
        raise AlignKDError(f"{path} holds a JSON {type(data).__name__}, not an object of settings; restore it from the original checkpoint")
    return data


def _check_types(raw: dict, path: Path) -> None:
    """One sentence for the first key of the wrong type, instead of a TypeError deep inside model building."""
    for key, (types, wanted) in _TYPED_KEYS.items():
        if key not in raw:
            continue
        value = raw[key]
        is_bool = isinstance(value, bool)
        bad = not isinstance(value, types) or (is_bool and bool not in types)
        if not bad and key in _POSITIVE_INT_KEYS:
            bad = value < 1
        if bad:
            raise AlignKDError(f"{path}: {key} must be {wanted}, not {json.dumps(value)}; restore config.json from the original checkpoint")


def _vision_config(folder: Path, raw: dict, vision_tower: Path | None) -> tuple[CLIPVisionConfig, ImageConfig]:
    """The CLIP config: --vision-tower folder, else checkpoint/vision_tower/, else a local mm_vision_tower, else the preset."""
    aspect = raw.get("image_aspect_ratio") or "square"
    name = raw.get("mm_vision_tower", CLIP_L_336)
    candidates = [vision_tower] if vision_tower else [folder / "vision_tower", Path(name), folder / name]
    for cand in candidates:
        if cand is not None and (Path(cand) / "config.json").is_file():
            cfg = _read_json(Path(cand) / "config.json", "the CLIP vision config")
            cfg = cfg.get("vision_config", cfg)  # a full CLIPConfig nests the vision part
            cfg = {k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version", "architectures")}
            pre = Path(cand) / "preprocessor_config.json"
            image = ImageConfig.from_preprocessor_config(pre, aspect) if pre.is_file() else ImageConfig(size=cfg["image_size"], aspect_ratio=aspect)
            return CLIPVisionConfig(**cfg), image
        if vision_tower:
            raise AlignKDError(f"--vision-tower {vision_tower} has no config.json; pass a folder holding the CLIP config.json and preprocessor_config.json")
    if name == CLIP_L_336:
        return clip_vit_large_336(), ImageConfig(size=336, aspect_ratio=aspect)
    raise AlignKDError(
        f"{folder / 'config.json'} names the vision tower {name!r}, which is not built in and has no local config; "
        f"put its config.json and preprocessor_config.json in {folder / 'vision_tower'} or pass --vision-tower DIR"
    )


def llama_config(raw: dict, path: Path) -> LlamaConfig:
    """The LLaMA part of a config.json (MobileVLM's or a plain LLaMA's: the keys are the same)."""
    llama_kwargs = {k: raw[k] for k in _LLAMA_KEYS if k in raw}
    if llama_kwargs.get("rope_scaling") is None:
        llama_kwargs.pop("rope_scaling", None)
    try:
        return LlamaConfig(**llama_kwargs)
    except (TypeError, ValueError) as err:
        raise AlignKDError(f"{path} has an invalid LLaMA configuration ({err})") from err


def load_config(folder: str | Path, vision_tower: str | Path | None = None) -> MobileVLMConfig:
    """Parse an official config.json (and the CLIP config) into a MobileVLMConfig, refusing what we cannot run."""
    folder = Path(folder)
    if folder.is_file():
        raise AlignKDError(f"checkpoint path {folder} is a file, but a checkpoint is a folder; pass the MobileVLM checkpoint folder "
                           "that holds config.json, the weights and tokenizer.model")
    if not folder.is_dir():
        raise AlignKDError(f"checkpoint folder {folder} does not exist; pass a MobileVLM checkpoint folder (config.json, weights, tokenizer.model)")
    raw = _read_json(folder / "config.json", "a MobileVLM checkpoint folder needs config.json")
    _check_types(raw, folder / "config.json")
    archs = raw.get("architectures") or []
    if raw.get("model_type") != "mobilevlm" and "MobileLlamaForCausalLM" not in archs:
        raise AlignKDError(
            f"{folder / 'config.json'} has model_type {raw.get('model_type')!r}, not 'mobilevlm': this is not a MobileVLM "
            "checkpoint; pass a MobileVLM V2 folder such as mtgv/MobileVLM_V2-1.7B"
        )
    projector = raw.get("mm_projector_type")
    if projector != "ldpnetv2":
        hint = " (the MobileVLM V1 projector)" if projector == "ldpnet" else ""
        raise AlignKDError(f"{folder / 'config.json'}: projector {projector!r}{hint} is unsupported; alignkd runs MobileVLM V2 checkpoints (mm_projector_type 'ldpnetv2')")
    if raw.get("vision_tower_type", "clip") != "clip":
        raise AlignKDError(f"{folder / 'config.json'}: vision_tower_type {raw['vision_tower_type']!r} is unsupported; only 'clip' is")
    if raw.get("mm_use_im_start_end"):
        raise AlignKDError(f"{folder / 'config.json'}: mm_use_im_start_end=true (image start/end tokens) is unsupported; MobileVLM V2 uses false")
    if raw.get("mm_vision_select_feature", "patch") not in ("patch", "cls_patch"):
        raise AlignKDError(f"{folder / 'config.json'}: mm_vision_select_feature {raw['mm_vision_select_feature']!r} is unsupported; use 'patch'")
    llm = llama_config(raw, folder / "config.json")
    vision, image = _vision_config(folder, raw, Path(vision_tower) if vision_tower else None)
    if raw.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
        raise AlignKDError(f"{folder / 'config.json'}: mm_hidden_size {raw['mm_hidden_size']} differs from the vision tower's hidden size {vision.hidden_size}")
    grid = raw.get(POOLED_GRID_KEY, POOLED_GRID)
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
        raise AlignKDError(f"{folder / 'config.json'}: {POOLED_GRID_KEY}={grid!r} must be a positive integer (the side of LDPv2's "
                           f"pooled grid; leave it out for the official {POOLED_GRID})")
    return config_from_official(raw, llm, vision, image, grid)


def config_from_official(raw: dict, llm: LlamaConfig, vision: CLIPVisionConfig, image: ImageConfig, grid: int) -> MobileVLMConfig:
    """The MobileVLMConfig of an official config.json's (checked) keys and its parsed parts."""
    known = set(_LLAMA_KEYS) | set(_MM_KEYS) | {POOLED_GRID_KEY}
    return MobileVLMConfig(
        llm=llm,
        vision=vision,
        image=image,
        vision_tower_name=raw.get("mm_vision_tower", CLIP_L_336),
        projector_type=raw["mm_projector_type"],
        select_layer=int(raw.get("mm_vision_select_layer", -2)),
        select_feature=raw.get("mm_vision_select_feature", "patch"),
        # The official loader uses max_sequence_length and falls back to 2048 without it.
        context_length=int(raw.get("max_sequence_length", 2048)),
        pooled_grid=grid,
        extra={k: v for k, v in raw.items() if k not in known},
    )


def _weight_files(folder: Path) -> list[Path]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            shards = sorted(set(_read_json(folder / index, "the shard index").get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing or not shards:
                raise AlignKDError(f"{folder / index} lists shards that are missing: {', '.join(missing) or '(none listed)'}; download every shard")
            return [folder / s for s in shards]
    raise AlignKDError(f"{folder} has no weights: expected one of {', '.join(WEIGHT_FILES)}")


def _load_pickle(path: Path) -> dict:
    """torch.load with weights_only=True; a pickle that needs more than tensors is refused, never retried unsafely."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise
        # torch's message suggests weights_only=False, which would run whatever the pickle names: not repeated.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        named = f" (it names {found.group(1)})" if found else ""
        raise AlignKDError(f"weights file {path} holds objects that are not plain tensors{named} and is not loaded, for safety "
                           "(unpickling them could run code); get the weights as model.safetensors or from a trusted source") from None


def _read_file(path: Path, dtype: torch.dtype | None, device) -> dict[str, torch.Tensor]:
    """One weights file, each tensor cast and placed as it is read: never a second full copy in another dtype."""
    place = lambda t: t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
    if path.suffix != ".safetensors":
        return {k: place(v) for k, v in _load_pickle(path).items()}  # mmap: only the cast copy is resident
    from safetensors import safe_open

    # safetensors takes "cpu" but not "cpu:0", the device accelerate gives each process of a multi-process CPU run
    where = torch.device(device or "cpu")
    with safe_open(str(path), framework="pt", device="cpu" if where.type == "cpu" else str(where)) as f:
        return {k: place(f.get_tensor(k)) for k in f.keys()}


def read_state_dict(folder: str | Path, dtype: torch.dtype | None = None, device=None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the official key names (pickles loaded with weights_only=True).

    With `dtype` (and `device`) every floating tensor is converted as it is read, so a bf16 7B read as bf16
    never exists in fp32, and read onto a GPU never exists whole on the host."""
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(Path(folder)):
        try:
            state.update(_read_file(path, dtype, device))
        except AlignKDError:
            raise
        except Exception as err:  # corrupt or truncated file: name it
            raise AlignKDError(f"cannot read weights file {path} ({type(err).__name__}: {err}); it is corrupt or truncated, download it again") from err
    return state


def _check_keys(model: MobileVLM, state: dict, source: Path) -> None:
    expected = set(model.state_dict().keys())
    got = set(state)
    if model.config.llm.tie_word_embeddings:
        expected.discard("llm.lm_head.weight")
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        show = lambda keys: ", ".join(to_official_key(k) for k in keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        raise AlignKDError(f"the weights in {source} do not match its config.json ({'; '.join(parts)}); the checkpoint is incomplete or its config belongs to another model")


def _materialise_buffers(model: MobileVLM) -> None:
    """Non-persistent buffers are not in state dicts; after a meta-device build they must be computed."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model.llm.model.rotary_emb = LlamaRotaryEmbedding(config=model.config.llm)
    emb = model.vision_tower.embeddings
    emb.register_buffer("position_ids", torch.arange(emb.num_positions).expand((1, -1)), persistent=False)


def build_model(config: MobileVLMConfig, state: dict[str, torch.Tensor] | None = None, source: Path | None = None,
                dtype: torch.dtype = torch.float32, device=None) -> MobileVLM:
    """Build on the meta device and assign the given official-format tensors (no double allocation).

    Tensors already in `dtype` are assigned as they are; others are converted one at a time."""
    with torch.device("meta"):
        model = MobileVLM(config)
    if state is None:
        raise ValueError("build_model needs a state dict; use MobileVLM(config) for a randomly initialised model")
    ours = {from_official_key(k): v.to(dtype) if v.is_floating_point() else v for k, v in state.items() if not _SKIP.search(k)}
    _check_keys(model, ours, source or Path("<state dict>"))
    model.load_state_dict(ours, strict=False, assign=True)
    if config.llm.tie_word_embeddings:
        model.llm.tie_weights()
    _materialise_buffers(model)
    model.to(device=device, dtype=dtype)  # only the freshly computed buffers move or change: the weights already match
    model.vision_tower.requires_grad_(False)
    return model


def load_checkpoint(folder: str | Path, dtype: torch.dtype = torch.float32, vision_tower: str | Path | None = None,
                    device=None):
    """Load an official-format checkpoint folder: returns (model in eval mode, tokenizer).

    The weights are read straight into `dtype` on `device` (default: the host), tensor by tensor."""
    folder = Path(folder)
    config = load_config(folder, vision_tower)
    tokenizer = Tokenizer.from_folder(folder)
    if tokenizer.vocab_size > config.llm.vocab_size:
        raise AlignKDError(f"{folder / 'tokenizer.model'} has {tokenizer.vocab_size} pieces but config.json has vocab_size {config.llm.vocab_size}; the tokenizer belongs to another model")
    model = build_model(config, read_state_dict(folder, dtype, device), folder, dtype, device)
    return model.eval(), tokenizer


def config_from_manifest(model: dict, image: ImageConfig, where: Path) -> MobileVLMConfig:
    """The MobileVLMConfig an exported bundle's manifest records (`model.config`: the official config.json that
    `config_to_official` wrote; `model.vision_config`: the CLIP config), for the parts a bundle runs in PyTorch."""
    if "vision_config" not in model:
        raise AlignKDError(f"{where} has no model.vision_config, which the PyTorch vision encoder is built from; re-export the bundle")
    raw = model["config"]
    vision = {k: v for k, v in model["vision_config"].items() if k not in ("model_type", "transformers_version", "architectures")}
    return config_from_official(raw, llama_config(raw, where), CLIPVisionConfig(**vision), image,
                                raw.get(POOLED_GRID_KEY, POOLED_GRID))


def config_to_official(config: MobileVLMConfig) -> dict:
    """config.json as the official `save_pretrained` writes it (unknown original keys kept)."""
    llm = config.llm
    out = dict(config.extra)
    out.update({
        "architectures": ["MobileLlamaForCausalLM"],
        "model_type": "mobilevlm",
        "bos_token_id": llm.bos_token_id, "eos_token_id": llm.eos_token_id, "pad_token_id": llm.pad_token_id,
        "hidden_act": llm.hidden_act, "hidden_size": llm.hidden_size, "intermediate_size": llm.intermediate_size,
        "initializer_range": llm.initializer_range, "max_position_embeddings": llm.max_position_embeddings,
        "max_sequence_length": config.context_length, "num_attention_heads": llm.num_attention_heads,
        "num_hidden_layers": llm.num_hidden_layers, "num_key_value_heads": llm.num_key_value_heads,
        "pretraining_tp": getattr(llm, "pretraining_tp", 1), "rms_norm_eps": llm.rms_norm_eps,
        "rope_scaling": None, "rope_theta": float(llm.rope_parameters["rope_theta"]),
        "tie_word_embeddings": llm.tie_word_embeddings, "use_cache": True, "vocab_size": llm.vocab_size,
        "mm_projector_type": config.projector_type, "mm_vision_tower": config.vision_tower_name,
        "vision_tower_type": "clip", "mm_hidden_size": config.vision.hidden_size,
        "mm_vision_select_layer": config.select_layer, "mm_vision_select_feature": config.select_feature,
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": config.image.aspect_ratio,
        "image_grid_pinpoints": None, "use_mm_proj": True, "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False, "mm_projector_lr": None,
    })
    if config.pooled_grid != POOLED_GRID:  # only our toy presets; the official loader would ignore it and pool to 12x12
        out[POOLED_GRID_KEY] = config.pooled_grid
    out.setdefault("torch_dtype", "float32")
    return dict(sorted(out.items()))


def save_checkpoint(model: MobileVLM, tokenizer: Tokenizer, folder: str | Path, safe_serialization: bool = True,
                    dtype: torch.dtype | None = None, state: dict | None = None) -> Path:
    """Write `model` and `tokenizer` as an official MobileVLM checkpoint folder (plus vision_tower/ configs).

    `state`: the weights to write instead of `model.state_dict()` (a sharded model's gathered full state)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = {to_official_key(k): v.detach().to(dtype or v.dtype).contiguous() for k, v in (model.state_dict() if state is None else state).items()}
    official = config_to_official(config)
    official["torch_dtype"] = str(next(iter(state.values())).dtype).replace("torch.", "")
    # Write to a temporary name and rename, so an interrupted save never leaves a half-written checkpoint.
    if safe_serialization:
        from safetensors.torch import save_file

        tmp = folder / "model.safetensors.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / "model.safetensors")
    else:
        tmp = folder / "pytorch_model.bin.tmp"
        torch.save(state, tmp)
        tmp.replace(folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(official, indent=2) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": config.llm.bos_token_id, "eos_token_id": config.llm.eos_token_id,
           "pad_token_id": config.llm.pad_token_id}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    tokenizer.save(folder)
    tower = folder / "vision_tower"
    tower.mkdir(exist_ok=True)
    vision = {k: v for k, v in config.vision.to_dict().items() if k not in ("transformers_version",)}
    (tower / "config.json").write_text(json.dumps(vision, indent=2, sort_keys=True) + "\n")
    (tower / "preprocessor_config.json").write_text(json.dumps(config.image.to_preprocessor_config(), indent=2) + "\n")
    return folder


__all__ = ["load_checkpoint", "save_checkpoint", "load_config", "read_state_dict", "build_model", "TOKENIZER_FILES"]
