"""Every runtime on one model in one run, side by side with llama.cpp: load, image encode, prefill tok/s at ~190
positions, decode tok/s over 64 tokens, peak RSS and size on disk; ratios against llama.cpp at matched bits; the
decode roofline (bytes read per decoded token / read bandwidth measured by this script). Table on stdout, JSON file.

Rows (`--only` picks some): eager:fp32; executorch:{fp32,8da8w,8da4w} (Python runtime) and
executorch-native:{...} (`alignkd-runner`, the same bundles); onnx:{fp32,int8,int4};
llama.cpp:{f16,q8_0,q4_0,q4_k_s}. Bundles are looked up as TARGET_SCHEME subfolders (executorch_8da4w, onnx_int4,
gguf_q4_k_s, ...) of `--bundles DIR`, then of `--workdir`; `--export-missing` exports the missing ones into
`--workdir` (`alignkd export ... --max-seq-len 512 --allow-drift`; ~15 min each at the real shape). Every row
is measured with `alignkd profile`'s protocol (each round loads afresh; the synthetic picture, ~190 prefill
positions, exactly N new tokens) in its own process, so each peak RSS is that runtime's alone; `--rounds K`
alternates all rows K times and each figure is the median over rounds (ratios: from those medians, plus the
per-round decode ratios). llama.cpp rows go through `alignkd profile GGUF_BUNDLE` when the runtime knows GGUF
bundles, else straight through llama-cpp-python (`--child-llama`: token prefill of the same length as llama-bench
-p does, mtmd image encode). A runtime that cannot run is an explicit `"status": "unavailable"` row with a reason.

    python benchmarks/runtimes.py --only eager:fp32 onnx:int4 llama.cpp:q4_k_s --export-missing --rounds 1
    python benchmarks/runtimes.py --checkpoint runs/bench_17b/real_shape_ckpt --bundles runs/bench_17b --rounds 2 \
        --runs 1 --warmup 1 --only eager:fp32 executorch:8da4w executorch-native:8da4w llama.cpp:q4_k_s llama.cpp:q4_0
    python benchmarks/runtimes.py --real-shape --export-missing --workdir runs/runtimes_17b --rounds 3
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY = ROOT / "tests/fixtures/mobilevlm_official_tiny/checkpoint"
TARGET = {"eager": None, "executorch": "executorch", "executorch-native": "executorch", "onnx": "onnx", "llama.cpp": "gguf"}
DEFAULT_ROWS = ("eager:fp32", "executorch:fp32", "executorch:8da8w", "executorch:8da4w", "executorch-native:fp32",
                "executorch-native:8da8w", "executorch-native:8da4w", "onnx:fp32", "onnx:int8", "onnx:int4",
                "llama.cpp:f16", "llama.cpp:q8_0", "llama.cpp:q4_0", "llama.cpp:q4_k_s")
# llama.cpp rows each scheme is compared with: 8-bit vs q8_0, 4-bit vs q4_k_s and q4_0, float vs f16.
MATCHED = {"fp32": ("f16",), "8da8w": ("q8_0",), "int8": ("q8_0",), "8da4w": ("q4_k_s", "q4_0"), "int4": ("q4_k_s", "q4_0")}
KEYS = ("load_s", "vision_encode_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "size_mb")
MAX_SEQ_LEN = 512  # ~190 prompt positions + 64 new tokens fit; a small cache keeps exports light
# Bytes per weight of the decoder's linears where the bundle's files do not say it directly. XNNPACK's blockwise
# int4 keeps a bf16 scale per group; 8da8w an fp32 scale per output channel; llama.cpp blocks are 32 or 256 weights.
GGML_BYTES_PER_WEIGHT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_k_s": 144 / 256}
KV_BYTES = {"gguf": 2}  # llama.cpp's cache is f16; ExecuTorch, ONNX and eager keep fp32 caches


class Unavailable(Exception):
    """A row that cannot be measured; its message is the reason shown in the table and the JSON."""


# ---------------------------------------------------------------- bundles and exports

def parse_rows(names) -> list[dict]:
    """Row dicts for RUNTIME:SCHEME names; ValueError naming the first that is not one of DEFAULT_ROWS."""
    rows = []
    for name in names:
        if name not in DEFAULT_ROWS:
            raise ValueError(f"row {name!r} is not one of: {' '.join(DEFAULT_ROWS)}")
        runtime, _, scheme = name.partition(":")
        rows.append({"row": name, "runtime": runtime, "scheme": scheme, "status": "ok", "per_round": []})
    return rows


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or ["no message"])[-1].removeprefix("error: ")


def locate(row: dict, checkpoint: Path, dirs: list[Path], workdir: Path, export_missing: bool, exported: dict) -> Path:
    """The row's model folder: the checkpoint for eager, else TARGET_SCHEME under --bundles / --workdir."""
    if row["runtime"] == "eager":
        return checkpoint
    if row["runtime"] == "executorch-native":  # before any export: no runner, no row
        from alignkd.errors import AlignKDError
        from alignkd.runtime.native import find_runner

        try:
            find_runner()
        except AlignKDError as err:
            raise Unavailable(str(err)) from None
    name = f"{TARGET[row['runtime']]}_{row['scheme']}"
    for folder in dirs:
        if (folder / name / "manifest.json").is_file():
            return folder / name
    if not export_missing:
        raise Unavailable(f"no bundle {name}/ in {', '.join(map(str, dirs))}; pass --bundles DIR holding it or --export-missing")
    if name not in exported:  # native and Python ExecuTorch rows share one export
        exported[name] = export(checkpoint, TARGET[row["runtime"]], row["scheme"], workdir / name)
    if isinstance(exported[name], Unavailable):
        raise exported[name]
    return exported[name]


