"""Loading the models a run names, checking that teacher and student fit together, and the run's checkpoints.

A resumable checkpoint (`OUT/checkpoints/step-N/`) holds accelerate's state (the trained module: student and
KD adapters, as safetensors; the optimizer, read back with torch's weights_only loader), the learning-rate
schedule (`scheduler.json`) and every process's RNG (`state/rng_K.json`) as JSON, `train_state.json` (step,
epoch: the data position) and the student in the official MobileVLM format, so any checkpoint can be exported
or evaluated as it is. Nothing in it needs unpickling, and `--resume` refuses a pickle found there: loading
a checkpoint folder never runs code from it.

A save checks the free space first, writes `step-N.tmp/` with `train_state.json` last and renames it; a save
that fails (disk full, a second Ctrl-C, kill -9) leaves the previous complete checkpoint, and its partial
folder is ignored by `--resume` and removed.

    alignkd distill -c alignkd/configs/synth_distill.yaml output_dir=runs/kd save_every=100
    alignkd distill -c alignkd/configs/synth_distill.yaml output_dir=runs/kd --resume
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from alignkd.data.tokenizer import Tokenizer
from alignkd.errors import AlignKDError
from alignkd.models.checkpoint import load_checkpoint, read_state_dict, save_checkpoint
from alignkd.models.mobilevlm import MobileVLM, get_preset

CHECKPOINTS = "checkpoints"
STEP_NAME = re.compile(r"step-(\d+)")
TRAIN_STATE = "train_state.json"  # written last into a checkpoint: a folder without it is an interrupted save
SCHEDULER = "scheduler.json"


def load_spec(spec, train: bool = True, dtype: str | None = None, device=None):
    """(model, tokenizer) for a ModelSpec: a checkpoint folder, or a preset randomly initialised (seeded by the caller).

    The weights are made in `dtype` (default: the spec's) from the start, on `device` for a checkpoint: a bf16
    teacher is never built in fp32 first."""
    dtype = getattr(torch, dtype or spec.dtype)
    if spec.path is not None:
        model, tok = load_checkpoint(spec.path, dtype=dtype, device=device)
    else:
        tok = Tokenizer.from_folder(spec.tokenizer)
        config = get_preset(spec.preset)
        config.llm.vocab_size = tok.vocab_size
        with _default_dtype(dtype):
            model = MobileVLM(config)
        model.to(device=device, dtype=dtype)  # no-op for the weights; buffers follow as before
    if spec.vision_tower_from:
        copy_vision_tower(model, Path(spec.vision_tower_from))
    return model.train(train), tok


@contextmanager
def _default_dtype(dtype: torch.dtype):
    """Random weights drawn directly in `dtype` (float32 keeps the usual path, and so its random numbers)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


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


def _step(path: Path) -> int | None:
    match = STEP_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: Path) -> tuple[list[Path], list[Path]]:
    """(complete checkpoints by step, incomplete ones): `step-N.tmp` or a folder without train_state.json is an interrupted save."""
    complete, incomplete = [], []
    root = output_dir / CHECKPOINTS
    for path in sorted(root.glob("step-*")) if root.is_dir() else []:
        if path.is_dir() and _step(path) is not None and (path / TRAIN_STATE).is_file():
            complete.append(path)
        elif path.is_dir():
            incomplete.append(path)
    return sorted(complete, key=_step), incomplete


def latest_checkpoint(output_dir: Path) -> Path | None:
    complete, _ = list_checkpoints(output_dir)
    return complete[-1] if complete else None


def remove_incomplete(output_dir: Path) -> list[Path]:
    """Delete interrupted saves (main process only); they can never be resumed."""
    _, incomplete = list_checkpoints(output_dir)
    for path in incomplete:
        shutil.rmtree(path, ignore_errors=True)
    return incomplete


