"""The `alignkd` command line: a thin typer app, one entry function per stage.

Nothing heavy is imported at module level, so `alignkd --help` answers at once; each command imports its
stage when it runs. Errors a user can cause (`AlignKDError`) print one line and exit with status 2.

    alignkd --help
    alignkd generate --model CHECKPOINT --image photo.jpg --prompt "What is in the picture?"
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from alignkd.errors import AlignKDError

HELP = """alignkd: take a MobileVLM from a large teacher to a fast, small model on a phone.

Stages (the user's path, top to bottom):

  1. distill   Align-KD: distil a MobileVLM V2 teacher (7B) into a student (1.7B)
  2. export    quantize and lower the student to ExecuTorch / Core ML / ONNX bundles
  3. profile / eval   latency and memory on host and phones; GQA, SQA-IMG, TextVQA, MME, MMBench, POPE

Commands available in this version are listed below; stages not listed are not built yet.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@app.callback()
def _root() -> None:
    """Keeps `alignkd` a group of commands even while it has only one."""


def _fail(err: AlignKDError) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=2)


@app.command()
def generate(
    model: Path = typer.Option(..., "--model", help="MobileVLM checkpoint folder (official format)."),
    prompt: str = typer.Option(..., "--prompt", help="The question. `<image>\\n` is put in front when an image is given, as the official scripts do."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image file (PNG/JPEG)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1),
    template: str = typer.Option("v1", "--template", help="Conversation template: v1 (Vicuna) or plain."),
    raw_prompt: bool = typer.Option(False, "--raw-prompt", help="Use --prompt verbatim as the whole prompt (no template); it must contain <image> when --image is given."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (the official setting)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed"),
    dtype: DType = typer.Option(DType.float32, "--dtype", help="Weights and compute dtype."),
    vision_tower: Optional[Path] = typer.Option(None, "--vision-tower", help="Folder with the CLIP config.json and preprocessor_config.json, when the checkpoint has no vision_tower/ folder and does not use openai/clip-vit-large-patch14-336."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (text, output_ids = new token ids, timings, ...)."),
    stream: bool = typer.Option(False, "--stream", help="Print tokens as they are generated."),
    backend: str = typer.Option("python", "--backend", help="python, or native: run an ExecuTorch bundle with the C++ alignkd-runner (`alignkd runtime build`)."),
) -> None:
    """Answer a question about an image with a MobileVLM checkpoint (greedy by default, as the official code)."""
    if backend != "python":
        return _generate_native(backend, model, prompt, image, max_new_tokens, raw_prompt, temperature, top_p, seed, as_json,
                                template)
    try:
        from alignkd.runtime.run import generate_from_checkpoint

        result = generate_from_checkpoint(
            model, prompt, image, max_new_tokens=max_new_tokens, template=template, raw_prompt=raw_prompt,
            temperature=temperature, top_p=top_p, seed=seed, dtype=dtype.value, vision_tower=vision_tower,
            stream=(lambda text: print(text, end="", flush=True)) if stream and not as_json else None,
        )
    except AlignKDError as err:
        _fail(err)
    from alignkd.runtime.gguf_backend import PYTORCH_VISION_KIND, PYTORCH_VISION_NOTE

    if result.kind == PYTORCH_VISION_KIND and not as_json:  # --json carries it as "kind"
        typer.echo(f"note: {PYTORCH_VISION_NOTE}", err=True)
    if as_json:
        print(json.dumps(result.to_dict()))
    elif stream:
        print()
    else:
        print(result.text)


def _generate_native(backend, model, prompt, image, max_new_tokens, raw_prompt, temperature, top_p, seed, as_json,
                     template) -> None:
    try:
        if backend != "native":
            raise AlignKDError(f"unknown backend {backend!r}; choose python or native")
        if top_p is not None:
            raise AlignKDError("--top-p is not supported with --backend native; drop it or use --backend python")
        from alignkd.runtime.native import generate_native

        result = generate_native(model, prompt, image, max_new_tokens=max_new_tokens, raw_prompt=raw_prompt,
                                 temperature=temperature, seed=seed, template=template)
    except AlignKDError as err:
        _fail(err)
    print(json.dumps(result) if as_json else result["text"])


def _train(config: Path, overrides: list[str] | None, resume: bool, resume_from: Path | None, need_teacher: bool,
           strict: bool = False, overwrite: bool = False) -> None:
    overrides = list(overrides or []) + (["data.strict=true"] if strict else [])
    try:
        from alignkd.config import load_config
        from alignkd.distill.config import TrainConfig
        from alignkd.distill.recipe import run

        if resume and resume_from is not None:
            raise AlignKDError(f"--resume and --resume-from exclude each other: --resume continues from the latest checkpoint "
                               f"in output_dir, --resume-from from {resume_from}; pass one of them")
        cfg = load_config(TrainConfig, config, overrides)
        if need_teacher and not cfg.distill:
            raise AlignKDError(f"{config} names no teacher; `alignkd distill` needs `teacher:` (use `alignkd train` for CE-only training)")
        if not need_teacher and cfg.distill:
            raise AlignKDError(f"{config} names a teacher; use `alignkd distill` for Align-KD, or set teacher=null for CE-only training")
        out = run(cfg, resume=resume_from or resume, overwrite=overwrite)
    except AlignKDError as err:
        _fail(err)
    typer.echo(f"done: {out}")
    from alignkd.distill.recipe import is_multi_process

    if is_multi_process():  # skip the teardown that can deadlock in gloo (alignkd.distill.recipe, end of run())
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


CONFIG_OPT = typer.Option(..., "-c", "--config", help="YAML config (shipped presets: alignkd/configs/).")
OVERRIDES_ARG = typer.Argument(None, help="Dotted overrides, e.g. optim.lr=1e-4 max_steps=100 loss.weights.attn=0.")
RESUME_OPT = typer.Option(False, "--resume", help="Continue from the latest checkpoint in output_dir.")
RESUME_FROM_OPT = typer.Option(None, "--resume-from", help="Continue from this checkpoint folder.")
STRICT_OPT = typer.Option(False, "--strict", help="Stop at the first bad training record (naming it) instead of skipping and counting.")
OVERWRITE_OPT = typer.Option(False, "--overwrite", help="Replace the earlier training run in output_dir (only the files a run writes; "
                             "a folder that holds no training run is refused).")


@app.command()
def distill(config: Path = CONFIG_OPT, overrides: Optional[list[str]] = OVERRIDES_ARG, resume: bool = RESUME_OPT,
          resume_from: Optional[Path] = RESUME_FROM_OPT, strict: bool = STRICT_OPT, overwrite: bool = OVERWRITE_OPT,
          plan: bool = typer.Option(False, "--plan", help="Print the per-GPU memory plan of every strategy (no weights loaded, nothing trained)."),
          gpus: int = typer.Option(1, "--gpus", help="--plan: number of GPUs the run shards over."),
          gpu_mem: Optional[float] = typer.Option(None, "--gpu-mem", help="--plan: memory of one GPU in GiB; says which strategies fit."),
          strategy: Optional[str] = typer.Option(None, "--strategy", help="--plan: ddp, fsdp, fsdp_shard_teacher, zero2 or zero3; refused (exit 2) when it cannot fit --gpu-mem."),
          teacher_preset: Optional[str] = typer.Option(None, "--teacher-preset", help="--plan: the teacher's shape from a preset (e.g. mobilevlm_v2_7b) when its checkpoint is not here."),
          student_preset: Optional[str] = typer.Option(None, "--student-preset", help="--plan: the student's shape from a preset (e.g. mobilevlm_v2_1_7b) when its checkpoint is not here."),
          as_json: bool = typer.Option(False, "--json", help="--plan: print the plan as one JSON object.")) -> None:
    """Align-KD: distil the config's teacher into its student (writes OUT/student in the official format)."""
    if plan:
        return _plan(config, overrides, gpus, gpu_mem, strategy, teacher_preset, student_preset, as_json)
    _train(config, overrides, resume, resume_from, need_teacher=True, strict=strict, overwrite=overwrite)


def _plan(config, overrides, gpus, gpu_mem, strategy, teacher_preset, student_preset, as_json) -> None:
    try:
        from alignkd.config import load_config
        from alignkd.distill.config import TrainConfig
        from alignkd.distill.plan import check_strategy, format_plan, plan as make_plan

        result = make_plan(load_config(TrainConfig, config, list(overrides or [])), gpus, gpu_mem, teacher_preset, student_preset)
        text = json.dumps(result) if as_json else format_plan(result)
        if strategy is not None:
            check_strategy(result, strategy)
    except AlignKDError as err:
        _fail(err)
    print(text)


@app.command()
def train(config: Path = CONFIG_OPT, overrides: Optional[list[str]] = OVERRIDES_ARG, resume: bool = RESUME_OPT,
          resume_from: Optional[Path] = RESUME_FROM_OPT, strict: bool = STRICT_OPT, overwrite: bool = OVERWRITE_OPT) -> None:
    """Supervised fine-tuning with the same recipe and no teacher (the CE-only baseline; trains the toy teacher)."""
    _train(config, overrides, resume, resume_from, need_teacher=False, strict=strict, overwrite=overwrite)


@app.command("init-student")
def init_student(
    llm: Path = typer.Option(..., "--llm", help="Plain Hugging Face LLaMA / MobileLLaMA folder: config.json, weights (safetensors or bin, "
                             "sharded too), tokenizer.model (e.g. mtgv/MobileLLaMA-1.4B-Chat)."),
    vision_tower: str = typer.Option(..., "--vision-tower", help="CLIP folder (CLIPVisionModel or CLIPModel, e.g. a download of "
                                     "openai/clip-vit-large-patch14-336), or random:clip-vit-large-patch14-336 / random:tiny-clip "
                                     "for random weights of that shape (benchmarks and tests only)."),
    projector: str = typer.Option("ldpv2", "--projector", help="ldpv2: MobileVLM V2's LDPv2, freshly initialised as the official code does."),
    out: Path = typer.Option(..., "-o", "--out", help="Checkpoint folder to create (official MobileVLM format)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the projector's initialisation."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the checkpoint in -o (a folder holding anything else is refused)."),
) -> None:
    """Build the paper's starting student: a MobileVLM checkpoint from a plain LLaMA, a CLIP tower and a fresh LDPv2."""
    try:
        from alignkd.models.init_student import init_student as build

        summary = build(llm, vision_tower, out, projector=projector, seed=seed, overwrite=overwrite)
    except AlignKDError as err:
        _fail(err)
    random = " (random weights: for benchmarks and tests, not for training)" if summary["random_vision_tower"] else ""
    typer.echo(f"wrote {summary['out']}: {summary['llm']} + {summary['vision_tower']}{random} + fresh {summary['projector']} "
               f"(seed {summary['seed']}), {summary['parameters'] / 1e6:,.1f}M parameters in {summary['dtype']}")


# A command of its own, not `alignkd distill cache-teacher`: `distill` takes free dotted overrides as positional
# arguments, so a sub-command name there would be read as an override (or the group would swallow them).
@app.command("cache-teacher")
def cache_teacher(
    config: Path = CONFIG_OPT,
    out: Path = typer.Option(..., "-o", "--out", help="Cache folder to create, or to continue after an interruption."),
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Logits kept per KD position, plus the remaining mass "
                                        "(default: the whole vocabulary, exact but 192 KB per position at 32000; 64: 388 B)."),
    dtype: DType = typer.Option(DType.float16, "--dtype", help="Attention block and image tokens."),
    samples_per_shard: int = typer.Option(256, "--samples-per-shard", min=1, help="Records per shard (the unit redone after a kill)."),
) -> None:
    """Run the config's teacher once over its training data and cache what Align-KD needs (`teacher_cache: CACHE` trains from it)."""
    try:
        from alignkd.config import load_config
        from alignkd.distill.config import TrainConfig
        from alignkd.distill.teacher_cache import build_cache

        cfg = load_config(TrainConfig, config, list(overrides or []))
        manifest = build_cache(cfg, out, top_k, dtype.value, samples_per_shard)
    except AlignKDError as err:
        _fail(err)
    n = sum(s["samples"] for s in manifest["shards"])
    size = sum(s["bytes"] for s in manifest["shards"])
    typer.echo(f"done: {out} ({n} records, {size / max(n, 1) / 1e6:.3g} MB each, {len(manifest['shards'])} shards, "
               f"top-k {manifest['top_k']}); train from it with teacher_cache={out}")


data_app = typer.Typer(help="Training data and the synthetic world (the embedded default).", no_args_is_help=True)
app.add_typer(data_app, name="data")
class _DefaultRunGroup(typer.core.TyperGroup):
    """`alignkd eval MODEL ...` means `alignkd eval run MODEL ...`; `score` and `compare` stay subcommands."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(cls=_DefaultRunGroup, no_args_is_help=True,
                       help="Evaluate on GQA, SQA-IMG, TextVQA, MME, MMBench, POPE with the papers' protocols: "
                            "`alignkd eval MODEL --bench ... --data DIR`, `alignkd eval score ...`, `alignkd eval compare ...`.")
app.add_typer(eval_app, name="eval")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Folder to write train/, eval/, tokenizer/, scenes/ and world.json into."),
    preset: str = typer.Option("default", "--preset", help="Size preset: default (quickstart size) or tiny (tests)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="World seed (same seed, same bytes)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Side of the drawn images in pixels."),
    train_images: Optional[int] = typer.Option(None, "--train-images", help="Number of training images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what a previous synth wrote in --out."),
) -> None:
    """Write the synthetic world: LLaVA-format training data and the six benchmarks in their own file formats."""
    try:
        from alignkd.data.synth_world import synth_preset, synthesize

        overrides = {k: v for k, v in (("seed", seed), ("image_size", image_size), ("train_images", train_images)) if v is not None}
        summary = synthesize(out, synth_preset(preset, **overrides), overwrite=overwrite)
    except AlignKDError as err:
        _fail(err)
    counts = ", ".join(f"{k} {v}" for k, v in summary["eval"]["questions"].items())
    typer.echo(f"wrote {out}: {summary['train']['images']} training images, eval questions: {counts} "
               f"({summary['seconds']:.1f} s)")


@data_app.command("pretrain-vision")
def data_pretrain_vision(
    world: Path = typer.Option(..., "--world", help="Synthetic world folder (from `alignkd data synth`)."),
    out: Path = typer.Option(..., "--out", help="Folder for checkpoint/ (the tower, for vision_tower_from) and report.json."),
    steps: int = typer.Option(1500, "--steps", min=1, help="Optimizer steps (batch 32; ~0.07 s each on 2 cores)."),
    preset: str = typer.Option("synth_teacher", "--preset", help="Model preset whose vision tower is trained."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Pre-train the synthetic world's toy CLIP on per-cell colour/shape/size labels (the real CLIP comes pretrained)."""
    try:
        from alignkd.distill.vision_pretrain import VisionPretrainConfig, pretrain_vision

        if (out / "report.json").exists():
            raise AlignKDError(f"{out} already holds a pre-trained tower (report.json); pass another --out or delete it")
        report = pretrain_vision(world, out, VisionPretrainConfig(steps=steps, preset=preset, seed=seed))
    except AlignKDError as err:
        _fail(err)
    acc = ", ".join(f"{a} {100 * v:.1f}% (majority {100 * report['majority'][a]:.1f}%)" for a, v in report["val"].items())
    typer.echo(f"wrote {report['checkpoint']}: held-out per-cell accuracy {acc} ({report['seconds']:.0f} s)")


@eval_app.command("score")
def eval_score(
    bench: str = typer.Option(..., "--bench", help="gqa, sqa, textvqa, mme, mmbench or pope."),
    data: Path = typer.Option(..., "--data", help="Benchmark suite folder (LLaVA's playground/data/eval layout)."),
    predictions: Path = typer.Option(..., "--predictions", help="LLaVA answer file (JSONL: question_id, prompt, text, ...)."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Score only the answered questions (a partial result, not comparable with papers)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Score an existing predictions file, without a model (predictions made elsewhere, or reference checks)."""
    try:
        from alignkd.eval.registry import get_benchmark

        bm = get_benchmark(bench)
        result = bm.score_file(data, predictions, allow_missing=allow_missing)
    except AlignKDError as err:
        _fail(err)
    if as_json:
        print(json.dumps(result))
    else:
        typer.echo(f"{bm.title}: {bm.headline} = {result[bm.headline]:.2f}")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="MobileVLM checkpoint folder (official format; ours or a published one)."),
    target: str = typer.Option(..., "--target", help="executorch, onnx, coreml or gguf."),
    quant: Optional[str] = typer.Option(None, "--quant", help="executorch: fp32 (default), 8da8w, 8da4w; onnx: fp32 (default), int8, int4; coreml: fp16 (default), int8, int4, palettize4; gguf: f32 (default), f16, q8_0, q4_0, q4_k_s."),
    out: Path = typer.Option(..., "-o", "--out", help="Bundle folder to create (manifest.json + parts)."),
    group_size: int = typer.Option(32, "--group-size", help="Group/block size of 4-bit weights (multiple of 32 for XNNPACK)."),
    embedding_bits: int = typer.Option(8, "--embedding-bits", help="ExecuTorch token embedding: 8 or 4 bits (quantized schemes)."),
    vision_quant: Optional[str] = typer.Option(None, "--vision-quant", help="Vision encoder: fp32 (default) or, ExecuTorch only, int8 (int8 linears, dynamic activations; image-token cosine >= 0.99 checked); gguf: fp32 or fp16 (default for quantised models)."),
    max_seq_len: int = typer.Option(1024, "--max-seq-len", help="KV-cache length of the decoder (prompt + image tokens + answer)."),
    calibration_images: Optional[list[Path]] = typer.Option(None, "--calibration-images", help="Example images for tracing the vision encoder (default: synthetic); the int8 encoder quantises activations at run time, so they calibrate nothing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle folder (only a folder holding an alignkd bundle and nothing else; others are refused)."),
    allow_drift: bool = typer.Option(False, "--allow-drift", help="Write a quantized bundle even below the parity thresholds."),
    vision_runtime: Optional[str] = typer.Option(None, "--vision-runtime", help="gguf only: llama.cpp (default; mmproj.gguf run by mtmd) or pytorch (the vision encoder as fp32 safetensors run by eager PyTorch, llama.cpp running the language model only: for a model mtmd cannot run, such as a CLIP grid other than 24x24; recorded in manifest.json and shown by generate/eval)."),
) -> None:
    """Export a checkpoint to a self-describing bundle (vision_encoder / token_embedding / text_decoder), with parity measured and recorded."""
    try:
        from alignkd.export.api import export_bundle

        path = export_bundle(checkpoint, target, quant, out, group_size=group_size, embedding_bits=embedding_bits,
                             vision_quant=vision_quant, max_seq_len=max_seq_len, overwrite=overwrite,
                             allow_drift=allow_drift, calibration_images=calibration_images, vision_runtime=vision_runtime)
        manifest = json.loads((path / "manifest.json").read_text())
    except AlignKDError as err:
        _fail(err)
    typer.echo(f"wrote {path}\n{_parity_summary(manifest['parity'])}")
    if manifest["parts"]["vision_encoder"].get("runtime") == "pytorch":
        from alignkd.runtime.gguf_backend import PYTORCH_VISION_NOTE

        typer.echo(f"  note: {PYTORCH_VISION_NOTE}")


def _parity_summary(parity: dict) -> str:
    """The manifest's parity in three lines; Core ML bundles have module figures only (`measured` false)."""
    parts = ", ".join(f"{name} cos {p['cosine']:.5f} max|d| {p['max_abs']:.2g}" for name, p in parity["parts"].items())
    if "end_to_end" not in parity:
        return f"  converted modules vs eager: {parts}\n  end to end: not measured here ({parity.get('reason', 'no runtime')})"
    e2e, answers = parity["end_to_end"], parity.get("answers")
    line = (f"  parts: {parts}\n  end to end: exact eager tokens {e2e['exact_match']}, token agreement "
            f"{e2e['token_agreement']:.3f}, logit cosine {e2e['logit_cosine']:.5f} (thresholds {parity['thresholds']})")
    if answers is None:
        return line
    if not answers["answered"]:
        return line + f"\n  yes/no answers: not judged (the model answers none of the {len(answers['prompts'])} prompts with yes or no)"
    change = answers["margin_change"]
    return line + (f"\n  yes/no answers: kept {answers['kept']} of {answers['answered']}, margin change "
                   f"{'-' if change is None else f'{change:.3f}'}")


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Folder for everything the run writes (re-running continues)."),
    seed: int = typer.Option(0, "--seed"),
    vision_steps: int = typer.Option(1500, "--vision-steps", min=1, help="Pre-training steps of the toy CLIP (batch 32; ~0.07 s each on 2 cores)."),
    train_teacher: bool = typer.Option(False, "--train-teacher", help="Pre-train the toy CLIP and train the toy teacher here (and write "
                                       "its teacher_record.json) instead of starting from the shipped teacher."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Start from this teacher folder (OUT/teacher/student of a "
                                           "--train-teacher run; its record must match the world) instead of the shipped one."),
    teacher_steps: int = typer.Option(2000, "--teacher-steps", min=1, help="With --train-teacher: optimizer steps of the toy teacher (batch 8)."),
    grounding_steps: int = typer.Option(800, "--grounding-steps", min=0, help="With --train-teacher: steps of the grounding stage "
                                        "before the teacher's fine-tuning (batch 32 + 64 compact; its losses stay in the fine-tuning; "
                                        "0 skips both): what makes the toy teacher read its image (docs/quickstart.md, 'The grounding stage')."),
    student_steps: int = typer.Option(300, "--student-steps", min=1, help="Optimizer steps of each student (Align-KD and CE-only alike)."),
    blind: bool = typer.Option(False, "--blind", help="Also evaluate the teacher and both students with every image blanked "
                               "(question-only control: how much of each score is language prior)."),
    shuffled: bool = typer.Option(True, "--shuffled/--no-shuffled", help="Also evaluate the teacher and both students with every "
                                  "question asked about another image (what looking at the image is worth); on by default."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json instead of the table."),
) -> None:
    """The whole pipeline on the embedded synthetic world: world -> teacher -> Align-KD and CE students -> export -> eval -> profile."""
    try:
        from alignkd.quickstart import QuickstartConfig, format_summary, quickstart as run_quickstart

        trained = ("teacher", "student CE-only", "student Align-KD")
        if teacher is not None and train_teacher:
            raise AlignKDError("--teacher and --train-teacher exclude each other: start from a trained teacher, or train one")
        summary = run_quickstart(out, QuickstartConfig(seed=seed, vision_steps=vision_steps, teacher_steps=teacher_steps,
                                                       grounding_steps=grounding_steps,
                                                       train_teacher=train_teacher, teacher=str(teacher) if teacher else None,
                                                       student_steps=student_steps, blind=trained if blind else (),
                                                       shuffled=trained if shuffled else ()))
    except AlignKDError as err:
        _fail(err)
    print(json.dumps(summary) if as_json else format_summary(summary))


@app.command()
def reproduce(
    out: Path = typer.Option(Path("runs/reproduce"), "--out", help="Folder for the world, every row's students and scores (re-running continues)."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: 2 seeds, 60 student steps, 40 questions per benchmark (not the protocol)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per row (default 3; --quick 2; at least 2)."),
    rows: Optional[str] = typer.Option(None, "--rows", help="Comma-separated row names (default: every row; see docs/reproduction.md)."),
    student_steps: Optional[int] = typer.Option(None, "--student-steps", help="Steps of every student (default 300; --quick 60)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="A teacher folder with a matching teacher_record.json (default: the shipped one)."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="docs/reproduction.md to write the table and plot into (default: that file when "
                                        "run from the repository, else nowhere)."),
    as_json: bool = typer.Option(False, "--json", help='Print {"rows": [{"name", "seeds", "mean", "std", ...}]} instead of the table.'),
    jobs: int = typer.Option(1, "--jobs", help="Students trained at once, each in its own process of cores/N threads (2 suits 2 cores)."),
) -> None:
    """The paper's ablations in miniature (Tables 3 and 4, forward vs reverse KL, lambda, the released code): seeds, means, intervals."""
    try:
        from alignkd.quickstart import QuickstartConfig
        from alignkd.reproduce import ReproduceConfig, format_table, reproduce as run_reproduce

        kw = {"quickstart": QuickstartConfig(teacher=str(teacher) if teacher else None), "jobs": jobs}
        for key, value in (("seeds", seeds), ("student_steps", student_steps)):
            if value is not None:
                kw[key] = value
        if rows:
            kw["rows"] = tuple(r.strip() for r in rows.split(",") if r.strip())
        default_doc = Path("docs/reproduction.md")
        kw["docs"] = docs if docs is not None else (default_doc if default_doc.is_file() else None)
        cfg = ReproduceConfig.quick(**kw) if quick else ReproduceConfig(**kw)
        log = (lambda line: print(line, file=sys.stderr)) if as_json else print
        result = run_reproduce(out, cfg, log=log)
    except AlignKDError as err:
        _fail(err)
    print(json.dumps({"rows": result["rows"], **{k: v for k, v in result.items() if k != "rows"}}) if as_json else format_table(result))


BENCH_OPT = typer.Option("gqa,sqa,textvqa,mme,mmbench,pope", "--bench", help="Comma-separated benchmarks.")


def _default_out(model: Path, prefix: str = "") -> Path:
    """runs/eval/<parent>-<name>: distinct for runs/kd/student and runs/ce/student."""
    model = model.resolve()
    return Path("runs") / "eval" / f"{prefix}{model.parent.name}-{model.name}"


def _benches(bench: str) -> list[str]:
    return [b.strip() for b in bench.split(",") if b.strip()]


@eval_app.command("run")
def eval_run(
    model: Path = typer.Argument(..., help="Checkpoint folder or exported bundle."),
    bench: str = BENCH_OPT,
    data: Path = typer.Option(..., "--data", help="Benchmark suite folder (LLaVA's playground/data/eval layout)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where the answer files go (default: runs/eval/PARENT-NAME of the model). Re-running with the same model and settings resumes."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most N questions per benchmark (a partial result)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Cap the benchmark's own budget (smoke runs; not comparable with papers)."),
    dtype: DType = typer.Option(DType.float32, "--dtype"),
    blind: bool = typer.Option(False, "--blind", help="Question-only control: blank every image (preprocessing mean) and keep the prompt; "
                               "what is left is the language prior. Answers are tagged MODEL+blind; use its own --out folder."),
    shuffled: bool = typer.Option(False, "--shuffled", help="Does the model look? Ask every question about another image of the "
                                  "same benchmark; a model that reads its image loses what it gained from it. Tagged MODEL+shuffled."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the answers already in --out (another model or settings) and start afresh."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Generate answers with each benchmark's official prompt and settings, write LLaVA answer files, score."""
    try:
        from alignkd.eval.run import evaluate, format_table

        out = out or _default_out(model, "blind-" if blind else "shuffled-" if shuffled else "")
        result = evaluate(model, _benches(bench), data, out, limit=limit, dtype=dtype.value, max_new_tokens=max_new_tokens,
                          progress=not as_json, blind=blind, shuffled=shuffled, overwrite=overwrite)
    except AlignKDError as err:
        _fail(err)
    if result is not None:  # under `accelerate launch` only the main process merges, scores and prints
        print(json.dumps(result) if as_json else format_table(result))


@eval_app.command("compare")
def eval_compare(
    bundle: Path = typer.Argument(..., help="Exported bundle (or any model) to check."),
    reference: Path = typer.Option(..., "--reference", help="The source checkpoint."),
    bench: str = BENCH_OPT,
    data: Path = typer.Option(..., "--data"),
    out: Optional[Path] = typer.Option(None, "--out", help="Default: runs/eval/compare-PARENT-NAME of the bundle."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the answers already in --out (other models or settings) and start afresh."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Accuracy drift of an exported bundle against its source checkpoint, per benchmark, plus answer agreement."""
    try:
        from alignkd.eval.run import compare, format_compare

        out = out or _default_out(bundle, "compare-")
        result = compare(bundle, reference, _benches(bench), data, out, limit, max_new_tokens=max_new_tokens, progress=not as_json,
                         overwrite=overwrite)
    except AlignKDError as err:
        _fail(err)
    if result is not None:
        print(json.dumps(result) if as_json else format_compare(result))


@app.command()
def profile(
    model: Path = typer.Argument(..., help="Checkpoint folder or exported bundle."),
    device: str = typer.Option("host", "--device", help="host (here, Python runtime); native (here, the C++ alignkd-runner); android (adb: the runner built for Android, or --from-app); ios (the demo app's JSON: --udid or --from-json)."),
    runs: int = typer.Option(5, "--runs", min=1),
    warmup: int = typer.Option(1, "--warmup", min=0),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    image: Optional[Path] = typer.Option(None, "--image", help="Default: a synthetic image."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Default: a question padded to ~190 prefill positions (llama.cpp's comparison)."),
    dtype: DType = typer.Option(DType.float32, "--dtype"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: load_s, vision_encode_s, ttft_s, prefill_tok_s, decode_tok_s, peak_rss_mb, size_mb, p90, raw runs."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG latency breakdown (vision encode / prefill / decode per run)."),
    serial: Optional[str] = typer.Option(None, "--serial", help="android: the adb serial of the phone (needed when several are attached)."),
    keep: bool = typer.Option(False, "--keep", help="android: leave the pushed runner and bundle in /data/local/tmp/alignkd/."),
    from_app: bool = typer.Option(False, "--from-app", help="android: run the demo app's benchmark on the bundle and pull its JSON, instead of alignkd-runner."),
    start: bool = typer.Option(True, "--start/--no-start", help="android --from-app: --no-start pulls the JSON the app last wrote without starting it."),
    udid: Optional[str] = typer.Option(None, "--udid", help="ios: the iPhone whose demo app's benchmark JSON to copy (xcrun devicectl)."),
    from_json: Optional[Path] = typer.Option(None, "--from-json", help="ios: read the demo app's benchmark JSON from this file instead."),
) -> None:
    """Latency and memory: load, vision encode, prefill (TTFT), decode, peak RSS, size on disk (median and p90)."""
    misplaced = [(name, owner) for name, value, owner in (("--serial", serial, "android"), ("--keep", keep, "android"),
                 ("--from-app", from_app, "android"), ("--udid", udid, "ios"), ("--from-json", from_json, "ios"))
                 if value and device != owner]
    if misplaced:
        name, owner = misplaced[0]
        _fail(AlignKDError(f"{name} belongs to --device {owner}, not --device {device}; drop it or use --device {owner}"))
    if device in ("android", "ios"):
        return _profile_phone(model, device, runs, warmup, max_new_tokens, image, prompt, as_json, plot,
                              serial=serial, keep=keep, from_app=from_app, start=start, udid=udid, from_json=from_json)
    try:
        from alignkd.runtime.profile import format_profile, profile as run_profile

        img = None
        if image is not None:
            from alignkd.data.image import load_image

            img = load_image(image)
        if device == "native":  # the C++ runner on this machine (alignkd runtime build)
            from alignkd.runtime.native import profile_native
            from alignkd.runtime.profile import plot_latency

            result = profile_native(model, runs=runs, warmup=warmup, image=img, prompt=prompt, max_new_tokens=max_new_tokens)
            if plot is not None:
                result["plot"] = str(plot_latency(result, plot))
        else:
            result = run_profile(model, device=device, runs=runs, warmup=warmup, image=img, prompt=prompt,
                                 max_new_tokens=max_new_tokens, dtype=dtype.value, plot=plot)
    except AlignKDError as err:
        _fail(err)
    print(json.dumps(result) if as_json else format_profile(result))
    if "plot_error" in result:  # after the measurements, which are printed in full
        _fail(AlignKDError(result["plot_error"]))


def _profile_phone(model, device, runs, warmup, max_new_tokens, image, prompt, as_json, plot, **phone) -> None:
    """`profile --device android|ios` (alignkd.runtime.device): the same JSON and table as a host profile."""
    if (device == "ios" or phone["from_app"]) and (image is not None or prompt is not None):
        source = "--device ios" if device == "ios" else "--from-app"
        _fail(AlignKDError(f"{'--image' if image is not None else '--prompt'} is not used with {source}: the demo app "
                           "profiles its own picture and question; drop it, or profile with alignkd-runner (--device android)"))
    try:
        from alignkd.runtime import device as phones
        from alignkd.runtime.profile import _require_matplotlib, format_profile, plot_latency

        if plot is not None:
            _require_matplotlib()  # before the phone's rounds, which the missing package would otherwise waste
        if device == "ios":
            result = phones.profile_ios(model, udid=phone["udid"], from_json=phone["from_json"])
        elif phone["from_app"]:
            result = phones.profile_android_app(model, serial=phone["serial"], start=phone["start"], keep=phone["keep"],
                                                runs=runs, warmup=warmup, max_new_tokens=max_new_tokens)
        else:
            img = None
            if image is not None:
                from alignkd.data.image import load_image

                img = load_image(image)
            result = phones.profile_android(model, serial=phone["serial"], keep=phone["keep"], runs=runs, warmup=warmup,
                                            image=img, prompt=prompt, max_new_tokens=max_new_tokens)
        if plot is not None:
            result["plot"] = str(plot_latency(result, plot))
    except AlignKDError as err:
        _fail(err)
    print(json.dumps(result) if as_json else format_profile(result))


@app.command("profile-compare")
def profile_compare(
    files: list[Path] = typer.Argument(..., help="Profile JSON files: `alignkd profile --json` output (host, native, android, ios) or a demo app's alignkd_profile.json."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: latency per run (vision encode / prefill / decode) and decode tok/s."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: runs, each with its label, file and medians."),
) -> None:
    """Host, native and phone profiles side by side, one column per run named by its device and runtime."""
    try:
        from alignkd.runtime.profile_compare import compare, format_compare, plot_compare

        table = compare(files)
        if plot is not None:
            table["plot"] = str(plot_compare(table, plot))
    except AlignKDError as err:
        _fail(err)
    print(json.dumps(table) if as_json else format_compare(table))


runtime_app = typer.Typer(help="The native (C++) runner for ExecuTorch bundles: build it.", no_args_is_help=True)
app.add_typer(runtime_app, name="runtime")


@runtime_app.command("build")
def runtime_build(
    out: Optional[Path] = typer.Option(None, "--out", help="Build folder (default: build/runtime in the checkout, where generate/profile look)."),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Parallel compile jobs."),
) -> None:
    """Build alignkd-runner with CMake against the installed executorch wheel; prints the binary's path."""
    try:
        from alignkd.runtime.native import ENV_VAR, build_runner, DEFAULT_BUILD_DIR

        binary = build_runner(out, jobs=jobs)
    except AlignKDError as err:
        _fail(err)
    hint = "" if binary.parent.resolve() == DEFAULT_BUILD_DIR.resolve() else f" (set {ENV_VAR}={binary} so generate/profile use it)"
    typer.echo(f"built {binary}{hint}")


def _quiet_backend_noise() -> None:
    """transformers imports torchao when it is installed (the export extra); its CUDA-kernel load failures
    and torch's Enum-registration deprecation warnings are harmless on CPU and would bury our output."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:  # console-script entry point
    _quiet_backend_noise()
    app()


if __name__ == "__main__":
    sys.exit(main())