def export(checkpoint: Path, target: str, scheme: str, out: Path) -> Path | Unavailable:
    """`alignkd export` in its own process (its peak memory is not ours); the failure's own line as the reason."""
    cmd = [sys.executable, "-m", "alignkd", "export", str(checkpoint), "--target", target, "--quant", scheme, "-o", str(out),
           "--max-seq-len", str(MAX_SEQ_LEN), "--allow-drift", "--overwrite"]
    print(f"exporting {out.name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env())
    if proc.returncode:
        return Unavailable(f"alignkd export --target {target} --quant {scheme} failed: {_last_error(proc.stderr)}")
    print(f"exported {out.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------- measuring one row

def _env(threads: int | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op pool (eager, the ExecuTorch Python runtime's torch side)
    return env


def profile_cli(model: Path, args) -> dict:
    cmd = [sys.executable, "-m", "alignkd", "profile", str(model), "--runs", str(args.runs), "--warmup", str(args.warmup),
           "--max-new-tokens", str(args.max_new_tokens), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(args.threads))
    if proc.returncode:
        raise Unavailable(f"alignkd profile failed: {_last_error(proc.stderr)}")
    return json.loads(proc.stdout)


def profile_llama(model: Path, args, positions: int) -> dict:
    """`alignkd profile` when it runs GGUF bundles; else llama-cpp-python directly (this script's --child-llama)."""
    try:
        return {**profile_cli(model, args), "driver": "alignkd profile"}
    except Unavailable as err:
        first = str(err)
    if importlib.util.find_spec("llama_cpp") is None:
        raise Unavailable(f"{first}; and llama-cpp-python is not installed (pip install llama-cpp-python) to run it directly")
    cmd = [sys.executable, __file__, "--child-llama", str(model), "--runs", str(args.runs), "--warmup", str(args.warmup),
           "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads), "--positions", str(positions)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(args.threads))
    if proc.returncode:
        raise Unavailable(f"{first}; llama-cpp-python directly: {_last_error(proc.stderr)}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "driver": "llama-cpp-python (direct)"}


def measure(row: dict, args, positions: int) -> dict:
    if row["runtime"] == "executorch-native":
        from alignkd.errors import AlignKDError
        from alignkd.runtime.native import profile_native

        try:
            return {**profile_native(row["model"], runs=args.runs, warmup=args.warmup, max_new_tokens=args.max_new_tokens,
                                     threads=args.threads), "driver": "alignkd-runner"}
        except AlignKDError as err:
            raise Unavailable(str(err)) from None
    if row["runtime"] == "llama.cpp":
        return profile_llama(row["model"], args, positions)
    return {**profile_cli(row["model"], args), "driver": "alignkd profile"}


def summarise(row: dict) -> None:
    """Medians over the rounds of each round's own median (peak RSS: the worst round)."""
    rounds = row["per_round"]
    for key in KEYS:
        values = [r[key] for r in rounds if r.get(key) is not None]
        row[key] = (max(values) if key == "peak_rss_mb" else statistics.median(values)) if values else None


# ---------------------------------------------------------------- llama.cpp without the alignkd backend

def gguf_files(bundle: Path) -> tuple[Path, Path | None]:
    """(language model, mmproj) of a GGUF bundle: the manifest's parts, else the file names."""
    manifest = bundle / "manifest.json"
    parts = json.loads(manifest.read_text()).get("parts", {}) if manifest.is_file() else {}
    lm = parts.get("text_decoder", {}).get("file")
    proj = parts.get("vision_encoder", {}).get("file")
    ggufs = sorted(bundle.glob("*.gguf"))
    lm = bundle / lm if lm else next((f for f in ggufs if "mmproj" not in f.name), None)
    proj = bundle / proj if proj else next((f for f in ggufs if "mmproj" in f.name), None)
    if lm is None:
        raise SystemExit(f"error: {bundle} holds no language-model .gguf file")
    return lm, proj


def _encode_image(llm, proj: Path, threads: int) -> float:
    """Seconds mtmd takes to encode the synthetic picture into image tokens (CLIP + projector)."""
    import numpy as np
    from llama_cpp import mtmd_cpp

    from alignkd.runtime.profile import synthetic_image

    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu, params.print_timings, params.n_threads = False, False, threads
    ctx = mtmd_cpp.mtmd_init_from_file(str(proj).encode(), llm.model, params)
    if ctx is None:
        raise RuntimeError(f"mtmd could not load {proj.name}")
    rgb = np.asarray(synthetic_image().convert("RGB"), dtype=np.uint8)
    bitmap = mtmd_cpp.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes()))
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    try:
        text = mtmd_cpp.mtmd_input_text()
        marker = mtmd_cpp.mtmd_default_marker()
        text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
        if mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap), 1):
            raise RuntimeError("mtmd_tokenize failed")
        for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
            chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
            if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                t0 = time.perf_counter()
                if mtmd_cpp.mtmd_encode_chunk(ctx, chunk):
                    raise RuntimeError("mtmd_encode_chunk failed")
                return time.perf_counter() - t0
        raise RuntimeError("mtmd made no image chunk")
    finally:
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_bitmap_free(bitmap)
        mtmd_cpp.mtmd_free(ctx)


def llama_round(lm: Path, proj: Path | None, threads: int, positions: int, new_tokens: int) -> dict:
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    from alignkd.runtime.profile import _peak_rss_mb, _reset_peak_rss

    _reset_peak_rss()
    t0 = time.perf_counter()
    llm = Llama(model_path=str(lm), n_ctx=MAX_SEQ_LEN, n_batch=MAX_SEQ_LEN, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    run = {"load_s": time.perf_counter() - t0, "vision_encode_s": None}
    if proj is not None:
        try:
            run["vision_encode_s"] = _encode_image(llm, proj, threads)
        except Exception as err:  # noqa: BLE001 (the text figures stay valid; the reason is kept)
            run["vision_error"] = str(err)
    tokens = [1] + [3 + (7 * i) % 500 for i in range(positions - 1)]  # llama-bench -p: any ids, this many positions
    t0 = time.perf_counter()
    llm.eval(tokens)
    run["prefill_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_vocab = llm.n_vocab()
    for _ in range(new_tokens - 1):  # as generate(): the first new token comes from prefill's logits
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(n_vocab,))  # Llama.eval keeps none
        llm.eval([int(np.argmax(logits))])
    run["decode_s"] = time.perf_counter() - t0
    run.update(prefill_tokens=positions, decode_tokens=new_tokens - 1, prefill_tok_s=positions / run["prefill_s"],
               decode_tok_s=(new_tokens - 1) / run["decode_s"], peak_rss_mb=_peak_rss_mb())
    llm.close()
    del llm
    gc.collect()
    return run


def child_llama(args) -> None:
    """`alignkd profile`'s JSON keys for a GGUF bundle through llama-cpp-python, rounds loaded afresh."""
    from alignkd.runtime.profile import MB, _cpu_name

    lm, proj = gguf_files(args.child_llama)
    raw = [llama_round(lm, proj, args.threads, args.positions, args.max_new_tokens)
           for _ in range(args.warmup + args.runs)][args.warmup:]
    out = {"model": str(args.child_llama), "kind": "gguf", "device": {"name": "host", "cpu": _cpu_name(), "threads": args.threads},
           "prefill_tokens": args.positions, "decode_tokens": args.max_new_tokens - 1,
           "size_mb": sum(f.stat().st_size for f in (lm, proj) if f is not None) / MB, "raw": raw}
    for key in ("load_s", "vision_encode_s", "prefill_s", "prefill_tok_s", "decode_s", "decode_tok_s"):
        values = [r[key] for r in raw if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in raw)
    errors = [r["vision_error"] for r in raw if "vision_error" in r]
    if errors:
        out["vision_error"] = errors[0]
    print(json.dumps(out))


# ---------------------------------------------------------------- roofline

def read_bandwidth(threads: int, mb: int, repeats: int) -> list[float]:
    """GB/s of `threads` threads each taking np.max over its share of a float32 buffer (SIMD, no add chain, so it is
    bound by memory, not by a dependent sum); the buffer should be far larger than the last-level cache."""
    import numpy as np

    buf = np.ones(mb * 2**20 // 4, dtype=np.float32)
    shares = np.array_split(buf, threads)
    samples = []
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.max, shares))  # pages touched once before timing
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.max, shares))
            samples.append(buf.nbytes / (time.perf_counter() - t0) / 1e9)
    return samples