def resolve_resume(resume, output_dir: Path) -> Path | None:
    """`resume` True -> the latest complete checkpoint in the run folder; a path -> that checkpoint; False -> None."""
    if not resume:
        return None
    if resume is True:
        complete, incomplete = list_checkpoints(output_dir)
        if not complete:
            partial = f" (only the interrupted save {incomplete[-1].name}, which cannot be resumed)" if incomplete else ""
            raise AlignKDError(f"--resume: no checkpoint in {output_dir / CHECKPOINTS}{partial}; start afresh without --resume "
                               "(with --overwrite if output_dir holds an earlier run)")
        return complete[-1]
    path = Path(resume)
    if not (path / TRAIN_STATE).is_file() or _step(path) is None and path.name.endswith(".tmp"):
        latest = latest_checkpoint(path.parent.parent) if path.parent.name == CHECKPOINTS else None
        hint = f"; the latest complete one is {latest}" if latest else ""
        raise AlignKDError(f"--resume {path}: not a complete checkpoint folder (no train_state.json, or an interrupted save){hint}")
    return path


def checkpoint_bytes(module, optimizer) -> int:
    """What a step-N folder takes on disk: the trained module, the optimizer state, the student again, small files."""
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    student = sum(p.numel() * p.element_size() for p in module.student.parameters())
    moments = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    if not moments:  # before the first step AdamW holds no state yet; it will hold two moments per trained weight
        moments = 2 * sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    return int(1.05 * (weights + moments + student)) + 4 * 2**20


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _disk_full(target: Path, output_dir: Path, free: int, need: int | None = None) -> AlignKDError:
    latest = latest_checkpoint(output_dir)
    size = f"it needs about {_gb(need)}, " if need else ""
    return AlignKDError(f"disk full: could not save {target} ({size}{_gb(free)} free); free some space or move output_dir to "
                        f"a larger disk, then continue with --resume (last complete checkpoint: {latest or 'none'})")


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    """ENOSPC as it surfaces from Python (OSError), safetensors (its message) or torch.save (only a RuntimeError)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(err, (OSError, RuntimeError, SafetensorError)):
        return False
    if "No space left on device" in str(err) or "os error 28" in str(err):
        return True
    return shutil.disk_usage(folder).free < 2**20  # torch's writer says only "unexpected pos": look at the disk


def _free_bytes(accelerator, folder: Path) -> int:
    """The main process's reading, on every process, so that all of them stop or go on together."""
    free = [shutil.disk_usage(folder).free]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(free)
    return free[0]


def check_space(accelerator, folder: Path, need: int, target: Path, output_dir: Path) -> None:
    """Refuse a save that cannot fit, before writing anything."""
    free = _free_bytes(accelerator, folder)
    if free < need:
        raise _disk_full(target, output_dir, free, need)


def check_space_before_training(accelerator, module, optimizer, output_dir: Path, checkpoints: bool) -> None:
    """A run that could not save its first checkpoint (or its student) is refused before it trains, not after."""
    unwrapped = accelerator.unwrap_model(module)
    need = checkpoint_bytes(unwrapped, optimizer) if checkpoints else student_bytes(unwrapped)
    free = _free_bytes(accelerator, output_dir)
    if free < need:
        what = "a checkpoint" if checkpoints else "the trained student"
        raise AlignKDError(f"disk full: {what} of this run needs about {_gb(need)} but {output_dir} has {_gb(free)} free; "
                           "free some space or set output_dir on a larger disk")


def student_bytes(module) -> int:
    return int(1.05 * sum(p.numel() * p.element_size() for p in module.parameters())) + 4 * 2**20


@contextmanager
def saving(accelerator, tmp: Path, target: Path, output_dir: Path):
    """Turn a failed save into one line (disk full, unwritable) and remove its partial folder; the last checkpoint stays."""
    try:
        yield
    except BaseException as err:
        full = _is_disk_full(err, tmp.parent)  # before cleaning up: the partial files still hold the space
        free = shutil.disk_usage(tmp.parent).free
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise _disk_full(target, output_dir, free) from None
        if isinstance(err, OSError):
            raise AlignKDError(f"could not write {target} ({err.strerror or err}); fix the folder's permissions or "
                               f"space, then continue with --resume (last complete checkpoint: {latest_checkpoint(output_dir) or 'none'})") from err
        raise


