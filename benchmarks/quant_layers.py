"""Which part of int4 moves a model's answers: the checkpoint's decoder linears quantised in eager PyTorch (torchao,
the configs the ExecuTorch export uses) one variant at a time, answers compared with the fp32 model's.

Variants: 8da4w as exported before the lm_head fix (every linear int4, group 32), the lm_head alone at int4, the
lm_head at int8 or fp32, other groups, the MLP or attention linears alone, and 8da8w. For each: the share of
answers identical to the fp32 model's on POPE, GQA, SQA-IMG and MME (first `--limit` questions each) and the
POPE yes-ratio. No export, no lowering: the fake-quantised eager model runs the same generation loop (its
figures track the ExecuTorch bundle's: 8da4w g32 changes 11% of POPE answers here and in the bundle). Numbers in
docs/export.md, "Accuracy of the quantised bundles".

    python benchmarks/quant_layers.py alignkd/assets/synth_teacher --world runs/quant_accuracy/world
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCHES = ("pope", "gqa", "sqa", "mme")
# name -> (bits of the body's linears, their group, bits of the lm_head (0: fp32), only linears whose name has this)
VARIANTS = {
    "8da4w g32 + lm_head int4 (before the fix)": (4, 32, 4, None),
    "8da4w g32 + lm_head int8 (the export now)": (4, 32, 8, None),
    "8da4w g32 + lm_head fp32": (4, 32, 0, None),
    "lm_head int4 only": (0, 32, 4, None),
    "8da4w g64 + lm_head int4": (4, 64, 4, None),
    "8da4w g128 + lm_head int8": (4, 128, 8, None),
    "8da4w g32 MLP only": (4, 32, 0, "mlp"),
    "8da4w g32 attention only": (4, 32, 0, "self_attn"),
    "8da8w": (8, 0, 8, None),
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--world", type=Path, required=True, help="synthetic world folder (from `alignkd data synth`)")
    ap.add_argument("--limit", type=int, default=100, help="questions per benchmark")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variant names (names have no commas)")
    args = ap.parse_args(argv)
    import torch

    from alignkd.data.image import ImageProcessor
    from alignkd.eval.registry import get_benchmark
    from alignkd.runtime.generation import EagerBackend
    from alignkd.runtime.loader import load_model

    torch.set_num_threads(1)
    base = load_model(args.checkpoint)
    processor = ImageProcessor(base.image_config)
    questions = {b: get_benchmark(b).load_questions(args.world / "eval")[:args.limit] for b in BENCHES}
    reference = _answers(base, base.backend, processor, questions, args.max_new_tokens)
    result = {"checkpoint": str(args.checkpoint), "limit": args.limit, "reference_pope_yes_ratio": _yes(reference["pope"]),
              "variants": {}}
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        t0 = time.perf_counter()
        model = quantise(copy.deepcopy(base.backend.model), *VARIANTS[name])
        got = _answers(base, EagerBackend(model), processor, questions, args.max_new_tokens)
        row = {b: sum(x == y for x, y in zip(reference[b], got[b])) / len(reference[b]) for b in BENCHES}
        result["variants"][name] = {"same_answers": row, "pope_yes_ratio": _yes(got["pope"]),
                                    "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))
    return result


def quantise(model, body_bits: int, group: int, head_bits: int, only: str | None):
    """In place on `model.llm`: the lm_head at `head_bits` (0: fp32), the other linears (those naming `only`, if
    given) at `body_bits` (0: fp32) in groups of `group` (int4) or per channel (int8)."""
    from torch import nn
    from torchao.quantization import quantize_

    from alignkd.export.quantize import _weight_config

    scheme = lambda bits: "8da4w" if bits == 4 else "8da8w"
    if head_bits:
        quantize_(model.llm, _weight_config(scheme(head_bits), group), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn == "lm_head")
    if body_bits:
        quantize_(model.llm, _weight_config(scheme(body_bits), group),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn != "lm_head" and (only is None or only in fqn))
    return model


def _answers(base, backend, processor, questions: dict, cap: int) -> dict:
    from alignkd.eval.run import _answer

    loaded = SimpleNamespace(backend=backend, tokenizer=base.tokenizer, template=base.template)
    return {b: [_answer(loaded, processor, q, cap) for q in qs] for b, qs in questions.items()}


def _yes(answers: list[str]) -> float:
    return sum("yes" in a.lower() for a in answers) / max(len(answers), 1)


if __name__ == "__main__":
    main()
