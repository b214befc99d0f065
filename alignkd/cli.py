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
) -> None:
    """Answer a question about an image with a MobileVLM checkpoint (greedy by default, as the official code)."""
    try:
        from alignkd.runtime.run import generate_from_checkpoint

        result = generate_from_checkpoint(
            model, prompt, image, max_new_tokens=max_new_tokens, template=template, raw_prompt=raw_prompt,
            temperature=temperature, top_p=top_p, seed=seed, dtype=dtype.value, vision_tower=vision_tower,
            stream=(lambda text: print(text, end="", flush=True)) if stream and not as_json else None,
        )
    except AlignKDError as err:
        _fail(err)
    if as_json:
        print(json.dumps(result.to_dict()))
    elif stream:
        print()
    else:
        print(result.text)


def _train(config: Path, overrides: list[str] | None, resume: bool, resume_from: Path | None, need_teacher: bool) -> None:
    try:
        from alignkd.config import load_config
        from alignkd.distill.config import TrainConfig
        from alignkd.distill.recipe import run

        cfg = load_config(TrainConfig, config, overrides or [])
        if need_teacher and not cfg.distill:
            raise AlignKDError(f"{config} names no teacher; `alignkd distill` needs `teacher:` (use `alignkd train` for CE-only training)")
        if not need_teacher and cfg.distill:
            raise AlignKDError(f"{config} names a teacher; use `alignkd distill` for Align-KD, or set teacher=null for CE-only training")
        out = run(cfg, resume=resume_from or resume)
    except AlignKDError as err:
        _fail(err)
    typer.echo(f"done: {out}")


CONFIG_OPT = typer.Option(..., "-c", "--config", help="YAML config (shipped presets: alignkd/configs/).")
OVERRIDES_ARG = typer.Argument(None, help="Dotted overrides, e.g. optim.lr=1e-4 max_steps=100 loss.weights.attn=0.")
RESUME_OPT = typer.Option(False, "--resume", help="Continue from the latest checkpoint in output_dir.")
RESUME_FROM_OPT = typer.Option(None, "--resume-from", help="Continue from this checkpoint folder.")


@app.command()
def distill(config: Path = CONFIG_OPT, overrides: Optional[list[str]] = OVERRIDES_ARG, resume: bool = RESUME_OPT,
            resume_from: Optional[Path] = RESUME_FROM_OPT) -> None:
    """Align-KD: distil the config's teacher into its student (writes OUT/student in the official format)."""
    _train(config, overrides, resume, resume_from, need_teacher=True)


@app.command()
def train(config: Path = CONFIG_OPT, overrides: Optional[list[str]] = OVERRIDES_ARG, resume: bool = RESUME_OPT,
          resume_from: Optional[Path] = RESUME_FROM_OPT) -> None:
    """Supervised fine-tuning with the same recipe and no teacher (the CE-only baseline; trains the toy teacher)."""
    _train(config, overrides, resume, resume_from, need_teacher=False)


data_app = typer.Typer(help="Training data and the synthetic world (the embedded default).", no_args_is_help=True)
app.add_typer(data_app, name="data")
eval_app = typer.Typer(help="Benchmark scoring (GQA, SQA-IMG, TextVQA, MME, MMBench, POPE) with the papers' protocols.", no_args_is_help=True)
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


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(main())
