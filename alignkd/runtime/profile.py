"""Entry function behind `alignkd profile`: load time, vision encode, prefill, decode and memory of one model.

Each of `warmup + runs` rounds loads the model afresh (timed), preprocesses one image, and generates exactly
`max_new_tokens` tokens (stop strings and eos ignored, so every round decodes the same length) from a prompt
of about 190 prefill positions (v1 system text + 144 image tokens + filler question), the prefill length of
the llama.cpp comparison in the project's same-machine llama.cpp anchors (docs/). The summary is the median over the measured
rounds, with p90 and the per-round raw numbers alongside. `device` names where it runs: `host` here; phones
(`--device android|ios`, alignkd.runtime.device) fill the same JSON, `device` block included.

    alignkd profile MODEL --runs 5 --warmup 1 --json --plot latency.png
    python -m pytest tests/runtime/test_profile.py -q
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import sys
import time
from pathlib import Path

from alignkd.errors import AlignKDError

DEVICES = ("host", "android", "ios")
PREFILL_TARGET = 190  # llama-bench -p 190 in the perf anchors
DEFAULT_QUESTION = "What is in the picture?"  # then filler words up to PREFILL_TARGET positions
FILLER = "Please also mention everything else that stands out about the shapes, the text, the colours and the layout."
METRICS = ("load_s", "preprocess_s", "vision_encode_s", "prefill_s", "ttft_s", "prefill_tok_s", "decode_s",
           "decode_tok_s", "peak_rss_mb")
MB = 2**20  # "MB" here is MiB, as top and ps count


def _device_block(device: str) -> dict:
    if device == "android":  # phones run their own runtime: alignkd.runtime.device, not this Python loop
        raise AlignKDError("--device android runs the bundle on a phone over adb, not in this Python runtime; "
                           "use `alignkd profile BUNDLE --device android` (alignkd.runtime.device.profile_android).")
    if device == "ios":
        raise AlignKDError("--device ios reads the iOS demo app's benchmark JSON (needs Xcode's devicectl or --from-json); "
                           "use `alignkd profile BUNDLE --device ios` (alignkd.runtime.device.profile_ios).")
    if device != "host":
        raise AlignKDError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}.")
    import torch

    return {"name": "host", "os": platform.platform(), "cpu": _cpu_name(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "python": sys.version.split()[0], "torch": torch.__version__}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _reset_peak_rss() -> bool:
    """Linux lets a process reset its RSS high-water mark (VmHWM) by writing 5 to clear_refs; so each round's
    peak is its own, not the process's lifetime peak. False where unavailable (then peaks are cumulative)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB


