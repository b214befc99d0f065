"""Golden image+prompt pairs with the tiny model's expected tokens, for the demo apps' own tests (export/golden/).

Each pair: the image as PNG, its preprocessed pixel values (.npy, float32 [1,3,72,72]), the prompt, the prompt
ids (-200 at the image placeholder) and the eager model's 32 greedy tokens, which every fp32 bundle of the
tiny checkpoint reproduces exactly (`tests/export/test_golden.py` regenerates and compares).

    python -m alignkd.export.golden [OUT_DIR]     # default: export/golden
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TINY_CHECKPOINT = Path("tests/fixtures/mobilevlm_official_tiny/checkpoint")
GOLDEN_DIR = Path("export/golden")


def write_golden(out: Path = GOLDEN_DIR, checkpoint: Path = TINY_CHECKPOINT) -> dict:
    """Write the pairs into `out` and return the index (also written as golden.json)."""
    import numpy as np

    from alignkd.data.image import ImageProcessor
    from alignkd.data.templates import tokenize_with_image
    from alignkd.export.parity import MAX_NEW_TOKENS, golden_pairs
    from alignkd.export.manifest import checkpoint_hash
    from alignkd.runtime.generation import GenerationConfig, build_prompt, generate
    from alignkd.runtime.loader import load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(checkpoint)
    processor = ImageProcessor(loaded.image_config)
    pairs = []
    for i, (image, question) in enumerate(golden_pairs()):
        image.save(out / f"pair{i}.png")
        pixels = processor([image])
        np.save(out / f"pair{i}_pixel_values.npy", pixels.numpy().astype(np.float32))
        prompt = build_prompt(question, 1)
        result = generate(loaded.backend, loaded.tokenizer, prompt, pixels, GenerationConfig(max_new_tokens=MAX_NEW_TOKENS))
        pairs.append({
            "image": f"pair{i}.png", "pixel_values": f"pair{i}_pixel_values.npy", "question": question, "prompt": prompt,
            "input_ids": tokenize_with_image(prompt, loaded.tokenizer), "expected_tokens": result.output_ids,
            "expected_text": result.text, "stop_reason": result.stop_reason,
        })
    index = {"model": "tests/fixtures/mobilevlm_official_tiny/checkpoint", "checkpoint_sha256": checkpoint_hash(checkpoint),
             "decoding": {"greedy": True, "max_new_tokens": MAX_NEW_TOKENS, "template": "v1"}, "pairs": pairs}
    (out / "golden.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


if __name__ == "__main__":
    print(json.dumps({"written": str(write_golden(Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN_DIR)["pairs"][0]["image"])}))