def save_run_checkpoint(accelerator, module, optimizer, scheduler, tokenizer, output_dir: Path, state: dict, keep: int) -> Path:
    """Write OUT/checkpoints/step-N through step-N.tmp (all processes call this; the main one writes the shared files)."""
    final = output_dir / CHECKPOINTS / f"step-{state['step']}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_incomplete(output_dir)
    accelerator.wait_for_everyone()
    check_space(accelerator, final.parent, checkpoint_bytes(accelerator.unwrap_model(module), optimizer), final, output_dir)
    with saving(accelerator, tmp, final, output_dir):
        accelerator.save_state(str(tmp / "state"))
        weights = full_state(accelerator, module)
        _replace_pickled_rng(tmp / "state", accelerator.process_index)
        accelerator.wait_for_everyone()  # every process's files are in tmp before it is renamed
        if accelerator.is_main_process:
            (tmp / SCHEDULER).write_text(json.dumps(scheduler.state_dict()) + "\n")
            save_checkpoint(accelerator.unwrap_model(module).student, tokenizer, tmp / "student", state=_part(weights, "student."))
            (tmp / TRAIN_STATE).write_text(json.dumps(state, indent=2) + "\n")  # last: it marks the folder complete
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
    if accelerator.is_main_process:
        _prune(output_dir, state["step"], keep)
    accelerator.wait_for_everyone()
    return final


def _prune(output_dir: Path, step: int, keep: int) -> None:
    """Keep the newest `keep` checkpoints up to `step`. Later ones belong to a continuation this run abandoned by
    resuming from an earlier checkpoint; left there, --resume would pick them instead of this run's work."""
    complete, _ = list_checkpoints(output_dir)
    older = [p for p in complete if _step(p) < step]
    for path in [p for p in complete if _step(p) > step] + older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(path)


def _replace_pickled_rng(state_dir: Path, process_index: int) -> None:
    """accelerate pickles the RNG states; keep them as JSON instead, so that a checkpoint never needs unpickling."""
    import random

    import numpy as np

    (state_dir / f"random_states_{process_index}.pkl").unlink(missing_ok=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    rng = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
           "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        rng["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    (state_dir / f"rng_{process_index}.json").write_text(json.dumps(rng))


def _restore_rng(state_dir: Path, process_index: int) -> bool:
    import random

    import numpy as np

    path = state_dir / f"rng_{process_index}.json"
    if not path.is_file():
        return False
    try:
        rng = json.loads(path.read_text())
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in rng["cuda"]])
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise AlignKDError(f"--resume: {path} is not a valid RNG state ({err}); resume from another checkpoint") from err
    return True


def _load_scheduler(path: Path, scheduler) -> None:
    """Only the schedule's numbers are taken from the file (never its lr_lambdas: those are code)."""
    own = scheduler.state_dict()
    try:
        data = json.loads((path / SCHEDULER).read_text())
    except (OSError, ValueError) as err:
        raise AlignKDError(f"--resume {path}: cannot read {SCHEDULER} ({err}); resume from another checkpoint") from err
    if not isinstance(data, dict) or set(data) != set(own) or any(
            not isinstance(data[k], (type(own[k]), int) if isinstance(own[k], float) else type(own[k])) for k in own):
        raise AlignKDError(f"--resume {path}: {SCHEDULER} does not hold this run's learning-rate schedule; resume from another checkpoint")
    scheduler.load_state_dict({**data, "lr_lambdas": own["lr_lambdas"]})