def model_dims(checkpoint: Path) -> dict:
    cfg = json.loads((checkpoint / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    return {"hidden": cfg["hidden_size"], "layers": cfg["num_hidden_layers"], "heads": heads,
            "kv_heads": cfg.get("num_key_value_heads", heads), "head_dim": cfg["hidden_size"] // heads,
            "ffn": cfg["intermediate_size"], "vocab": cfg["vocab_size"]}


def linear_weights(d: dict) -> int:
    """Weights of every matmul one decoded token runs: q, k, v, o, gate, up, down in each layer, and lm_head."""
    attn = d["hidden"] * d["head_dim"] * (2 * d["heads"] + 2 * d["kv_heads"])
    return d["layers"] * (attn + 3 * d["hidden"] * d["ffn"]) + d["vocab"] * d["hidden"]


def weight_bytes(row: dict, d: dict) -> tuple[float, str]:
    """Bytes of weights read per decoded token, and where the figure comes from."""
    target, scheme = TARGET[row["runtime"]], row["scheme"]
    if target == "onnx":  # the decoder part holds exactly these weights (lm_head included, embedding apart)
        manifest = json.loads((row["model"] / "manifest.json").read_text())
        stem = manifest["parts"]["text_decoder"]["file"]
        return sum(f["bytes"] for name, f in manifest["files"].items() if name.startswith(stem)), "text_decoder files"
    if target == "gguf":
        return _gguf_weight_bytes(row["model"], scheme, d)
    if scheme == "fp32":
        return 4.0 * linear_weights(d), "fp32 linears (model dims)"
    manifest = json.loads((row["model"] / "manifest.json").read_text())
    group = manifest["quant"].get("group_size", 32)
    int8 = 1 + 4 / d["hidden"]  # int8 per output channel, an fp32 scale per row
    if scheme != "8da4w":
        return int8 * linear_weights(d), f"{scheme} linears (model dims)"
    head = d["vocab"] * d["hidden"]
    head_bits = manifest["quant"].get("lm_head_bits", 4)  # bundles before the lm_head fix kept it at int4
    head_bytes = int8 * head if head_bits == 8 else (0.5 + 2 / group) * head
    return (0.5 + 2 / group) * (linear_weights(d) - head) + head_bytes, \
        f"8da4w linears (model dims, group {group}, lm_head int{head_bits})"


def _gguf_weight_bytes(bundle: Path, scheme: str, d: dict) -> tuple[float, str]:
    lm, _ = gguf_files(bundle)
    try:
        from gguf import GGUFReader

        tensors = GGUFReader(str(lm)).tensors
        return float(sum(int(t.n_bytes) for t in tensors if t.name != "token_embd.weight")), "GGUF tensor table"
    except ImportError:  # the file less an estimate of its embedding table
        per_weight = GGML_BYTES_PER_WEIGHT.get(scheme, 2.0)
        return lm.stat().st_size - per_weight * d["vocab"] * d["hidden"], "GGUF file size less its embedding (estimate)"


def roofline(row: dict, d: dict, read_gb_s: float) -> dict:
    weights, source = weight_bytes(row, d)
    position = row["prefill_tokens"] + row["decode_tokens"] / 2  # the mean position a decoded token attends over
    kv = 2 * d["layers"] * d["kv_heads"] * d["head_dim"] * position * KV_BYTES.get(TARGET[row["runtime"]], 4)
    tok_s = read_gb_s * 1e9 / (weights + kv)
    return {"weight_bytes": weights, "weight_source": source, "kv_bytes": kv, "bytes_per_token": weights + kv,
            "read_gb_s": read_gb_s, "roofline_tok_s": tok_s,
            "decode_pct_of_roofline": 100 * row["decode_tok_s"] / tok_s if row.get("decode_tok_s") else None}


# ---------------------------------------------------------------- ratios

def ratios(rows: list[dict]) -> list[dict]:
    """Each non-llama.cpp row against the llama.cpp rows of matched bits; speedups > 1 mean ours is faster,
    memory and size ratios < 1 mean ours is smaller. An unmeasured side makes the pair explicitly unavailable."""
    by_name = {r["row"]: r for r in rows}
    out = []
    for row in rows:
        if row["runtime"] == "llama.cpp":
            continue
        for ref_scheme in MATCHED.get(row["scheme"], ()):
            ref = by_name.get(f"llama.cpp:{ref_scheme}")
            pair = {"row": row["row"], "against": f"llama.cpp:{ref_scheme}"}
            missing = [r["row"] for r in (row, ref) if r is not None and r["status"] != "ok"]
            if ref is None:
                pair.update(status="unavailable", reason=f"{pair['against']} is not among this run's rows (--only)")
            elif missing:
                pair.update(status="unavailable", reason=f"{', '.join(missing)} not measured in this run")
            else:
                pair.update(status="ok", **_pair(row, ref))
            out.append(pair)
    return out


def _quotient(a, b):
    return a / b if a is not None and b else None


def _pair(row: dict, ref: dict) -> dict:
    per_round = [_quotient(a.get("decode_tok_s"), b.get("decode_tok_s")) for a, b in zip(row["per_round"], ref["per_round"])]
    return {"decode_speedup": _quotient(row["decode_tok_s"], ref["decode_tok_s"]),
            "prefill_speedup": _quotient(row["prefill_tok_s"], ref["prefill_tok_s"]),
            "vision_encode_speedup": _quotient(ref["vision_encode_s"], row["vision_encode_s"]),
            "load_speedup": _quotient(ref["load_s"], row["load_s"]),
            "peak_rss_ratio": _quotient(row["peak_rss_mb"], ref["peak_rss_mb"]),
            "size_ratio": _quotient(row["size_mb"], ref["size_mb"]),
            "decode_speedup_by_round": per_round}


# ---------------------------------------------------------------- output

def _num(value, digits=2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_tables(result: dict) -> str:
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['model']}: {result['cpu']}, {result['threads']} threads, {result['rounds']} rounds "
                        f"(read bandwidth {result['bandwidth']['median_gb_s']:.1f} GB/s)")
    for col in ("row", "load s", "vision s", "prefill tok/s", "decode tok/s", "% roofline", "peak RSS MB", "size MB"):
        table.add_column(col, justify="left" if col == "row" else "right")
    notes = []
    for r in result["rows"]:
        if r["status"] != "ok":
            table.add_row(r["row"], *["n/a"] * 7)
            notes.append(f"  {r['row']} unavailable: {r['reason']}")
            continue
        pct = (r.get("roofline") or {}).get("decode_pct_of_roofline")
        table.add_row(r["row"], _num(r["load_s"]), _num(r["vision_encode_s"]), _num(r["prefill_tok_s"], 1),
                      _num(r["decode_tok_s"]), _num(pct, 0), _num(r["peak_rss_mb"], 0), _num(r["size_mb"], 1))
    pairs = Table(title="against llama.cpp at matched bits (speedup > 1: ours faster; ratio < 1: ours smaller)")
    for col in ("row", "against", "decode x", "prefill x", "vision x", "peak RSS ratio", "size ratio"):
        pairs.add_column(col, justify="left" if col in ("row", "against") else "right")
    pair_notes = []
    for p in result["ratios"]:
        if p["status"] != "ok":
            pairs.add_row(p["row"], p["against"], *["n/a"] * 5)
            pair_notes.append(f"  {p['row']} vs {p['against']} unavailable: {p['reason']}")
            continue
        pairs.add_row(p["row"], p["against"], *[_num(p[k]) for k in ("decode_speedup", "prefill_speedup",
                                                                      "vision_encode_speedup", "peak_rss_ratio", "size_ratio")])
    buf = io.StringIO()
    console = Console(file=buf, width=160, force_terminal=False, color_system=None)
    console.print(table)
    console.print("\n".join(notes), markup=False, highlight=False, soft_wrap=True)
    console.print(pairs)
    console.print("\n".join(pair_notes), markup=False, highlight=False, soft_wrap=True)
    return buf.getvalue()


def resolve_checkpoint(args) -> tuple[Path, str]:
    if args.checkpoint is not None:
        return args.checkpoint, args.checkpoint.name
    if args.real_shape:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from export_targets import real_shape_checkpoint

        real = args.workdir / "real_shape_ckpt"
        return real_shape_checkpoint(real), "mobilevlm_v2_1.7b_shape_random"
    return TINY, "mobilevlm_official_tiny"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="source checkpoint (default: the tiny official fixture)")
    ap.add_argument("--real-shape", action="store_true", help="MobileVLM V2 1.7B shape, random weights (made in --workdir)")
    ap.add_argument("--bundles", type=Path, action="append", default=[], help="folder of TARGET_SCHEME bundles (repeatable)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "runtimes", help="exports and the JSON go here")
    ap.add_argument("--export-missing", action="store_true", help="export the bundles not found into --workdir")
    ap.add_argument("--only", nargs="*", default=None, help=f"rows (default: all): {' '.join(DEFAULT_ROWS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=1, help="measured runs per row per round (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bandwidth-mb", type=int, default=1024, help="read-test buffer (make it far larger than the LLC)")
    ap.add_argument("--bandwidth-repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None, help="JSON output (default: WORKDIR/runtimes.json)")
    ap.add_argument("--child-llama", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--positions", type=int, default=188, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:  # bad input is one line and exit 2 before anything is measured or exported
        args.rows = parse_rows(args.only or DEFAULT_ROWS)
    except ValueError as err:
        ap.error(f"{err}; pick rows from that list with --only")
    if args.checkpoint is not None and not (args.checkpoint / "config.json").is_file():
        ap.error(f"--checkpoint {args.checkpoint} has no config.json; pass the MobileVLM checkpoint folder the bundles were exported from")
    if min(args.rounds, args.runs, args.threads) < 1 or args.warmup < 0 or args.max_new_tokens < 2:
        ap.error("need --rounds, --runs, --threads >= 1, --warmup >= 0 and --max-new-tokens >= 2")
    return args


def run_rounds(rows: list[dict], args) -> None:
    """All live rows once per round, in order, so a slow spell of the shared machine falls on every row."""
    for k in range(args.rounds):
        for row in rows:
            if row["status"] != "ok":
                continue
            positions = next((r["per_round"][-1]["prefill_tokens"] for r in rows if r["per_round"]), args.positions)
            print(f"round {k + 1}/{args.rounds}: {row['row']}", file=sys.stderr, flush=True)
            try:
                got = measure(row, args, positions)
            except Unavailable as err:
                row.update(status="unavailable", reason=str(err))
                continue
            row["driver"] = got["driver"]
            row["per_round"].append({key: got.get(key) for key in KEYS + ("prefill_tokens", "decode_tokens", "vision_error")})


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.child_llama:
        return child_llama(args)
    from alignkd.runtime.profile import _cpu_name

    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint, model_name = resolve_checkpoint(args)
    rows = args.rows
    exported: dict = {}
    for row in rows:
        try:
            row["model"] = locate(row, checkpoint, args.bundles + [args.workdir], args.workdir, args.export_missing, exported)
        except Unavailable as err:
            row.update(status="unavailable", reason=str(err))
    bandwidth = read_bandwidth(args.threads, args.bandwidth_mb, args.bandwidth_repeats)
    run_rounds(rows, args)
    bandwidth += read_bandwidth(args.threads, args.bandwidth_mb, args.bandwidth_repeats)  # before and after: drift shows
    read_gb_s = statistics.median(bandwidth)
    dims = model_dims(checkpoint)
    for row in rows:
        if row["status"] == "ok":
            summarise(row)
            row["prefill_tokens"], row["decode_tokens"] = row["per_round"][0]["prefill_tokens"], row["per_round"][0]["decode_tokens"]
            row["roofline"] = roofline(row, dims, read_gb_s)
        if "model" in row:
            row["model"] = str(row["model"])
    result = {"model": model_name, "checkpoint": str(checkpoint), "cpu": _cpu_name(), "cores": os.cpu_count(),
              "threads": args.threads, "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
              "max_new_tokens": args.max_new_tokens, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(["python", "benchmarks/runtimes.py"] + list(argv if argv is not None else sys.argv[1:])),
              "bandwidth": {"method": f"np.max over a {args.bandwidth_mb} MiB float32 buffer, {args.threads} threads",
                            "samples_gb_s": bandwidth, "median_gb_s": read_gb_s},
              "dims": dims, "rows": rows, "ratios": ratios(rows)}
    out = args.json or args.workdir / "runtimes.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(format_tables(result) + f"JSON: {out}")
    return result


if __name__ == "__main__":
    main()
