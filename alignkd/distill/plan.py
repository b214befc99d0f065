"""The per-GPU memory plan of a distillation run, from the models' shapes alone (no weights are loaded).

`alignkd distill -c CONFIG --plan --gpus N --gpu-mem GB` builds teacher and student on the meta device from
their config.json (or a named preset when the checkpoint is not there) and adds up, per GPU and for each
strategy (DDP; FSDP with the teacher replicated or sharded; DeepSpeed ZeRO-2 and ZeRO-3): weights, gradients,
AdamW state, the frozen teacher, and the activations of one micro-batch at the config's longest sequence
(`data.max_length` embedded tokens, image tokens included), with and without gradient checkpointing.

The activation figures are the tensors autograd saves for backward, counted op by op for transformers'
LlamaDecoderLayer with SDPA (see `layer_bytes`), plus the logits and KD terms (fp32 softmaxes over the
vocabulary) and the layer-0 attention capture. `tests/distill/test_plan.py` checks them against the peak
measured in a real training step on tiny models (within 15%); `benchmarks/distill_real_shape.py` prints
the plan next to the measured GPU peak. The totals are deliberately a sum (gradients and activations are
counted as if alive together), so a plan that fits leaves a margin; 1 GiB per GPU is kept for the CUDA
context and allocator slack.

    alignkd distill -c alignkd/configs/paper_7b_to_1_7b_stage1.yaml --plan --gpus 8 --gpu-mem 40
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignkd.errors import AlignKDError

GIB = 2**30
RESERVE = 1 * GIB  # CUDA context + allocator slack per GPU
ZERO_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size (elements)
STRATEGIES = {
    "ddp": "DDP: everything replicated",
    "fsdp": "FSDP full shard of the student, teacher replicated",
    "fsdp_shard_teacher": "FSDP full shard of the student and of the teacher",
    "zero2": "DeepSpeed ZeRO-2: gradients and optimizer sharded, teacher replicated",
    "zero3": "DeepSpeed ZeRO-3: student fully sharded, teacher replicated",
}
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Shapes:
    """What the plan needs of one model, read on the meta device."""

    params: int  # every weight
    vision_params: int  # the CLIP tower (frozen unless the config trains it)
    layer_params: int  # one decoder layer: the unit FSDP / ZeRO-3 gathers
    hidden: int
    ffn: int
    layers: int
    heads: int
    vocab: int
    image_tokens: int
    patches: int  # CLIP patch tokens per image
    vision_hidden: int


def shapes(config) -> Shapes:
    import torch

    from alignkd.models.mobilevlm import MobileVLM

    with torch.device("meta"):
        model = MobileVLM(config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    v = config.vision
    return Shapes(count(model), count(model.vision_tower), count(model.llm.model.layers[0]), config.llm.hidden_size,
                  config.llm.intermediate_size, config.llm.num_hidden_layers, config.llm.num_attention_heads,
                  config.llm.vocab_size, config.num_image_tokens, (v.image_size // v.patch_size) ** 2, v.hidden_size)


def model_config(spec, role: str, preset: str | None):
    """The MobileVLMConfig of a config's model: its config.json, else `preset` (a --ROLE-preset), else its own preset."""
    from alignkd.models.checkpoint import load_config
    from alignkd.models.mobilevlm import PRESETS, get_preset

    if preset is not None:
        return get_preset(preset)
    if spec.path is not None:
        if (Path(spec.path) / "config.json").is_file():
            return load_config(spec.path)
        raise AlignKDError(f"{role} checkpoint {spec.path} has no config.json to plan from; put the checkpoint's config.json "
                           f"there, or pass --{role}-preset NAME (one of {', '.join(PRESETS)})")
    config = get_preset(spec.preset)
    if (Path(spec.tokenizer) / "tokenizer.model").is_file():  # the run sizes the vocabulary to the tokenizer
        from alignkd.data.tokenizer import Tokenizer

        config.llm.vocab_size = Tokenizer.from_folder(spec.tokenizer).vocab_size
    return config


def sequence_length(max_length) -> int:
    from alignkd.data.dataset import LENGTH_PRESETS

    value = LENGTH_PRESETS.get(max_length, max_length)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AlignKDError(f"data.max_length {max_length!r} is neither a number nor one of {', '.join(LENGTH_PRESETS)}") from None