def synthetic_image(size: int = 336):
    """A deterministic RGB picture (gradient + shapes) so runs need no file."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size))
    img.putdata([(x * 255 // size, y * 255 // size, 128) for y in range(size) for x in range(size)])
    draw = ImageDraw.Draw(img)
    draw.ellipse((size // 8, size // 8, size // 2, size // 2), fill=(220, 30, 30))
    draw.rectangle((size // 2, size // 2, size - size // 8, size - size // 8), fill=(30, 30, 220))
    return img


def fit_prompt(loaded, n_image_tokens: int, target: int = PREFILL_TARGET) -> str:
    """The longest DEFAULT_QUESTION + filler words whose prompt takes at most `target` prefill positions."""
    from alignkd.data.templates import tokenize_with_image
    from alignkd.runtime.generation import build_prompt

    words = (" " + FILLER) * 8
    words = words.split()

    def positions(n: int) -> int:
        prompt = build_prompt(" ".join([DEFAULT_QUESTION] + words[:n]), 1, loaded.template)
        return len(tokenize_with_image(prompt, loaded.tokenizer)) - 1 + n_image_tokens

    lo, hi = 0, len(words)  # positions() grows with n: binary search for the largest n within target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if positions(mid) <= target else (lo, mid - 1)
    return " ".join([DEFAULT_QUESTION] + words[:lo])


def _one_round(model_path, dtype: str, image, prompt: str | None, max_new_tokens: int) -> tuple[dict, str]:
    from alignkd.data.image import ImageProcessor
    from alignkd.runtime.generation import GenerationConfig, build_prompt, generate
    from alignkd.runtime.loader import load_model

    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    loaded = load_model(model_path, dtype=dtype)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pixels = ImageProcessor(loaded.image_config)([image])
    preprocess_s = time.perf_counter() - t0
    if prompt is None:
        prompt = fit_prompt(loaded, loaded.backend.encode_image(pixels).shape[1])
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_strings=(), ignore_eos=True)
    result = generate(loaded.backend, loaded.tokenizer, build_prompt(prompt, 1, loaded.template), pixels, config,
                      loaded.template)
    run = {"load_s": load_s, "preprocess_s": preprocess_s, **result.timings, "peak_rss_mb": _peak_rss_mb(),
           "peak_rss_per_round": reset}
    info = {"kind": loaded.kind, "size_mb": loaded.size_bytes / MB, "prompt": prompt}
    del loaded, result  # free this round's model before the next load, so peaks do not stack
    gc.collect()
    return run, info


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def profile(model_path, device: str = "host", runs: int = 5, warmup: int = 1, image=None, prompt: str | None = None,
            max_new_tokens: int = 32, *, dtype: str = "float32", plot=None) -> dict:
    """Median and p90 of each latency over `runs` measured rounds (after `warmup`); see the module docstring.

    `image`: a path, a PIL image or None (a synthetic picture); `prompt`: the question (None: ~190 positions).
    A plot that cannot be written does not lose the measurements: they are returned with `plot_error` set.
    """
    block = _device_block(device)  # before anything heavy: a phone request fails in a second
    if runs < 1 or warmup < 0 or max_new_tokens < 2:
        raise AlignKDError(f"runs={runs}, warmup={warmup}, max_new_tokens={max_new_tokens}: need runs >= 1, "
                           "warmup >= 0 and max_new_tokens >= 2 (decode speed needs a second token).")
    if plot is not None:
        _require_matplotlib()
    if image is None:
        image = synthetic_image()
    elif isinstance(image, (str, Path)):
        from alignkd.data.image import load_image

        image = load_image(image)
    raw, info = [], {}
    for i in range(warmup + runs):
        run, info = _one_round(model_path, dtype, image, prompt, max_new_tokens)
        prompt = info["prompt"]  # fitted once, identical for every round
        if i >= warmup:
            raw.append(run)
    out = {"model": str(model_path), "kind": info["kind"], "device": block, "runs": runs, "warmup": warmup,
           "dtype": dtype, "max_new_tokens": max_new_tokens, "prompt": prompt,
           "prefill_tokens": raw[0]["prefill_tokens"], "decode_tokens": raw[0]["decode_tokens"],
           "size_mb": info["size_mb"]}
    for m in METRICS:
        out[m] = _percentile([r[m] for r in raw], 50)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in raw)  # a peak: the worst round, not the median
    out["p90"] = {m: _percentile([r[m] for r in raw], 90) for m in METRICS}
    out["raw"] = raw
    if plot is not None:
        try:
            out["plot"] = str(plot_latency(out, plot))
        except OSError as err:  # unwritable place: the measurements are kept and reported, the plot error beside them
            out["plot_error"] = (f"cannot write the plot {plot} ({err.strerror or err}); the measurements are complete, "
                                 "pass a --plot path in a folder you can write to")
    return out


def format_profile(result: dict) -> str:
    """A rich table (as plain text): median and p90 of each number, and what was measured."""
    import io

    from rich.console import Console
    from rich.table import Table

    d = result["device"]
    table = Table(title=f"{result['model']} ({result['kind']}, {result['dtype']}) on {d['name']}: {d.get('cpu', '?')}, "
                        f"{d.get('threads', '?')} threads")
    for col in ("metric", "median", "p90"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    labels = {"load_s": "load (s)", "preprocess_s": "image preprocess (s)", "vision_encode_s": "vision encode (s)",
              "prefill_s": f"prefill {result['prefill_tokens']} positions (s)", "prefill_tok_s": "prefill (tok/s)",
              "ttft_s": "time to first token (s)", "decode_s": f"decode {result['decode_tokens']} tokens (s)",
              "decode_tok_s": "decode (tok/s)", "peak_rss_mb": "peak RSS (MB)"}
    def num(value, digits=3) -> str:  # a phone run may leave a metric null (e.g. no decode step)
        return "n/a" if value is None else f"{value:.{digits}f}"

    for m in METRICS:
        table.add_row(labels[m], num(result[m]), num(result.get("p90", {}).get(m)))
    table.add_row("size on disk (MB)", num(result["size_mb"], 1), "")
    buf = io.StringIO()
    Console(file=buf, width=120, force_terminal=False, color_system=None).print(table)
    note = f"{result['runs']} measured runs after {result['warmup']} warm-up; time to first token includes vision encode"
    return buf.getvalue() + note + (f"\nplot: {result['plot']}" if "plot" in result else "") + "\n"


def _require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
    except ImportError:
        raise AlignKDError("--plot needs matplotlib, which is not installed; pip install matplotlib "
                           "(or drop --plot and use --json).") from None


def plot_latency(result: dict, path) -> Path:
    """Stacked horizontal bars per run: vision encode, prefill, decode (seconds). PNG at `path`."""
    _require_matplotlib()
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = (("vision_encode_s", "vision encode", "#4c72b0"), ("prefill_s", "prefill", "#dd8452"),
             ("decode_s", f"decode ({result['decode_tokens']} tokens)", "#55a868"))
    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.4 * len(result["raw"])))
    rows = list(range(len(result["raw"])))
    left = [0.0] * len(rows)
    for key, label, colour in parts:
        widths = [r[key] for r in result["raw"]]
        ax.barh(rows, widths, left=left, label=label, color=colour)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(rows, [f"run {i + 1}" for i in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(f"{Path(result['model']).name} ({result['kind']}) on {result['device']['name']}: latency per run")
    fig.legend(loc="lower center", ncol=3, fontsize="small", frameon=False)  # below the axis, never over a bar
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
