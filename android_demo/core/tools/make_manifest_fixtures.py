"""Write the app cores' test resources that export/golden/ lacks: real manifests and the benchmark prompt.

1. The manifest.json of tiny ExecuTorch (8da4w) and Core ML (fp16) bundles: this exports the official tiny
   fixture checkpoint with `alignkd.export.export_bundle` and keeps only each bundle's manifest.json, so the
   JVM and Swift cores parse and validate the manifest exactly as the exporter writes it. Their file
   verification tests build their own files and hash table, so the model files themselves are not kept.
2. profile_prompt.json: the question `alignkd profile` fits to its prefill target
   (alignkd.runtime.profile.fit_prompt) for the tiny fixture's tokenizer, with its position count, so the
   apps' benchmark question is checked to be the host's.

The same files go to android_demo/core/src/test/resources and ios_demo's test resources;
tests/apps/test_android_core.py checks both copies agree and are current (the manifests under -m slow).

    PYTHONPATH=$PWD python android_demo/core/tools/make_manifest_fixtures.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CHECKPOINT = ROOT / "tests" / "fixtures" / "mobilevlm_official_tiny" / "checkpoint"
OUTPUTS = (ROOT / "android_demo" / "core" / "src" / "test" / "resources",
           ROOT / "ios_demo" / "AlignKDCore" / "Tests" / "AlignKDCoreTests" / "Resources")
BUNDLES = (("executorch", "8da4w"), ("coreml", "fp16"))
MAX_SEQ_LEN = 512  # as tests/export/conftest.py: small cache, fast export
# 190 is the profile's target; the tiny model's 144 image tokens leave room for no filler word there, so the
# larger targets check that the word search itself agrees.
PROMPT_TARGETS = (190, 230, 260, 400)


def manifest_texts(workdir: Path) -> dict[str, str]:
    """{file name: manifest.json text} of freshly exported tiny bundles."""
    from alignkd.export import export_bundle

    texts = {}
    for target, quant in BUNDLES:
        bundle = export_bundle(CHECKPOINT, target, quant, Path(workdir) / f"{target}_{quant}", max_seq_len=MAX_SEQ_LEN)
        # The exporter records the checkpoint path it was given; keep it repository-relative.
        text = (bundle / "manifest.json").read_text()
        texts[f"{target}_{quant}.json"] = text.replace(str(CHECKPOINT), CHECKPOINT.relative_to(ROOT).as_posix())
    return texts


def profile_prompt_vectors() -> dict:
    from types import SimpleNamespace

    from alignkd.data.templates import tokenize_with_image
    from alignkd.data.tokenizer import Tokenizer
    from alignkd.models.checkpoint import load_config
    from alignkd.runtime.generation import build_prompt
    from alignkd.runtime.profile import fit_prompt

    n_image_tokens = load_config(CHECKPOINT).num_image_tokens
    loaded = SimpleNamespace(tokenizer=Tokenizer.from_folder(CHECKPOINT), template="v1")
    cases = []
    for target in PROMPT_TARGETS:
        question = fit_prompt(loaded, n_image_tokens, target)
        positions = len(tokenize_with_image(build_prompt(question, 1, "v1"), loaded.tokenizer)) - 1 + n_image_tokens
        cases.append({"target": target, "question": question, "positions": positions})
    return {"num_image_tokens": n_image_tokens, "cases": cases}


def _write(rel: str, text: str) -> None:
    for out in OUTPUTS:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path.relative_to(ROOT))


def main() -> int:
    sys.path.insert(0, str(ROOT))
    _write("profile_prompt.json", json.dumps(profile_prompt_vectors(), indent=1) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in manifest_texts(Path(tmp)).items():
            _write(f"manifests/{name}", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