# ---- activations: the tensors autograd keeps for backward -----------------------------------------------


def _norm_bytes(tokens: int, hidden: int, resid: int) -> int:
    """RMSNorm: its input (the residual stream) and the fp32 normalised copy; a bf16 stream adds the fp32 upcast
    and the cast back."""
    return tokens * hidden * (resid + 4 + (0 if resid == 4 else 4 + resid))


def layer_bytes(s: Shapes, batch: int, seq: int, act: int, resid: int) -> int:
    """One LlamaDecoderLayer (SDPA) in training: two norms; the linear inputs and SDPA's q, k, v, output and its
    contiguous copy (7 x hidden, compute dtype); gate, up, SiLU(gate), their product (4 x ffn); SDPA's fp32
    logsumexp. `act`: bytes of the compute dtype (2 under bf16 autocast); `resid`: of the residual stream."""
    tokens = batch * seq
    return 2 * _norm_bytes(tokens, s.hidden, resid) + act * tokens * (7 * s.hidden + 4 * s.ffn) + 4 * batch * s.heads * seq


def activation_bytes(s: Shapes, batch: int, seq: int, act: int, resid: int, checkpointing: bool) -> int:
    """The student's saved activations, logits excluded: decoder layers, final norm, projector.

    With checkpointing each layer keeps only its input; backward re-runs one layer at a time (`step_phases`)."""
    tokens = batch * seq
    decoder = s.layers * (resid * tokens * s.hidden if checkpointing else layer_bytes(s, batch, seq, act, resid))
    final_norm = _norm_bytes(tokens, s.hidden, resid) + act * tokens * s.hidden  # + the lm_head's input
    # LDPv2 on one image per sample: CLIP features in, MLP hidden x 3 (linear, GELU, linear), pooled grid x 3
    projector = batch * (s.patches * (4 * s.vision_hidden + 3 * act * s.hidden) + 3 * 4 * s.image_tokens * s.hidden)
    return decoder + final_norm + projector


# Layer-0 capture (attention.py), per element of heads x text rows x all keys, measured op by op on CPU (the
# softmax runs in fp32 whatever the model's dtype): the teacher's no-grad pass peaks at ~11 bytes (scores, masked
# scores, probabilities), the student keeps 5 (fp32 probabilities + the bool mask) and its backward adds 9.
CAPTURE_TEACHER, CAPTURE_SAVED, CAPTURE_BACKWARD = 11, 5, 9
# Reverse KL (losses.py) per element of response rows x vocabulary: fp32 log p, p, the log-ratio and a bool mask are
# kept (13 bytes); its backward adds two fp32 copies. CE keeps its fp32 log-softmax; its backward adds two.
KD_SAVED, KD_BACKWARD, CE_SAVED, CE_BACKWARD = 13, 8, 4, 8
# The forward of the reverse KL holds, besides both models' selected logits, both fp32 log-softmaxes, p, the
# bool mask, the difference, its zeros and the where() at once (6 x 4 + 1 bytes).
KD_FORWARD = 25


