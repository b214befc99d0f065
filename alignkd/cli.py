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


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(main())
