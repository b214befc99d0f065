"""Loading the models a run names, checking that teacher and student fit together, and the run's checkpoints.

A resumable checkpoint (`OUT/checkpoints/step-N/`) holds accelerate's state (the trained module: student
and KD adapters; optimizer; scheduler; RNG of every process) plus `train_state.json` (step, epoch, data
position) and the student in the official MobileVLM format, so any checkpoint can be exported or evaluated
as it is. It is written to a temporary folder and renamed, so an interrupted save never leaves a broken one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from alignkd.data.tokenizer import Tokenizer
from alignkd.errors import AlignKDError
from alignkd.models.checkpoint import load_checkpoint, read_state_dict
from alignkd.models.mobilevlm import MobileVLM, get_preset

CHECKPOINTS = "checkpoints"


def load_spec(spec, train: bool = True):
    """(model, tokenizer) for a ModelSpec: a checkpoint folder, or a preset randomly initialised (seeded by the caller)."""
    dtype = getattr(torch, spec.dtype)
    if spec.path is not None:
        model, tok = load_checkpoint(spec.path, dtype=dtype)
    else:
        tok = Tokenizer.from_folder(spec.tokenizer)
        config = get_preset(spec.preset)
        config.llm.vocab_size = tok.vocab_size
        model = MobileVLM(config).to(dtype)
    if spec.vision_tower_from:
        copy_vision_tower(model, Path(spec.vision_tower_from))
    return model.train(train), tok


def copy_vision_tower(model, source: Path) -> None:
    prefix = "model.vision_tower.vision_tower.vision_model."
    state = {k[len(prefix):]: v for k, v in read_state_dict(source).items() if k.startswith(prefix)}
    own = model.vision_tower.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise AlignKDError(f"vision_tower_from {source}: its CLIP tower does not have this model's shape; use a checkpoint with the same vision config")
    model.vision_tower.load_state_dict(state)


def check_pair(teacher, t_tok: Tokenizer, student, s_tok: Tokenizer) -> None:
    """Refuse a teacher/student pair whose sequences would not line up position by position."""
    def fail(what, t, s):
        raise AlignKDError(f"teacher and student differ in {what}: teacher {t}, student {s}; Align-KD matches them "
                           "position by position, so both must share the tokenizer, image tokens and preprocessing")
    if t_tok.sp.serialized_model_proto() != s_tok.sp.serialized_model_proto():
        fail("tokenizer (tokenizer.model)", f"{t_tok.vocab_size} pieces", f"{s_tok.vocab_size} pieces (different model file)")
    tc, sc = teacher.config, student.config
    if tc.llm.vocab_size != sc.llm.vocab_size:
        fail("vocabulary size", tc.llm.vocab_size, sc.llm.vocab_size)
    if tc.num_image_tokens != sc.num_image_tokens:
        fail("number of image tokens", tc.num_image_tokens, sc.num_image_tokens)
    t_img, s_img = tc.image.to_dict(), sc.image.to_dict()
    if t_img != s_img:
        diff = sorted(k for k in t_img if t_img[k] != s_img.get(k))
        fail(f"image preprocessing ({', '.join(diff)})", {k: t_img[k] for k in diff}, {k: s_img[k] for k in diff})
    if tc.vision.image_size != sc.vision.image_size or tc.vision.patch_size != sc.vision.patch_size:
        fail("vision input (image size / patch)", (tc.vision.image_size, tc.vision.patch_size), (sc.vision.image_size, sc.vision.patch_size))


def latest_checkpoint(output_dir: Path) -> Path | None:
    folders = sorted((output_dir / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return folders[-1] if folders else None


def resolve_resume(resume, output_dir: Path) -> Path | None:
    """`resume` True -> the latest checkpoint in the run folder; a path -> that checkpoint; False -> None."""
    if not resume:
        return None
    path = latest_checkpoint(output_dir) if resume is True else Path(resume)
    if path is None:
        raise AlignKDError(f"--resume: no checkpoint in {output_dir / CHECKPOINTS}; start without --resume")
    if not (path / "train_state.json").is_file():
        raise AlignKDError(f"--resume {path}: not a checkpoint folder (no train_state.json)")
    return path


def save_run_checkpoint(accelerator, module, tokenizer, output_dir: Path, state: dict, keep: int) -> Path:
    """Write OUT/checkpoints/step-N atomically (all processes call this; the main one writes the extra files)."""
    from alignkd.models.checkpoint import save_checkpoint

    final = output_dir / CHECKPOINTS / f"step-{state['step']}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"))
    if accelerator.is_main_process:
        (tmp / "train_state.json").write_text(json.dumps(state, indent=2) + "\n")
        save_checkpoint(accelerator.unwrap_model(module).student, tokenizer, tmp / "student")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        older = sorted((output_dir / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]
        for old in older:
            if old.name.split("-")[1].isdigit():
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def save_adapters(module, path: Path) -> None:
    """The KD adapters as safetensors (the paper's P_attn and P_V), next to the final student."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.detach().contiguous() for name in ("head_adapter", "vision_adapter")
               if hasattr(module, name) for k, v in getattr(module, name).state_dict().items()}
    if tensors:
        save_file(tensors, str(path))


def load_adapters(module, path: Path) -> None:
    """Continue from an earlier stage's adapters (shapes must match this teacher/student pair)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise AlignKDError(f"adapters_from {path} does not exist; point it at a previous run's adapters.safetensors")
    tensors = load_file(str(path))
    for name in ("head_adapter", "vision_adapter"):
        if not hasattr(module, name):
            continue
        sub = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        own = getattr(module, name).state_dict()
        if set(sub) != set(own) or any(sub[k].shape != own[k].shape for k in own):
            raise AlignKDError(f"adapters_from {path}: {name} does not fit this teacher/student pair "
                               f"(expected shapes {[tuple(v.shape) for v in own.values()]})")
        getattr(module, name).load_state_dict(sub)
