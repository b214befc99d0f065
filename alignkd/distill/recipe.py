"""The training recipe on accelerate, read top to bottom: setup, train, save, resume.

`alignkd distill -c CONFIG` (Align-KD, a teacher in the config) and `alignkd train -c CONFIG` (plain
supervised fine-tuning, no teacher: the CE-only baseline, and how the toy teacher is trained) both run
`run()`. The teacher is frozen, in eval mode, under no_grad, and never handed to `accelerator.prepare`;
the student and the KD adapters are one module that the optimizer, the checkpoint and DDP own. Nothing
assumes a single process: `accelerate launch --config_file alignkd/configs/accelerate/{ddp,fsdp,deepspeed_zero2}.yaml
-m alignkd distill -c CONFIG` (docs/distill.md, "Multi-GPU").

    alignkd distill -c alignkd/configs/synth_distill.yaml output_dir=runs/kd max_steps=20
    alignkd distill -c alignkd/configs/synth_distill.yaml output_dir=runs/kd --resume
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from alignkd.config import to_dict
from alignkd.distill.checkpoint import (CHECKPOINTS, check_adapters_from, check_pair, check_space_before_training,
                                       load_adapters, load_run_checkpoint, load_spec, remove_incomplete, resolve_resume,
                                       save_final, save_run_checkpoint)
from alignkd.distill.config import TrainConfig
from alignkd.distill.objective import TERMS, AlignKDModule, run_teacher
from alignkd.distill.rundir import History, check_flags, prepare_output_dir, truncate_history
from alignkd.distill.teacher_cache import TeacherCache
from alignkd.errors import AlignKDError


def _param_groups(module: AlignKDModule, optim) -> list[dict]:
    """The paper's recipe: one LR for the LLM, its own for the projector (and the adapters)."""
    groups = {"llm": [], "projector": [], "adapters": []}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("student.mm_projector"):
            groups["projector"].append(p)
        elif name.startswith(("head_adapter", "vision_adapter")):
            groups["adapters"].append(p)
        else:
            groups["llm"].append(p)
    proj_lr = optim.projector_lr or optim.lr
    lrs = {"llm": optim.lr, "projector": proj_lr, "adapters": optim.adapter_lr or proj_lr}
    # adapters get no weight decay: they are plain linear maps between spaces, not a model to regularise
    decay = {"llm": optim.weight_decay, "projector": optim.weight_decay, "adapters": 0.0}
    return [{"params": ps, "lr": lrs[g], "weight_decay": decay[g], "name": g} for g, ps in groups.items() if ps]


def _deepspeed_settings(accelerator, cfg: TrainConfig) -> bool:
    """Under DeepSpeed the engine accumulates, clips and steps: hand it the run's micro-batch, accumulation and
    clipping (its config's "auto" values would need a prepared data loader). True when DeepSpeed runs."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return False
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    total = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    ours = {"train_micro_batch_size_per_gpu": (cfg.batch_size, "batch_size"),
            "gradient_accumulation_steps": (cfg.grad_accum, "grad_accum"),
            "gradient_clipping": (cfg.optim.max_grad_norm, "optim.max_grad_norm"),
            "train_batch_size": (total, f"batch_size x grad_accum x {accelerator.num_processes} processes")}
    for key, (value, name) in ours.items():
        given = ds.get(key, "auto")
        if given not in ("auto", None) and float(given) != float(value):
            raise AlignKDError(f"the DeepSpeed config sets {key}: {given} but the distill config's {name} is {value}; "
                               f"set {key} to \"auto\" in the DeepSpeed config (the distill config decides), or change {name}")
        ds[key] = value
    return True


def _epoch_indices(n: int, seed: int, epoch: int) -> list[int]:
    """The same shuffled order on every process and after every resume."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _gather_skipped(collator) -> dict:
    """Every process saw its own share of the records: the summary counts the skipped ones of all of them."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return {}
    from accelerate.utils import gather_object

    return dict(pair for part in gather_object([collator.seen]) for pair in part.items())


def _fresh_accelerate_state() -> None:
    """accelerate keeps one AcceleratorState per process and refuses a second Accelerator with other settings
    (e.g. bf16 after fp32). Between runs in one single-process program (the quickstart trains three models,
    tests train many) start from a clean state; under a distributed launch the state belongs to the launcher."""
    import torch.distributed as dist
    from accelerate.state import AcceleratorState, GradientState

    if not (dist.is_available() and dist.is_initialized()):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _start_run_folder(accelerator, out_dir: Path, resume_from: Path | None, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder, fail early on an unwritable one, drop interrupted saves."""
    removed = prepare_output_dir(out_dir, resume_from is not None, overwrite, accelerator.is_main_process)
    if removed:
        accelerator.print(f"--overwrite: removed the earlier run's {', '.join(removed)} from {out_dir}")
    if resume_from is not None and accelerator.is_main_process:
        for path in remove_incomplete(out_dir):
            accelerator.print(f"ignored and removed {path}: an interrupted save (incomplete checkpoint)")
    accelerator.wait_for_everyone()