def step_phases(student: Shapes, teacher: Shapes | None, batch: int, seq: int, act: int, resid: int, t_bytes: int,
                checkpointing: bool, autocast_weights: int = 0, kd: bool = True, capture: bool = True) -> dict:
    """Bytes alive at the moments one training step peaks (weights, gradients and optimizer state apart); `peak` is
    the largest. The student's logits are not among the saved tensors: only the losses' fp32 softmaxes are.

    teacher_forward: the teacher's logits and its layer-0 capture's transient softmax; capture_backward: everything
    the student saved plus the capture's backward; loss_backward: the saved tensors plus the CE / KD backward;
    layer_backward: the decoder's saved tensors plus one layer's backward (and its re-run under checkpointing)."""
    tokens, text = batch * seq, seq - student.image_tokens
    tv, nv = tokens * student.vocab, batch * text * student.vocab
    # autocast_weights: the bf16 copies autocast makes of fp32 weights, kept for backward by every linear
    parts = {"activations": activation_bytes(student, batch, seq, act, resid, checkpointing) + autocast_weights,
             "logits": CE_SAVED * tv, "capture": 0, "teacher_outputs": 0}
    phases = {}
    if teacher is not None:  # `kd` / `capture` False: that term is switched off (its weight 0) and never built
        hrl_s, hrl_t = (batch * m.heads * text * seq * capture for m in (student, teacher))
        nv *= kd
        parts["logits"] += KD_SAVED * nv
        parts["capture"] = CAPTURE_SAVED * hrl_s
        parts["teacher_outputs"] = (t_bytes * tv + 4 * batch * teacher.heads * text * student.image_tokens * capture
                                    + batch * teacher.image_tokens * teacher.hidden * t_bytes)
        phases["teacher_forward"] = t_bytes * tv + CAPTURE_TEACHER * hrl_t + 2 * batch * seq * teacher.hidden * t_bytes
    saved = sum(parts.values())
    # the CE's forward: the logits, their fp32 copy (under bf16) and the log-softmax at once
    before_loss = parts["activations"] + parts["teacher_outputs"]
    phases["loss_forward"] = before_loss + (act + (4 if act != 4 else 0) + CE_SAVED) * tv
    if teacher is not None:  # the student's logits are alive until the KD term is built
        phases["kd_forward"] = before_loss + (CE_SAVED + act) * tv + (act + t_bytes + KD_FORWARD) * nv
        phases["capture_backward"] = saved + CAPTURE_BACKWARD * hrl_s
    if teacher is not None:  # the KD term's backward runs before the CE's (it was built later)
        phases["kd_backward"] = saved - parts["capture"] + KD_BACKWARD * nv
        saved_ce = saved - parts["capture"] - KD_SAVED * nv + act * tv  # + KD's gradient waiting on the logits
    else:
        saved_ce = saved
    phases["ce_backward"] = saved_ce + CE_BACKWARD * tv
    # a layer's backward: its gradients of the widest activations, and with checkpointing the layer re-run first
    rerun = layer_bytes(student, batch, seq, act, resid) if checkpointing else 0
    phases["layer_backward"] = (parts["activations"] + parts["teacher_outputs"] + rerun
                                + act * tokens * (2 * student.ffn + 2 * student.hidden))
    peak = max(phases.values())
    return {**parts, "backward_extra": max(0, peak - saved), "phases": phases, "peak": peak}


# ---- the plan: static state per strategy + the step's peak ---------------------------------------------


@dataclass
class Pair:
    """The run's shapes and sizes, everything the strategies need."""

    student: Shapes
    teacher: Shapes | None
    adapters: int  # KD adapter parameters (trained with the student)
    trainable: int  # student + adapters, what AdamW owns
    seq: int
    batch: int
    weight_bytes: int  # the student's stored dtype (ModelSpec.dtype)
    teacher_bytes: int
    mixed: bool  # mixed_precision bf16/fp16


def _adapter_params(student: Shapes, teacher: Shapes | None) -> int:
    # HeadAdapter (teacher heads -> student heads) and VisionAdapter (teacher width -> student width), with biases
    if teacher is None:
        return 0
    return (teacher.heads + 1) * student.heads + (teacher.hidden + 1) * student.hidden


def build_pair(cfg, teacher_preset: str | None = None, student_preset: str | None = None) -> Pair:
    teacher = shapes(model_config(cfg.teacher, "teacher", teacher_preset)) if cfg.distill else None
    student = shapes(model_config(cfg.student, "student", student_preset))
    adapters = _adapter_params(student, teacher)
    trainable = student.params - (student.vision_params if cfg.freeze_vision_tower else 0) + adapters
    return Pair(student, teacher, adapters, trainable, sequence_length(cfg.data.max_length), cfg.batch_size,
                _BYTES[cfg.student.dtype], _BYTES[cfg.teacher_dtype], cfg.mixed_precision.value != "no")


