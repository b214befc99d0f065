"""The vectors every reader of a bundle is tested on (export/golden/): Python, the C++ runner, the app cores.

- Pairs (`golden.json`): the image as PNG, its preprocessed pixel values (.npy, float32 [1,3,72,72]), the prompt,
  the prompt ids (-200 at the image placeholder) and the eager model's 32 greedy tokens, which every fp32 bundle
  of the tiny checkpoint reproduces exactly.
- `profile_prompt.json`: the question `alignkd profile` fits to its prefill target (`fit_prompt`) for the tiny
  tokenizer, with its position count, so the apps' benchmark question is checked to be the host's.
- `manifests/`: the manifest.json of tiny ExecuTorch (8da4w), Core ML (fp16) and GGUF (q4_k_s) bundles as the
  exporter writes them (the model files are not kept), so the JVM and Swift cores parse and validate real
  manifests (and refuse a bundle of a target they cannot run by name).

`tests/export/test_golden.py` regenerates the pairs and the prompt vectors and compares; the manifests take two
exports, so their check is marked slow (`tests/apps`).

    python -m alignkd.export.golden [OUT_DIR]                 # default: export/golden, pairs + prompt vectors
    python -m alignkd.export.golden --manifests [OUT_DIR]     # also re-export and write manifests/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TINY_CHECKPOINT = Path("tests/fixtures/mobilevlm_official_tiny/checkpoint")
GOLDEN_DIR = Path("export/golden")
MANIFEST_BUNDLES = (("executorch", "8da4w"), ("coreml", "fp16"), ("gguf", "q4_k_s"))
MANIFEST_MAX_SEQ_LEN = 512  # as tests/export/conftest.py: a small cache keeps the exports fast
# 190 is the profile's target; the tiny model's 144 image tokens leave room for no filler word there, so the
# larger targets check that the word search itself agrees.
PROMPT_TARGETS = (190, 230, 260, 400)


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


def profile_prompt_vectors(checkpoint: Path = TINY_CHECKPOINT) -> dict:
    """The profile's benchmark question for each prefill target, with the positions it takes."""
    from types import SimpleNamespace

    from alignkd.data.templates import tokenize_with_image
    from alignkd.data.tokenizer import Tokenizer
    from alignkd.models.checkpoint import load_config
    from alignkd.runtime.generation import build_prompt
    from alignkd.runtime.profile import fit_prompt

    n_image_tokens = load_config(checkpoint).num_image_tokens
    loaded = SimpleNamespace(tokenizer=Tokenizer.from_folder(checkpoint), template="v1")
    cases = []
    for target in PROMPT_TARGETS:
        question = fit_prompt(loaded, n_image_tokens, target)
        positions = len(tokenize_with_image(build_prompt(question, 1, "v1"), loaded.tokenizer)) - 1 + n_image_tokens
        cases.append({"target": target, "question": question, "positions": positions})
    return {"num_image_tokens": n_image_tokens, "cases": cases}


def write_profile_prompt(out: Path = GOLDEN_DIR, checkpoint: Path = TINY_CHECKPOINT) -> dict:
    vectors = profile_prompt_vectors(checkpoint)
    (Path(out) / "profile_prompt.json").write_text(json.dumps(vectors, indent=1) + "\n")
    return vectors


def manifest_texts(workdir: Path, checkpoint: Path = TINY_CHECKPOINT) -> dict[str, str]:
    """{file name: manifest.json text} of freshly exported tiny bundles, the checkpoint path as given."""
    from alignkd.export import export_bundle

    texts = {}
    for target, quant in MANIFEST_BUNDLES:
        bundle = export_bundle(checkpoint, target, quant, Path(workdir) / f"{target}_{quant}", max_seq_len=MANIFEST_MAX_SEQ_LEN)
        # The exporter records the checkpoint path it was given: keep the stored copy repository-relative.
        texts[f"{target}_{quant}.json"] = (bundle / "manifest.json").read_text().replace(str(checkpoint), TINY_CHECKPOINT.as_posix())
    return texts


def write_manifests(out: Path = GOLDEN_DIR, checkpoint: Path = TINY_CHECKPOINT) -> list[str]:
    import tempfile

    (Path(out) / "manifests").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        texts = manifest_texts(Path(tmp), checkpoint)
    for name, text in texts.items():
        (Path(out) / "manifests" / name).write_text(text)
    return sorted(texts)


if __name__ == "__main__":
    args = sys.argv[1:]
    with_manifests = "--manifests" in args
    args = [a for a in args if a != "--manifests"]
    target = Path(args[0]) if args else GOLDEN_DIR
    written = [write_golden(target)["pairs"][0]["image"], "profile_prompt.json"]
    write_profile_prompt(target)
    if with_manifests:
        written += [f"manifests/{name}" for name in write_manifests(target)]
    print(json.dumps({"written": written}))
