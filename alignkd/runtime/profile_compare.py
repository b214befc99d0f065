"""Profile JSON files side by side: `alignkd profile-compare A.json B.json ... [--plot FILE]`.

Reads what `alignkd profile --json` prints (host Python runtime, `--device native`, `--device android|ios`) and
what the demo apps' benchmark mode writes (`alignkd_profile.json`), checks each has the profile's keys, and
prints one column per run, named by its device and runtime; `--plot` draws the latency of each run (vision
encode, prefill, decode) as stacked bars with decode speed beside them.

    alignkd profile BUNDLE --json > host.json; alignkd profile BUNDLE --device native --json > native.json
    alignkd profile-compare host.json native.json phone.json --plot compare.png
    python -m pytest tests/runtime/test_profile_compare.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkd.errors import AlignKDError
from alignkd.runtime.profile import METRICS

# every writer (alignkd profile, alignkd-runner, both demo apps) emits these; format_profile and the plots read them
REQUIRED = ("model", "kind", "dtype", "runs", "warmup", "prefill_tokens", "decode_tokens") + METRICS + ("size_mb", "p90",
                                                                                                     "raw", "device")
LABELS = {"load_s": "load (s)", "preprocess_s": "image preprocess (s)", "vision_encode_s": "vision encode (s)",
          "prefill_s": "prefill (s)", "ttft_s": "time to first token (s)", "prefill_tok_s": "prefill (tok/s)",
          "decode_s": "decode (s)", "decode_tok_s": "decode (tok/s)", "peak_rss_mb": "peak RSS (MB)",
          "size_mb": "size on disk (MB)"}


def load_profile(path: Path, what: str | None = None) -> dict:
    """A profile JSON object with every key of `alignkd profile --json` that the comparison reads."""
    path, what = Path(path), what or str(path)
    fix = "pass a file written by `alignkd profile --json` or by the demo app's benchmark (alignkd_profile.json)"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AlignKDError(f"{what} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise AlignKDError(f"{what} is not readable JSON ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise AlignKDError(f"{what} holds a JSON {type(data).__name__}, not a profile object; {fix}")
    missing = [key for key in REQUIRED if key not in data]
    if not isinstance(data.get("device", {}), dict) or "name" not in data.get("device", {}):
        missing.append("device.name")
    if missing:
        raise AlignKDError(f"{what} is not an alignkd profile (missing {', '.join(missing)}); {fix}")
    bad = [key for key in METRICS + ("size_mb",) if data[key] is not None and not isinstance(data[key], (int, float))]
    if bad:
        raise AlignKDError(f"{what} has non-numeric {', '.join(bad)}; {fix}")
    return data


def run_label(result: dict) -> str:
    """Where and how a run ran: 'host (python)', 'host (native)', 'android Pixel 8 (native)', 'ios iPhone16,1 (app)'."""
    device = result["device"]
    runtime = result.get("runtime") or device.get("runtime") or ("python" if device["name"] == "host" else "app")
    where = " ".join(str(part) for part in (device["name"], device.get("model")) if part)
    return f"{where} ({runtime})"


def labels_for(results: list[dict], paths: list[Path]) -> list[str]:
    """run_label per result; a label shared by several runs gets its file name added."""
    labels = [run_label(r) for r in results]
    return [f"{label} [{Path(p).name}]" if labels.count(label) > 1 else label for label, p in zip(labels, paths)]


def compare(paths: list[Path]) -> dict:
    """{'runs': [{'label', 'file', metric: median ...}]} for the given profile files."""
    if not paths:
        raise AlignKDError("profile-compare needs at least one profile JSON file; pass files written by `alignkd profile --json`")
    results = [load_profile(p) for p in paths]
    runs = [{"label": label, "file": str(p), "model": r.get("model"), **{k: r[k] for k in METRICS + ("size_mb",)},
             "decode_tokens": r.get("decode_tokens"), "prefill_tokens": r.get("prefill_tokens")}
            for label, p, r in zip(labels_for(results, paths), paths, results)]
    return {"runs": runs}


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3f}"


def format_compare(table: dict) -> str:
    """A rich table (as plain text): one row per metric, one column per run."""
    import io

    from rich.console import Console
    from rich.table import Table

    out = Table(title="profile runs side by side (medians; peak RSS: the worst round)")
    out.add_column("metric")
    for run in table["runs"]:
        out.add_column(run["label"], justify="right")
    for key in METRICS + ("size_mb",):
        out.add_row(LABELS[key], *[_cell(run[key]) for run in table["runs"]])
    out.add_row("prefill positions / decode tokens",
                *[f"{run['prefill_tokens']} / {run['decode_tokens']}" for run in table["runs"]])
    buf = io.StringIO()
    Console(file=buf, width=40 + 24 * len(table["runs"]), force_terminal=False, color_system=None).print(out)
    files = "\n".join(f"  {run['label']}: {run['file']} ({run['model']})" for run in table["runs"])
    return buf.getvalue() + "files:\n" + files + ("\nplot: " + table["plot"] if "plot" in table else "") + "\n"


def plot_compare(table: dict, path) -> Path:
    """Stacked bars per run (vision encode, prefill, decode seconds) and decode tok/s beside them. PNG at `path`."""
    from alignkd.runtime.profile import _require_matplotlib

    _require_matplotlib()
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = table["runs"]
    rows = list(range(len(runs)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.8 + 0.5 * len(runs)), gridspec_kw={"width_ratios": [3, 1]})
    start = [0.0] * len(runs)
    for key, label, colour in (("vision_encode_s", "vision encode", "#4c72b0"), ("prefill_s", "prefill", "#dd8452"),
                               ("decode_s", "decode", "#55a868")):
        widths = [run[key] or 0.0 for run in runs]
        left.barh(rows, widths, left=start, label=label, color=colour)
        start = [a + b for a, b in zip(start, widths)]
    left.set_yticks(rows, [run["label"] for run in runs])
    left.invert_yaxis()
    left.set_xlabel("seconds (median)")
    right.barh(rows, [run["decode_tok_s"] or 0.0 for run in runs], color="#8172b3")
    right.set_yticks(rows, [""] * len(runs))
    right.invert_yaxis()
    right.set_xlabel("decode (tok/s)")
    fig.suptitle("profile runs side by side")
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # room for the legend below the axes, never over a bar
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