def _static(p: Pair, strategy: str, n: int) -> dict:
    """Weights, gradients, optimizer state and teacher per GPU; `resid`/`act`/`autocast` say how the step runs."""
    s, w, t = p.student, p.weight_bytes, p.teacher
    act = 2 if p.mixed else w
    weights_all = s.params + p.adapters
    root = weights_all - s.layers * s.layer_params  # embeddings, lm_head, projector, tower: FSDP's root unit
    teacher_full = t.params * p.teacher_bytes if t else 0
    teacher_root = (t.params - t.layers * t.layer_params) * p.teacher_bytes if t else 0
    if strategy == "ddp":  # grads + DDP's reducer buckets (a second copy unless gradient_as_bucket_view)
        out = {"weights": weights_all * w, "grads": 2 * p.trainable * w, "optimizer": 2 * w * p.trainable,
               "teacher": teacher_full, "resid": w, "autocast": 2 * p.trainable if p.mixed and w == 4 else 0}
    elif strategy.startswith("fsdp"):  # shards + the gathered root and two layers (current + prefetched)
        gathered = (root + 2 * s.layer_params) * act
        out = {"weights": weights_all * w / n + gathered, "grads": p.trainable * w / n + (root + s.layer_params) * act,
               "optimizer": 2 * w * p.trainable / n, "teacher": teacher_full, "resid": act, "autocast": 0}
        if strategy == "fsdp_shard_teacher" and t:
            out["teacher"] = teacher_full / n + teacher_root + 2 * t.layer_params * p.teacher_bytes
    else:  # DeepSpeed: bf16 model weights under mixed precision with an fp32 master copy in the optimizer
        model = 2 if p.mixed else w
        master = 4 if p.mixed else 0
        buckets = 2 * min(p.trainable, ZERO_BUCKET) * model  # reduce + allgather buckets
        out = {"grads": model * p.trainable / n + buckets, "optimizer": (master + 2 * 4) * p.trainable / n,
               "teacher": teacher_full, "resid": model, "autocast": 0}
        if strategy == "zero2":
            out["weights"] = weights_all * model
        else:  # ZeRO-3 gathers one layer at a time (+ prefetch) and the widest other module (embeddings / lm_head)
            out["weights"] = weights_all * model / n + (2 * s.layer_params + s.vocab * s.hidden) * model
    return out


def plan(cfg, gpus: int = 1, gpu_mem_gb: float | None = None, teacher_preset: str | None = None,
         student_preset: str | None = None) -> dict:
    """The per-GPU memory of every strategy, with and without gradient checkpointing (see the module docstring)."""
    if gpus < 1:
        raise AlignKDError(f"--gpus must be at least 1, got {gpus}")
    if gpu_mem_gb is not None and not gpu_mem_gb > 0:
        raise AlignKDError(f"--gpu-mem is the memory of one GPU in GiB and must be positive, got {gpu_mem_gb}")
    p = build_pair(cfg, teacher_preset, student_preset)
    act = 2 if p.mixed else p.weight_bytes
    rows = {}
    for name in STRATEGIES:
        if name == "fsdp_shard_teacher" and p.teacher is None:
            continue
        static = _static(p, name, gpus)
        entry = {k: static[k] for k in ("weights", "grads", "optimizer", "teacher")}
        fixed = sum(entry.values())
        # foreach AdamW takes the square root of every second moment at once: one fp32 copy of (its shard of) them
        opt_step = 4 * p.trainable / (1 if name == "ddp" else gpus)
        for ckpt in (True, False):
            w = cfg.loss.weights
            step = step_phases(p.student, p.teacher, p.batch, p.seq, act, static["resid"], p.teacher_bytes, ckpt,
                               static["autocast"], kd=w.kd > 0, capture=w.attn > 0 or w.vision_focus > 0)
            step["phases"]["optimizer_step"] = opt_step
            step["backward_extra"] += max(0, opt_step - step["peak"])
            step["peak"] = max(step["peak"], opt_step)
            total = fixed + step["peak"] + RESERVE
            key = "checkpointing" if ckpt else "no_checkpointing"
            entry[key] = {**{k: step[k] for k in ("activations", "logits", "capture", "teacher_outputs", "backward_extra")},
                          "phases": step["phases"], "step_peak": step["peak"], "total": total,
                          "fits": None if gpu_mem_gb is None else total <= gpu_mem_gb * GIB}
        rows[name] = entry
    return {"gpus": gpus, "gpu_mem_gib": gpu_mem_gb, "seq": p.seq, "batch": p.batch, "reserve": RESERVE,
            "gradient_checkpointing": cfg.gradient_checkpointing, "mixed_precision": cfg.mixed_precision.value,
            "teacher_dtype": cfg.teacher_dtype, "student_params": p.student.params, "trainable_params": p.trainable,
            "teacher_params": p.teacher.params if p.teacher else 0, "strategies": rows}


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _key(result: dict) -> str:
    return "checkpointing" if result["gradient_checkpointing"] else "no_checkpointing"


