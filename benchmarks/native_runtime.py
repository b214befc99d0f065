"""The native C++ runner against the Python ExecuTorch runtime on the same bundles: load, vision encode, prefill,
decode tok/s and peak RSS, one JSON object.

Both sides run `alignkd profile`'s protocol (each round loads the bundle afresh, the synthetic picture, the
~190-position prompt, exactly N new tokens; medians over the rounds) in their own process, so each peak RSS
is that runtime's alone: `alignkd-runner --profile` for native, `python -m alignkd profile` for Python.
`--rounds K` alternates the two sides K times and reports medians over the rounds (and the median of the
per-round ratios): on a shared machine a slow spell then falls on both. Without
--bundle it exports the tiny official fixture (fp32 and 8da4w) into a temporary folder first. `--eager CKPT` adds
the source checkpoint in eager PyTorch (`alignkd profile CKPT`, same protocol) to the same run. Needs the runner
built (`alignkd runtime build`).

    python benchmarks/native_runtime.py --runs 5 --warmup 1
    python benchmarks/native_runtime.py --bundle out/tiny_et --threads 2
    python benchmarks/native_runtime.py --bundle runs/bench_17b/executorch_8da4w --eager runs/bench_17b/real_shape_ckpt \
        --rounds 3 --runs 2 --warmup 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY = ROOT / "tests/fixtures/mobilevlm_official_tiny/checkpoint"
KEYS = ("load_s", "vision_encode_s", "prefill_tok_s", "ttft_s", "decode_tok_s", "peak_rss_mb")


def python_profile(model: Path, runs: int, warmup: int, max_new_tokens: int) -> dict:
    """`alignkd profile` of a bundle (Python ExecuTorch runtime) or a checkpoint (eager PyTorch), in its own process."""
    cmd = [sys.executable, "-m", "alignkd", "profile", str(model), "--runs", str(runs), "--warmup", str(warmup),
           "--max-new-tokens", str(max_new_tokens), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def compare(bundle: Path, runs: int, warmup: int, max_new_tokens: int, threads: int | None, rounds: int = 1) -> dict:
    """Native and Python profiles interleaved (native, Python, native, Python, ...): each figure is the median over
    the rounds of each round's own median, and each ratio the median of the per-round ratios, so a slow spell
    of the shared machine falls on both sides."""
    from alignkd.runtime.native import profile_native

    natives, pythons = [], []
    for _ in range(rounds):
        natives.append(profile_native(bundle, runs=runs, warmup=warmup, max_new_tokens=max_new_tokens, threads=threads))
        pythons.append(python_profile(bundle, runs, warmup, max_new_tokens))
    native = natives[0]
    quant = json.loads((bundle / "manifest.json").read_text())["quant"]["scheme"]
    row = {"bundle": str(bundle), "quant": quant, "prefill_tokens": native["prefill_tokens"],
           "decode_tokens": native["decode_tokens"], "threads": native["device"]["threads"], "rounds": rounds,
           "native": {k: _median([n[k] for n in natives]) for k in KEYS},
           "python": {k: _median([p[k] for p in pythons]) for k in KEYS},
           "per_round": [{"native": {k: n[k] for k in KEYS}, "python": {k: p[k] for k in KEYS}}
                         for n, p in zip(natives, pythons)]}
    row["native_over_python"] = {k: _median([n[k] / p[k] for n, p in zip(natives, pythons)])
                                 for k in ("decode_tok_s", "prefill_tok_s", "peak_rss_mb")}
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, action="append", help="ExecuTorch bundle folder (repeatable); default: export the tiny fixture")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="native thread pool size (default: one per core)")
    parser.add_argument("--eager", type=Path, default=None, help="the bundles' source checkpoint: adds eager PyTorch to the run")
    parser.add_argument("--rounds", type=int, default=1, help="native and Python profiles alternate this many times")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bundles = args.bundle
        if not bundles:
            from alignkd.export import export_bundle

            bundles = [export_bundle(TINY, "executorch", q, Path(tmp) / q, max_seq_len=512) for q in ("fp32", "8da4w")]
        rows = [compare(Path(b), args.runs, args.warmup, args.max_new_tokens, args.threads, args.rounds) for b in bundles]
    eager = None
    if args.eager is not None:
        profile = python_profile(args.eager, args.runs, args.warmup, args.max_new_tokens)
        eager = {k: profile[k] for k in KEYS}
        for row in rows:
            row["native_over_eager"] = {"decode_tok_s": row["native"]["decode_tok_s"] / eager["decode_tok_s"],
                                        "peak_rss_mb": row["native"]["peak_rss_mb"] / eager["peak_rss_mb"]}
    from alignkd.runtime.profile import _cpu_name

    result = {"runs": args.runs, "warmup": args.warmup, "max_new_tokens": args.max_new_tokens, "cpu": _cpu_name(),
              "results": rows, "eager": eager}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