def load_run_checkpoint(accelerator, path: Path, scheduler) -> dict:
    """Restore module, optimizer, schedule and RNG from a checkpoint without unpickling anything that can run code.

    Weights are safetensors, the optimizer is read by accelerate with torch's weights_only loader, and the schedule
    and RNG are JSON. A pickle in the folder (an older alignkd's scheduler/RNG files, or a planted one) is refused."""
    from pickle import UnpicklingError

    state_dir = path / "state"
    pickles = sorted(p.name for p in state_dir.glob("*.pkl"))
    if pickles:
        how = ("delete them (this version keeps that state in scheduler.json and rng_*.json)" if (path / SCHEDULER).is_file()
               else "it was written by an older alignkd: start a new run, or resume from a checkpoint this version wrote")
        raise AlignKDError(f"--resume {path}: {', '.join(pickles)} in {state_dir} are pickle files, which alignkd does not "
                           f"load because unpickling can run code; {how}")
    if not (path / SCHEDULER).is_file():
        raise AlignKDError(f"--resume {path}: no {SCHEDULER} (written by an older alignkd); start a new run, or resume "
                           "from a checkpoint this version wrote")
    try:
        accelerator.load_state(str(state_dir))
    except UnpicklingError:
        raise AlignKDError(f"--resume {path}: a file in {state_dir} holds objects that are not plain tensors and is not loaded "
                           "for safety; resume from a checkpoint alignkd wrote") from None
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AlignKDError(f"--resume {path}: cannot load its training state ({reason}); resume from another checkpoint "
                           "written with this config") from err
    _load_scheduler(path, scheduler)
    if not _restore_rng(state_dir, accelerator.process_index):
        accelerator.print(f"note: {path} holds no RNG state for process {accelerator.process_index}; random streams start afresh")
    return json.loads((path / TRAIN_STATE).read_text())


def full_state(accelerator, module) -> dict:
    """The trained module's whole state dict, for the main process to write. Under FSDP (and ZeRO-3) the shards
    are gathered, so every process must call this; under DDP or one process it is the module's own state."""
    return accelerator.get_state_dict(module)


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save_adapters(module, path: Path, state: dict | None = None) -> None:
    """The KD adapters as safetensors (the paper's P_attn and P_V), next to the final student.
    `state`: the module's full state dict (see `full_state`) instead of its own, possibly sharded, one."""
    from safetensors.torch import save_file

    state = module.state_dict() if state is None else state
    tensors = {k: v.detach().contiguous() for k, v in state.items() if k.startswith(("head_adapter.", "vision_adapter."))}
    if tensors:
        save_file(tensors, str(path))


def check_adapters_from(path: str | None) -> None:
    """Called before any model is loaded: a wrong path fails in a second, not after reading a 7B teacher."""
    if path is not None and not Path(path).is_file():
        raise AlignKDError(f"adapters_from {path} does not exist; point it at a previous run's adapters.safetensors "
                           "(stage 2: runs/paper_stage1/adapters.safetensors), or set adapters_from=null for fresh adapters")


def load_adapters(module, path: Path) -> None:
    """Continue from an earlier stage's adapters (shapes must match this teacher/student pair)."""
    from safetensors.torch import load_file

    check_adapters_from(str(path))
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


def save_final(accelerator, module, tokenizer, output_dir: Path) -> Path:
    """OUT/student (official format, through student.tmp like a checkpoint) and OUT/adapters.safetensors."""
    unwrapped = accelerator.unwrap_model(module)
    target, tmp = output_dir / "student", output_dir / "student.tmp"
    check_space(accelerator, output_dir, student_bytes(unwrapped), target, output_dir)
    state = full_state(accelerator, module)
    if accelerator.is_main_process:
        with saving(accelerator, tmp, target, output_dir):
            shutil.rmtree(tmp, ignore_errors=True)
            save_checkpoint(unwrapped.student, tokenizer, tmp, state=_part(state, "student."))
            save_adapters(unwrapped, output_dir / "adapters.safetensors", state)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
    accelerator.wait_for_everyone()
    return target