class TrainingInterrupted(AlignKDError):
    """Ctrl-C during training, after saving; `kept` says what was saved (callers that resume on their own, like the
    quickstart, word the way to continue themselves)."""

    def __init__(self, message: str, kept: str):
        super().__init__(message)
        self.kept = kept


def _interrupted(save, step: int, out_dir: Path, last_saved: Path | None) -> AlignKDError:
    """Ctrl-C: keep the work by saving at the last completed optimizer step, then say how to continue."""
    here = out_dir / CHECKPOINTS / f"step-{step}"
    try:
        saved = here if last_saved == here else save()
    except KeyboardInterrupt:
        kept = f"the last complete checkpoint is {last_saved or 'none'}"
        return TrainingInterrupted(f"interrupted again while saving step {step}; {kept}, continue from it with the same command "
                                   "plus --resume", kept)
    # --resume picks the latest checkpoint in output_dir, which is now this one (pruning never removes it)
    return TrainingInterrupted(f"interrupted at step {step}; saved {saved}; continue with the same command plus --resume",
                               f"saved {saved}")


def run(cfg: TrainConfig, resume=False, progress: bool = True, overwrite: bool = False,
        auxiliary: Callable[[torch.nn.Module, int], torch.Tensor] | None = None) -> Path:
    """Train; returns the output folder (final student in official format at OUT/student).

    `resume`: True (the latest checkpoint in output_dir) or a checkpoint path; `overwrite`: replace the earlier
    run in output_dir. Without either, a non-empty output_dir is refused. `auxiliary(student, step)`: a loss added
    to every micro-batch's (logged as `aux`; Python only, e.g. the quickstart's grounding losses kept through the
    toy teacher's fine-tuning). It should draw its examples from `step`, so a resumed run draws the same."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from alignkd.data.dataset import Collator, LlavaDataset

    out_dir = Path(cfg.output_dir)
    check_flags(resume, overwrite)
    resume_from = resolve_resume(resume, out_dir)
    check_adapters_from(cfg.adapters_from)
    _fresh_accelerate_state()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision.value,
                              log_with="tensorboard" if cfg.tensorboard else None, project_dir=str(out_dir))
    _start_run_folder(accelerator, out_dir, resume_from, overwrite)
    deepspeed = _deepspeed_settings(accelerator, cfg)
    set_seed(cfg.seed)

    # ---- setup: models, data, optimizer -----------------------------------------------------------
    student, tokenizer = load_spec(cfg.student)
    student.vision_tower.requires_grad_(not cfg.freeze_vision_tower)
    teacher = cache = None
    if cfg.teacher_cache:
        cache = TeacherCache(cfg.teacher_cache)  # the teacher is never loaded: its outputs come from the cache
    elif cfg.distill:
        teacher, t_tok = load_spec(cfg.teacher, train=False, dtype=cfg.teacher_dtype, device=accelerator.device)
        check_pair(teacher, t_tok, student, tokenizer)
        teacher.requires_grad_(False).to(accelerator.device, getattr(torch, cfg.teacher_dtype))
    if cfg.gradient_checkpointing:
        student.llm.activation_checkpointing_enable()
    if cache is not None and cfg.loss.attn_extra:
        raise AlignKDError(f"loss.attn_extra needs attention from other layers than layer 0, which teacher_cache {cfg.teacher_cache} "
                           "does not hold; drop teacher_cache to run the teacher online, or drop loss.attn_extra")
    t_shape = ((cache.num_heads, cache.hidden_size, None) if cache else
               (teacher.config.num_heads, teacher.config.hidden_size, teacher.config.llm.num_hidden_layers) if teacher else (None, None, None))
    module = AlignKDModule(student, cfg.loss, *t_shape)
    if cfg.adapters_from:
        load_adapters(module, Path(cfg.adapters_from))
    dataset = LlavaDataset(cfg.data.train, cfg.data.image_root, tokenizer, student.config.image, cfg.data.template,
                           cfg.data.max_length, student.config.num_image_tokens, cfg.data.strict)
    if cache:
        cache.check(cfg, dataset, student.config.llm.vocab_size)
    collator = Collator(tokenizer.pad_id)
    batches_per_epoch = math.ceil(len(dataset) / cfg.batch_size) // accelerator.num_processes
    steps_per_epoch = batches_per_epoch // cfg.grad_accum  # a trailing partial accumulation is dropped
    if steps_per_epoch < 1:
        raise AlignKDError(f"{cfg.data.train} has {len(dataset)} records: too few for one optimizer step of "
                           f"batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {accelerator.num_processes} processes")
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(_param_groups(module, cfg.optim), betas=tuple(cfg.optim.betas))
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.optim.warmup_ratio * total_steps), total_steps)
    module, optimizer = accelerator.prepare(module, optimizer)
    # the scheduler is stepped by us once per optimizer step (accelerate's wrapper would step it per process),
    # and saved by us as JSON (accelerate's register_for_checkpointing would pickle it)

    check_space_before_training(accelerator, module, optimizer, out_dir, checkpoints=bool(cfg.save_every))

    step = 0
    if resume_from is not None:
        step = load_run_checkpoint(accelerator, resume_from, scheduler)["step"]
        accelerator.print(f"resumed from {resume_from} at step {step}")
    if accelerator.is_main_process:
        truncate_history(out_dir, step)
        (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    if cfg.tensorboard:
        accelerator.init_trackers("alignkd", config=_flat(to_dict(cfg)))

    # ---- train --------------------------------------------------------------------------------------
    shown = [n for n in TERMS if getattr(cfg.loss.weights, n) > 0 and (cfg.distill or n == "ce")]
    terms_logged = TERMS + (("aux",) if auxiliary is not None else ())
    shown += ["aux"] if auxiliary is not None else []
    bar = tqdm(total=total_steps, initial=step, disable=not (progress and accelerator.is_local_main_process),
               desc="distill" if cfg.distill else "train", dynamic_ncols=True)
    last_saved = resume_from
    history = History(out_dir, accelerator.is_main_process)
    save = lambda: save_run_checkpoint(accelerator, module, optimizer, scheduler, tokenizer, out_dir,  # noqa: E731
                                       {"step": step, "epoch": step // steps_per_epoch}, cfg.keep_checkpoints)
    t_start = time.perf_counter()
    try:
        while step < total_steps:
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=_epoch_indices(len(dataset), cfg.seed, epoch),
                                collate_fn=collator, num_workers=cfg.data.num_workers)
            loader = accelerator.prepare_data_loader(loader)
            skip = done_in_epoch * cfg.grad_accum
            if skip:
                loader = accelerator.skip_first_batches(loader, skip)
            sums = torch.zeros(len(terms_logged) + 2, device=accelerator.device)
            for micro, batch in enumerate(loader, start=skip):
                if micro >= steps_per_epoch * cfg.grad_accum or step >= total_steps:
                    break
                collator.record(batch["skipped"])  # collation may have run in a worker process
                last = (micro + 1) % cfg.grad_accum == 0
                if deepspeed:  # the engine steps at its accumulation boundary, which accelerate sets from this flag
                    accelerator.gradient_state._set_sync_gradients(last)
                with nullcontext() if last else accelerator.no_sync(module):
                    t_out = (None if batch["input_ids"] is None else cache.teacher_outputs(batch, accelerator.device) if cache
                             else run_teacher(teacher, batch, cfg.loss) if teacher is not None else None)
                    terms = module(batch, t_out)
                    if auxiliary is not None:
                        terms["aux"] = auxiliary(accelerator.unwrap_model(module).student, step)
                        terms["loss"] = terms["loss"] + terms["aux"]
                    # DeepSpeed divides by its gradient_accumulation_steps itself
                    accelerator.backward(terms["loss"] / (1 if deepspeed else cfg.grad_accum))
                values = torch.stack([terms["loss"].detach().float()] + [terms.get(n, torch.zeros(())).detach().float().reshape(()) for n in terms_logged])
                finite = torch.isfinite(values).all().float()
                sums += torch.cat([values, finite.reshape(1)])  # a NaN stays NaN: the error below shows it
                if not last:
                    continue
                sums = accelerator.reduce(sums, reduction="mean") / cfg.grad_accum
                if sums[-1] < 1.0:
                    raise AlignKDError(
                        f"non-finite loss at step {step + 1}: " + ", ".join(f"{n}={float(v):.4g}" for n, v in zip(("loss",) + terms_logged, sums)) +
                        f"; last good checkpoint: {last_saved or 'none'}; lower the learning rate or use bf16 instead of fp16, then --resume"
                    )
                accelerator.clip_grad_norm_(module.parameters(), cfg.optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                logged = {n: float(v) for n, v in zip(("loss",) + terms_logged, sums[:-1])}
                logged["lr"] = scheduler.get_last_lr()[0]
                history.append({"step": step, **logged})
                if step % cfg.log_every == 0:
                    accelerator.log(logged, step=step)
                    bar.set_postfix({k: f"{logged[k]:.3g}" for k in shown})
                bar.update(1)
                sums = torch.zeros_like(sums)
                if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                    last_saved = save()
    except KeyboardInterrupt:
        raise _interrupted(save, step, out_dir, last_saved) from None
    finally:
        bar.close()
        history.close()

    # ---- save -------------------------------------------------------------------------------------
    # The skipped-record gather comes before the save, not last: its gloo work holds Python tensors and is freed by
    # a gloo worker thread, which needs the GIL. Were it the last collective, the worker could still be freeing
    # it when run() returns and the main thread, holding the GIL, frees the DDP reducer and joins that worker:
    # both ranks deadlocked after everything was written (seen under load in the 2-process test).
    collator.merge(_gather_skipped(collator))
    accelerator.wait_for_everyone()
    save_final(accelerator, module, tokenizer, out_dir)
    if accelerator.is_main_process:
        summary = {"steps": step, "seconds": time.perf_counter() - t_start, "skipped_records": dict(collator.skipped),
                   "skipped_summary": collator.summary(), "final": history.last}
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        accelerator.print(f"{collator.summary()}; student written to {out_dir / 'student'}")
    accelerator.end_training()
    if accelerator.num_processes > 1:
        # torch 2.13 with gloo: freeing the DDP reducer as run() returns can deadlock. Its destructor holds the GIL
        # and joins a gloo worker thread that is still freeing an earlier collective's Python-backed tensors and
        # needs the GIL (py-spy, both ranks, after everything was written: ~Reducer -> ~ProcessGroupGloo joining,
        # the worker in ~AsyncBroadcastWork waiting for the GIL). Moving one collective earlier (the skipped-record
        # gather) made it rarer, not impossible. So the reducer is kept, and the CLI ends a multi-process run with
        # os._exit once its output is written (alignkd.cli._train): nothing frees it.
        _KEPT_FOR_EXIT.append(module)
    return out_dir


_KEPT_FOR_EXIT: list = []  # DDP modules of finished multi-process runs: see the end of run()


def is_multi_process() -> bool:
    """Whether this process is one rank of several (torch.distributed initialised by accelerate launch)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
