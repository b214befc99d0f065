"""The decode step's matmuls alone, lowered as the ExecuTorch export lowers them: how close XNNPACK's kernels get
to the read roofline at the MobileVLM V2 1.7B shape, per weight scheme (issue 17 §3, decode at 80% of roofline).

A module holding exactly the weights one decoded token multiplies by (24 layers of q, k, v, o, gate, up, down at
2048 / 5632 wide, and the 32,000-row lm_head: 1.41 G weights, far larger than the last-level cache) runs one
token through them, with no attention, norm or cache, so its time is the linears' time. Each variant is
quantised with the export's own `quantize_decoder_linears` (8da4w: int4 in groups, the lm_head int8 as the
export keeps it; 8da8w: int8 per channel) and lowered with the export's partitioners (each dynamically quantised
linear its own XNNPACK delegate call), then run in ExecuTorch's Python runtime. Reported per variant: ms per
token (median of `--iters` after `--warmup`), weight bytes, the read rate they imply and its share of the read
bandwidth the benchmark measures itself (`runtimes.read_bandwidth`, before and after). The decode step of a
whole bundle adds attention, norms, the cache and the embedding: `etdump_ops.py` splits that one.

    python benchmarks/decode_linears.py                                  # 8da4w g32, g128, g256 and 8da8w
    python benchmarks/decode_linears.py --variants 8da4w:32 --layers 4   # a quick look (4 layers fit the LLC: not a roofline)
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))



def real_shape() -> tuple[int, int, int, int]:
    """(layers, hidden, ffn, vocab) of MobileVLM V2 1.7B's language model, from the project's own config."""
    from alignkd.models.mobilevlm import mobilevlm_v2_1_7b

    llm = mobilevlm_v2_1_7b().llm
    return llm.num_hidden_layers, llm.hidden_size, llm.intermediate_size, llm.vocab_size


def linear_stack(layers: int, hidden: int, ffn: int, vocab: int, seed: int = 0):
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden, bias=False) for _ in range(4))
            self.gate, self.up = nn.Linear(hidden, ffn, bias=False), nn.Linear(hidden, ffn, bias=False)
            self.down = nn.Linear(ffn, hidden, bias=False)

        def forward(self, x):
            x = x + self.o(self.q(x) + self.k(x) + self.v(x))
            return x + self.down(self.gate(x) * self.up(x))

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.lm_head = nn.Linear(hidden, vocab, bias=False)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return self.lm_head(x)

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Stack()
    model.to_empty(device="cpu")
    for p in model.parameters():
        p.data.normal_(0.0, 0.02)
    return model.eval()


def weight_bytes(model, scheme: str, group: int) -> float:
    """Bytes one token reads: int4 + a 2-byte scale per group, or int8 + a 4-byte scale per row; the lm_head int8."""
    int8 = lambda w: w.numel() + 4 * w.shape[0]
    return float(sum(int8(w) if scheme == "8da8w" or name.startswith("lm_head") else w.numel() * (0.5 + 2 / group)
                     for name, w in model.named_parameters()))


def lower(model, example, scheme: str, group: int, out: Path) -> dict:
    import torch
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    from alignkd.export.quantize import quantize_decoder_linears

    t0 = time.perf_counter()
    quantize_decoder_linears(model, scheme, group, lm_head="lm_head")
    program = torch.export.export(model, (example,), strict=False)
    edge = to_edge_transform_and_lower(
        program, partitioner=[XnnpackPartitioner(config_precisions=ConfigPrecisionType.DYNAMIC_QUANT, per_op_mode=True),
                              XnnpackPartitioner()],
        compile_config=EdgeCompileConfig(_check_ir_validity=False))
    del program
    gc.collect()
    with open(out, "wb") as f:
        edge.to_executorch().write_to_file(f)
    graph = edge.exported_program().graph_module.graph
    calls = sum(1 for n in graph.nodes if n.op == "call_function" and "executorch_call_delegate" in str(n.target))
    portable = sorted({str(n.target) for n in graph.nodes if n.op == "call_function"
                       and "executorch_call_delegate" not in str(n.target) and "getitem" not in str(n.target)})
    return {"lower_s": round(time.perf_counter() - t0, 1), "delegate_calls": calls, "portable_ops": portable}


def time_pte(pte: Path, example, warmup: int, iters: int) -> list[float]:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(pte)).load_method("forward")
    for _ in range(warmup):
        method.execute([example])
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        method.execute([example])
        samples.append(1e3 * (time.perf_counter() - t0))
    return samples


def main(argv=None) -> dict:
    import torch
    from runtimes import read_bandwidth

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=["8da4w:32", "8da4w:128", "8da4w:256", "8da8w:0"],
                    help="SCHEME:GROUP (8da4w:32, 8da8w:0)")
    layers, *dims = real_shape()
    ap.add_argument("--layers", type=int, default=layers)
    ap.add_argument("--dims", type=int, nargs=3, default=tuple(dims), metavar=("HIDDEN", "FFN", "VOCAB"),
                    help="another shape (tests use a tiny one)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--bandwidth-mb", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    variants = []
    for v in args.variants:
        scheme, _, group = v.partition(":")
        if scheme not in ("8da4w", "8da8w") or not group.isdigit() or (scheme == "8da4w" and int(group) % 32):
            raise SystemExit(f"--variants {v}: expected 8da4w:GROUP (a multiple of 32) or 8da8w:0")
        variants.append((scheme, int(group)))

    hidden, ffn, vocab = args.dims
    before = read_bandwidth(2, args.bandwidth_mb, 7)
    example = torch.randn(1, 1, hidden)
    rows = []
    for scheme, group in variants:
        model = linear_stack(args.layers, hidden, ffn, vocab)
        n_weights = sum(p.numel() for p in model.parameters())
        nbytes = weight_bytes(model, scheme, group)
        with tempfile.TemporaryDirectory() as tmp:
            pte = Path(tmp) / "linears.pte"
            info = lower(model, example, scheme, group, pte)
            del model
            gc.collect()
            samples = time_pte(pte, example, args.warmup, args.iters)
            size = pte.stat().st_size
        ms = statistics.median(samples)
        rows.append({"scheme": scheme, "group": group or None, "weights": n_weights, "weight_bytes": nbytes,
                     "pte_bytes": size, "ms_per_token": round(ms, 3), "ms_min": round(min(samples), 3),
                     "ms_max": round(max(samples), 3), "read_gb_s": round(nbytes / ms / 1e6, 2), **info})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    after = read_bandwidth(2, args.bandwidth_mb, 7)
    bandwidth = statistics.median(before + after)
    for r in rows:
        r["pct_of_read_bandwidth"] = round(100 * r["read_gb_s"] / bandwidth, 1)
        r["roofline_ms"] = round(r["weight_bytes"] / bandwidth / 1e6, 3)
    result = {"shape": {"layers": args.layers, "hidden": hidden, "ffn": ffn, "vocab": vocab}, "threads": torch.get_num_threads(),
              "bandwidth": {"median_gb_s": round(bandwidth, 2), "samples_gb_s": [round(s, 2) for s in before + after]},
              "rows": rows}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
