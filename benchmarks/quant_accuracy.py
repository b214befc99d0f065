"""Accuracy of the quantised bundles: export one checkpoint to every scheme and `eval compare` each bundle with it.

For issue 17 section 4 (numbers in docs/export.md, "Accuracy of the quantised bundles"). The checkpoint is
exported (with `allow_drift`, so a bundle under the parity floors is still measured; `parity_passed` says
whether a plain export would have kept it) to the schemes of `BUNDLES`, then each bundle is compared with the
checkpoint on the six synthetic benchmarks through `alignkd.eval.run.compare` (what `alignkd eval compare`
runs), with the quickstart's answer cap (32 new tokens). The world is the quickstart's default one
(`alignkd.quickstart._world_config`), written into OUT/world unless `--world` names one; a checkpoint with a
teacher_record.json (the shipped toy teacher) must come from that world. Prints one JSON object (also
OUT/quant_accuracy.json): per bundle its scheme, average and delta against the checkpoint, per-benchmark
deltas, answer agreement, POPE yes-ratio, the parity figures measured at export and whether the accuracy
target (int8 class within 0.5 average points, 4-bit within 1.5) is met; and, where the run has the target's
full-precision bundle, the same against it (`vs_full_precision`).

The GGUF rows are exported with `--vision-runtime pytorch`: model.gguf is llama.cpp's own file at each scheme
(written and quantised as `alignkd export --target gguf` does) and llama.cpp runs the language model, while the
image tokens are the checkpoint's own fp32 PyTorch vision tower + projector (`image_tokens: pytorch` in the row).
That measures what llama.cpp's quantisation costs, the question of section 4, on any CLIP grid (mtmd's ldpv2
graph takes only 24x24, and its f16 projector and class-token-last graph would add their own drift: docs/export.md).

Re-runnable: a bundle whose manifest names this checkpoint (sha256) and the same options is reused, and so
are answers made by the same model and settings (their eval-key.json); anything else is redone.

    python benchmarks/quant_accuracy.py alignkd/assets/synth_teacher --out runs/quant_accuracy
    python benchmarks/quant_accuracy.py CKPT --world runs/quickstart/world --only executorch-8da4w,gguf-q4_k_s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (target, scheme, export options); the full-precision rows are the references for their target.
BUNDLES = {
    "executorch-fp32": ("executorch", "fp32", {}),
    "executorch-8da8w": ("executorch", "8da8w", {}),
    "executorch-8da8w-vision-int8": ("executorch", "8da8w", {"vision_quant": "int8"}),
    "executorch-8da4w": ("executorch", "8da4w", {}),
    "executorch-8da4w-vision-int8": ("executorch", "8da4w", {"vision_quant": "int8"}),
    "onnx-fp32": ("onnx", "fp32", {}),
    "onnx-int8": ("onnx", "int8", {}),
    "onnx-int4": ("onnx", "int4", {}),
    "gguf-f32": ("gguf", "f32", {"vision_runtime": "pytorch"}),
    "gguf-f16": ("gguf", "f16", {"vision_runtime": "pytorch"}),
    "gguf-q8_0": ("gguf", "q8_0", {"vision_runtime": "pytorch"}),
    "gguf-q4_0": ("gguf", "q4_0", {"vision_runtime": "pytorch"}),
    "gguf-q4_k_s": ("gguf", "q4_k_s", {"vision_runtime": "pytorch"}),
}
# Issue 17's targets, in average points (MME-P / 20) against the source checkpoint; full precision must be exact.
CLASS = {"fp32": "full", "f32": "full", "f16": "int8", "8da8w": "int8", "int8": "int8", "q8_0": "int8",
         "8da4w": "4-bit", "int4": "4-bit", "q4_0": "4-bit", "q4_k_s": "4-bit"}
TOLERANCE = {"full": 0.0, "int8": 0.5, "4-bit": 1.5}
BENCHES = ("gqa", "sqa", "textvqa", "mme", "mmbench", "pope")
MAX_NEW_TOKENS = 32  # the quickstart's eval cap (trained toy models answer in a few tokens)
MAX_SEQ_LEN = 512


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--world", type=Path, default=None, help="synthetic world folder (default: the quickstart's, written into OUT/world)")
    ap.add_argument("--out", type=Path, default=Path("runs/quant_accuracy"))
    ap.add_argument("--only", default=",".join(BUNDLES), help=f"comma-separated bundles among: {', '.join(BUNDLES)}")
    ap.add_argument("--limit", type=int, default=None, help="questions per benchmark (smoke runs; the figures are then partial)")
    ap.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    ap.add_argument("--group-size", type=int, default=32, help="int4 group (ExecuTorch 8da4w, ONNX int4)")
    args = ap.parse_args(argv)
    from alignkd.errors import AlignKDError

    try:
        result = run(args)
    except AlignKDError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2))
    return result


def run(args) -> dict:
    import torch

    from alignkd.errors import AlignKDError
    from alignkd.eval.run import evaluate

    torch.set_num_threads(1)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUNDLES]
    if unknown or not names:
        raise AlignKDError(f"unknown bundle(s) {unknown or names} in --only; choose among {', '.join(BUNDLES)}")
    out = args.out
    world = prepare_world(args.world, out, args.checkpoint)
    t0 = time.perf_counter()
    ref_dir = out / "reference"
    _drop_stale(ref_dir, args.checkpoint, "float32", args.max_new_tokens)
    reference = evaluate(args.checkpoint, list(BENCHES), world / "eval", ref_dir, limit=args.limit,
                         max_new_tokens=args.max_new_tokens, progress=False)
    rows = [measure(name, args, world, ref_dir, reference) for name in names]
    against_full_precision(rows, out)
    result = {"checkpoint": str(args.checkpoint), "world": str(world), "benches": list(BENCHES), "limit": args.limit,
              "max_new_tokens": args.max_new_tokens, "group_size": args.group_size,
              "reference": {"average": reference["average"], "table": reference["table"], "pope_yes_ratio": pope_yes_ratio(reference)},
              "bundles": rows, "seconds": round(time.perf_counter() - t0, 1), "command": " ".join(sys.argv)}
    (out / "quant_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def prepare_world(world: Path | None, out: Path, checkpoint: Path) -> Path:
    """The given world, or the quickstart's default one written into OUT/world; a checkpoint's teacher record
    must name this world (its scores mean nothing on another)."""
    from alignkd.errors import AlignKDError
    from alignkd.quickstart import RECORD, QuickstartConfig, _world_config, world_hash

    if world is None:
        world = out / "world"
        if not (world / "world.json").is_file():
            from alignkd.data.synth_world import synthesize

            synthesize(world, _world_config(QuickstartConfig()), overwrite=True)
    if not (world / "world.json").is_file():
        raise AlignKDError(f"{world} is not a synthetic world (no world.json); pass a folder written by `alignkd data synth`, "
                           "or leave --world out to write the quickstart's")
    record = Path(checkpoint) / RECORD
    if record.is_file():
        want = json.loads(record.read_text()).get("world_hash")
        if want and want != world_hash(world):
            raise AlignKDError(f"{checkpoint} was trained on another synthetic world than {world} (its {RECORD}); "
                               "leave --world out to use the quickstart's, or pass the world it was trained on")
    return world


def _drop_stale(folder: Path, model: Path, dtype: str, max_new_tokens: int | None) -> None:
    """Delete an answer folder made by another model or settings (this script owns OUT)."""
    from alignkd.eval.provenance import KEY_FILE, generation_key

    key = folder / KEY_FILE
    if key.is_file() and json.loads(key.read_text()) != generation_key(model, dtype=dtype, max_new_tokens=max_new_tokens,
                                                                       blind=False, shuffled=False):
        shutil.rmtree(folder)


def export(name: str, args, folder: Path) -> dict:
    """The bundle for `name` in `folder`, exported unless the one there comes from this checkpoint and options."""
    from alignkd.export.api import export_bundle
    from alignkd.export.manifest import checkpoint_hash

    target, scheme, options = BUNDLES[name]
    options = {**options, "group_size": args.group_size} if scheme in ("8da4w", "int4") else dict(options)
    manifest, stamp = folder / "manifest.json", folder.with_name(folder.name + ".options.json")
    want = {"options": options, "checkpoint_sha256": checkpoint_hash(args.checkpoint)}
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == want:
        return json.loads(manifest.read_text())
    stamp.unlink(missing_ok=True)
    with contextlib.redirect_stdout(sys.stderr):  # executorch's embedding quantiser prints; stdout is the JSON's
        export_bundle(args.checkpoint, target, scheme, folder, overwrite=True, allow_drift=True, max_seq_len=MAX_SEQ_LEN, **options)
    stamp.write_text(json.dumps(want) + "\n")  # what the reuse check above compares (gguf manifests record no group)
    return json.loads(manifest.read_text())


def measure(name: str, args, world: Path, ref_dir: Path, reference: dict) -> dict:
    """Export `name`, compare it with the checkpoint, and return its row (an `error` row if either step fails)."""
    from alignkd.errors import AlignKDError
    from alignkd.eval.run import compare

    target, scheme, options = BUNDLES[name]
    bundle, cmp_dir = args.out / "bundles" / name, args.out / "compare" / name
    row = {"bundle": name, "target": target, "scheme": scheme, "class": CLASS[scheme], "tolerance": TOLERANCE[CLASS[scheme]],
           "image_tokens": "pytorch" if options.get("vision_runtime") == "pytorch" else target}
    try:
        manifest = export(name, args, bundle)
        _drop_stale(cmp_dir / "bundle", bundle, "float32", args.max_new_tokens)
        shutil.rmtree(cmp_dir / "reference", ignore_errors=True)  # the checkpoint's answers, made once above
        shutil.copytree(ref_dir, cmp_dir / "reference")
        result = compare(bundle, args.checkpoint, list(BENCHES), world / "eval", cmp_dir, args.limit,
                         max_new_tokens=args.max_new_tokens, progress=False)
    except AlignKDError as err:
        return {**row, "error": str(err)}
    return {**row, **summarise(result, reference, manifest, row["tolerance"])}


def against_full_precision(rows: list[dict], out: Path) -> None:
    """Each quantised row also against its target's full-precision bundle, where this run has it: that isolates
    the quantisation from what the runtime itself changes (llama.cpp's own image path, docs/export.md)."""
    from alignkd.eval.run import answer_agreement

    full = {r["target"]: r for r in rows if r["class"] == "full" and "error" not in r}
    for row in rows:
        ref = full.get(row["target"])
        if ref is None or ref is row or "error" in row or row["average"] is None or ref["average"] is None:
            continue
        same = n = 0
        for bench in BENCHES:
            s, k = answer_agreement(str(out / "compare" / ref["bundle"] / "bundle" / f"{bench}.jsonl"),
                                    str(out / "compare" / row["bundle"] / "bundle" / f"{bench}.jsonl"))
            same, n = same + s, n + k
        row["vs_full_precision"] = {"bundle": ref["bundle"], "delta": row["average"] - ref["average"],
                                    "met": abs(row["average"] - ref["average"]) <= row["tolerance"] + 1e-9,
                                    "answer_agreement": same / n if n else None}


def pope_yes_ratio(evaluation: dict) -> float | None:
    """Mean yes-ratio (%) over POPE's subsets: whether a model answers every question the same way."""
    pope = evaluation["benchmarks"].get("pope")
    if pope is None:
        return None
    subsets = pope["score"]["subsets"].values()
    return sum(s["yes_ratio"] for s in subsets) / len(subsets)


def summarise(result: dict, reference: dict, manifest: dict, tolerance: float) -> dict:
    from alignkd.export import parity as floors

    bundle = result["bundle"]
    same = sum(r["agreement"] * r["n_compared"] for r in result["benchmarks"].values() if r["agreement"] is not None)
    n = sum(r["n_compared"] for r in result["benchmarks"].values())
    delta = None if bundle["average"] is None else bundle["average"] - reference["average"]
    parity = manifest["parity"]
    e2e, answers = parity.get("end_to_end", {}), parity.get("answers") or {}
    # The floors as the code has them now (a reused bundle was judged by the ones of its export: `passed`).
    vision = manifest["parts"]["vision_encoder"]["quant"] if manifest["target"] == "executorch" else None
    ok, misses = floors.judge(manifest["quant"]["scheme"], e2e, vision, parity.get("parts"), answers) if e2e else (None, [])
    return {
        "average": bundle["average"], "reference_average": reference["average"], "delta": delta,
        "met": None if delta is None else abs(delta) <= tolerance + 1e-9,
        "answer_agreement": same / n if n else None, "answers_compared": n,
        "per_benchmark": {name: {"reference": r["reference"], "bundle": r["bundle"], "delta": r["drift"], "agreement": r["agreement"]}
                          for name, r in result["benchmarks"].items()},
        "pope_yes_ratio": pope_yes_ratio(bundle), "reference_pope_yes_ratio": pope_yes_ratio(reference),
        "size_bytes": sum(f["bytes"] for f in manifest.get("files", {}).values()),
        "parity": {"passed": parity["passed"], "passes_floors_now": ok, "misses": misses, "token_agreement": e2e.get("token_agreement"), "logit_cosine": e2e.get("logit_cosine"),
                   "min_logit_cosine": e2e.get("min_logit_cosine"), "exact_tokens": e2e.get("exact_match"),
                   "yes_no_answer_agreement": answers.get("answer_agreement"), "yes_no_answered": answers.get("answered"),
                   "yes_no_margin_change": answers.get("margin_change"),
                   "yes_no_first_token_agreement": answers.get("first_token_agreement"),
                   "image_token_cosine": parity.get("parts", {}).get("vision_encoder", {}).get("cosine"),
                   "decoder_prefill_cosine": parity.get("parts", {}).get("text_decoder", {}).get("cosine")},
    }


if __name__ == "__main__":
    main()
