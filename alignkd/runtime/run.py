"""Entry function behind `alignkd generate`: load a checkpoint, preprocess the image, run the generation loop.

    alignkd generate --model CHECKPOINT --image photo.jpg --prompt "What is in the picture?" --json
"""

from __future__ import annotations

from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")


def generate_from_checkpoint(model_dir: Path, question: str, image: Path | None = None, *, max_new_tokens: int = 512,
                             template: str = "v1", raw_prompt: bool = False, temperature: float = 0.0,
                             top_p: float | None = None, seed: int = 0, dtype: str = "float32",
                             vision_tower: Path | None = None, stream=None):
    """Greedy (or sampled) answer of a checkpoint folder or exported bundle; returns a GenerationResult."""
    from alignkd.data.image import ImageProcessor, load_image
    from alignkd.runtime.generation import GenerationConfig, build_prompt, generate
    from alignkd.runtime.loader import load_model

    images = [load_image(image)] if image is not None else []
    # Check the prompt before paying for the model load.
    prompt = build_prompt(question, len(images), template, raw=raw_prompt)
    loaded = load_model(model_dir, dtype=dtype, vision_tower=vision_tower)
    pixels = ImageProcessor(loaded.image_config)(images) if images else None
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    printed = [0]

    def on_token(_tok, text):
        stream(text[printed[0]:])
        printed[0] = len(text)

    result = generate(loaded.backend, loaded.tokenizer, prompt, pixels, config, template, on_token if stream else None)
    result.kind = loaded.kind
    return result
