"""Per-operator time of one greedy generation on an ExecuTorch bundle, from ETDump: where a decode step goes.

Runs the golden image + prompt through the Python runtime with ETDump on, then sums every profiled event
(portable operators, our llama custom ops, and XNNPACK's own operators inside each delegate call, such as
"Transpose (ND, X32)") per method and name, and prints one JSON line per bundle with the top operators of the
decode steps (ms per decode step) and of the vision encoder (ms per image).

    python benchmarks/etdump_ops.py out/tiny_et_fp32 [more bundles] --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def profile_bundle(bundle: Path, max_new_tokens: int) -> dict:
    from executorch.devtools import Inspector

    from alignkd.export.parity import golden_pairs
    from alignkd.contract.manifest import read_manifest
    from alignkd.data.image import ImageProcessor
    from alignkd.runtime.bundle import load_bundle
    from alignkd.runtime.executorch_backend import ExecuTorchBackend
    from alignkd.runtime.generation import GenerationConfig, build_prompt, generate

    loaded, manifest = load_bundle(bundle), read_manifest(bundle)
    backend = ExecuTorchBackend(bundle / "model.pte", manifest["max_seq_len"], manifest["model"]["vocab_size"], etdump=True)
    image, question = golden_pairs()[0]
    pixels = ImageProcessor(loaded.image_config)([image])
    out = generate(backend, loaded.tokenizer, build_prompt(question, 1), pixels, GenerationConfig(max_new_tokens=max_new_tokens))
    with tempfile.TemporaryDirectory() as tmp:
        backend.write_etdump(Path(tmp) / "run.etdp")
        blocks = Inspector(etdump_path=str(Path(tmp) / "run.etdp")).event_blocks
    steps = len(out.output_ids) - 1  # decoder runs after the prefill
    return {"bundle": str(bundle), "decode_steps": steps, **summarise(blocks, steps)}


def summarise(blocks, steps: int) -> dict:
    """ms by operator name: `per_decode_step` from events run at least once per decode step (the decoder's and
    the embedding's; the first run, the prefill, dropped), `per_image` from events run once (the vision encoder).
    The DELEGATE_CALL / OPERATOR_CALL wrappers are left out: they contain the operators listed."""
    step, image = collections.Counter(), collections.Counter()
    for block in blocks:
        for event in block.events:
            raw = event.perf_data.raw if event.perf_data is not None else []
            if not raw or event.name in ("DELEGATE_CALL", "OPERATOR_CALL") or "::" in event.name and "llama" not in event.name \
                    and event.name.startswith(("Method", "Program")):
                continue
            if len(raw) > steps:
                step[event.name] += sum(raw[-steps:]) / steps
            elif len(raw) == 1:
                image[event.name] += raw[0]
    top = lambda c: {"total_ms": round(sum(c.values()), 3), "top": {op: round(ms, 3) for op, ms in c.most_common(8)}}
    return {"per_decode_step": top(step), "per_image": top(image)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()
    for bundle in args.bundles:
        print(json.dumps(profile_bundle(bundle, args.max_new_tokens)), flush=True)


if __name__ == "__main__":
    main()
