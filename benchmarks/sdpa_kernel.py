"""Our llama::custom_sdpa kernel (runtime/kernels, the native runner's) against ExecuTorch's own (the one the
Python runtime loads from libcustom_ops_aot_lib), on MobileVLM V2 1.7B attention shapes; one JSON object.

Shapes: 16 heads of 128 (kv heads 16), cache of 1024 positions; prefill of 190 rows from position 0 (the
profile's prompt) and single-row decode steps at positions 190, 512 and 1023. Ours runs in its own process
(`bench_llama_kernels`, ExecuTorch's thread pool resized to --threads); ExecuTorch's through
`torch.ops.llama.custom_sdpa` with torch's thread count set to the same number, so its time includes the torch operator call (tens of
microseconds). Needs the runner built (`alignkd runtime build`).

    python benchmarks/sdpa_kernel.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HEADS, KV_HEADS, HEAD_DIM, CACHE = 16, 16, 128, 1024
CASES = (("prefill 190", 0, 190, 5), ("decode @190", 190, 1, 200), ("decode @512", 512, 1, 200), ("decode @1023", 1023, 1, 200))


def ours(binary: Path, start: int, seq: int, iters: int, threads: int) -> float:
    args = (HEADS, KV_HEADS, HEAD_DIM, CACHE, start, seq, iters, threads)
    out = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["ms_per_call"]


def executorch_kernel(start: int, seq: int, iters: int, threads: int) -> float:
    import torch

    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers torch.ops.llama.*)

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, seq, HEADS, HEAD_DIM, generator=gen)
    k = torch.randn(1, CACHE, KV_HEADS, HEAD_DIM, generator=gen)
    v = torch.randn(1, CACHE, KV_HEADS, HEAD_DIM, generator=gen)
    torch.ops.llama.custom_sdpa(q, k, v, start, None, 0, True)
    t0 = time.perf_counter()
    for _ in range(iters):
        torch.ops.llama.custom_sdpa(q, k, v, start, None, 0, True)
    return (time.perf_counter() - t0) / iters * 1000


def main(argv=None) -> dict:
    from alignkd.runtime.native import DEFAULT_BUILD_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts (tests use a small one)")
    args = parser.parse_args(argv)
    binary = args.build_dir / "bench_llama_kernels"
    rows = []
    for name, start, seq, iters in CASES:
        n = max(1, int(iters * args.scale))
        a, b = ours(binary, start, seq, n, args.threads), executorch_kernel(start, seq, n, args.threads)
        rows.append({"case": name, "start_pos": start, "rows": seq, "ours_ms": a, "executorch_ms": b, "ours_speedup": b / a})
    result = {"shape": {"heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "cache": CACHE},
              "threads": args.threads, "results": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