def check_strategy(result: dict, strategy: str) -> None:
    """Refuse a strategy the plan says cannot fit: by how much, and what would."""
    if strategy not in result["strategies"]:
        raise AlignKDError(f"--strategy {strategy!r} is not one of {', '.join(result['strategies'])}")
    if result["gpu_mem_gib"] is None:
        raise AlignKDError(f"--strategy {strategy} is checked against the GPU's memory: pass --gpu-mem GB as well")
    limit, key, n = result["gpu_mem_gib"] * GIB, _key(result), result["gpus"]
    need = result["strategies"][strategy][key]["total"]
    if need <= limit:
        return
    fitting = [f"{name} ({_gib(r[key]['total'])})" for name, r in result["strategies"].items() if r[key]["fits"]]
    other = "no_checkpointing" if key == "checkpointing" else "checkpointing"
    if fitting:
        hint = f"these fit: {', '.join(fitting)}"
    elif result["strategies"][strategy][other]["fits"]:
        hint = f"it fits with gradient_checkpointing={'false' if key == 'checkpointing' else 'true'}"
    else:
        best = min(result["strategies"].items(), key=lambda kv: kv[1][key]["total"])
        hint = (f"none fits on {n} GPUs of {result['gpu_mem_gib']:g} GiB; the smallest is {best[0]} at "
                f"{_gib(best[1][key]['total'])}: use more GPUs or GPUs with more memory")
    raise AlignKDError(f"--strategy {strategy} needs {_gib(need)} per GPU on {n} GPUs, {_gib(need - limit)} more than "
                       f"--gpu-mem {result['gpu_mem_gib']:g}; {hint}")


ROWS = (("weights", "student weights"), ("grads", "gradients"), ("optimizer", "optimizer (AdamW, master)"),
        ("teacher", "teacher weights"))
STEP_ROWS = (("activations", "activations"), ("logits", "CE / KD softmaxes"), ("capture", "layer-0 capture"),
             ("teacher_outputs", "teacher outputs"), ("backward_extra", "peak transient (backward / AdamW)"))


def format_plan(result: dict) -> str:
    """The plan as a rich table (plain text): one column per strategy, GiB per GPU."""
    import io

    from rich.console import Console
    from rich.table import Table

    key = _key(result)
    ckpt = "on" if key == "checkpointing" else "off"
    table = Table(title=f"per-GPU memory in GiB, {result['gpus']} GPU(s), sequence {result['seq']} x batch {result['batch']}; "
                        f"step rows with the config's gradient checkpointing ({ckpt})")
    table.add_column("")
    names = list(result["strategies"])
    for name in names:
        table.add_column(name, justify="right")
    cell = lambda v: f"{v / GIB:.2f}"  # noqa: E731
    for k, label in ROWS:
        table.add_row(label, *[cell(result["strategies"][n][k]) for n in names])
    for k, label in STEP_ROWS:
        table.add_row(label, *[cell(result["strategies"][n][key][k]) for n in names])
    table.add_row("reserve (CUDA context)", *[cell(result["reserve"]) for _ in names])
    for k, label in (("checkpointing", "total, checkpointing on"), ("no_checkpointing", "total, checkpointing off")):
        table.add_row(label, *[cell(result["strategies"][n][k]["total"]) for n in names])
    if result["gpu_mem_gib"] is not None:
        mark = lambda r: ("yes" if r["checkpointing"]["fits"] else "no") + " / " + ("yes" if r["no_checkpointing"]["fits"] else "no")  # noqa: E731
        table.add_row(f"fits {result['gpu_mem_gib']:g} GiB (ckpt on / off)", *[mark(result["strategies"][n]) for n in names])
    buf = io.StringIO()
    Console(file=buf, width=160, force_terminal=False, color_system=None).print(table)
    notes = [f"student {result['student_params'] / 1e9:.2f}B parameters ({result['trainable_params'] / 1e9:.2f}B trained), "
             f"teacher {result['teacher_params'] / 1e9:.2f}B in {result['teacher_dtype']}; mixed precision "
             f"{result['mixed_precision']}; this config trains with gradient checkpointing {ckpt}",
             "strategies: " + "; ".join(f"{n} = {STRATEGIES[n]}" for n in names)]
    return buf.getvalue() + "\n".join(notes) + "\n"
