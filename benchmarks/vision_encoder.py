"""The ExecuTorch vision encoder alone: eager PyTorch vs the exported forms, speed, size, accuracy, delegation.

Builds the vision side of a preset (CLIP up to `mm_vision_select_layer` + LDPv2) with random weights, or of
a checkpoint, lowers each variant to an XNNPACK `.pte`, and prints one JSON line per variant: median and best
encode ms over `--rounds` runs (the runtime's own threadpool: all cores), `.pte` MB, lowering seconds, cosine
and max-abs of the image tokens against eager fp32, and the delegated / non-delegated operator counts.

Variants: `eager` (alignkd.export.parts.VisionEncoder in PyTorch), `traced_fp32` (that module lowered: how
the encoder was exported before), `fp32` (alignkd.export.vision_lowered.LoweredVisionEncoder, what the
export writes now), `int8_dynamic` (its linears int8 with dynamic activations), `int8_pt2e` (PT2E static int8).

    python benchmarks/vision_encoder.py --preset mobilevlm_v2_1.7b --rounds 5
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VARIANTS = ("eager", "traced_fp32", "fp32", "int8_dynamic", "int8_pt2e")


def vision_only(preset: str | None, checkpoint: Path | None):
    """An object with the `config`, `vision_tower` and `mm_projector` the encoders read, without the LLM."""
    import torch

    from alignkd.models.mobilevlm import LDPv2Projector, get_preset
    from transformers import CLIPVisionModel

    if checkpoint is not None:
        from alignkd.models.checkpoint import load_checkpoint

        return load_checkpoint(checkpoint)[0].eval()
    config = get_preset(preset)
    torch.manual_seed(0)
    tower = CLIPVisionModel(config.vision).eval()
    proj = LDPv2Projector(config.vision.hidden_size, config.llm.hidden_size, config.pooled_grid).eval()
    with torch.no_grad():  # N(0, 0.02) like benchmarks/export_targets.py --real-shape, norms at 1
        for name, p in list(tower.named_parameters()) + list(proj.named_parameters()):
            p.fill_(1.0) if "norm" in name and name.endswith("weight") else p.zero_() if name.endswith("bias") else p.normal_(0, 0.02)
    return SimpleNamespace(config=config, vision_tower=tower, mm_projector=proj)


def op_counts(edge) -> dict:
    graph = edge.exported_program("vision_encoder").graph
    names = [str(n.target).split("(")[0].split("::")[-1] for n in graph.nodes if n.op == "call_function"]
    counts = collections.Counter(n for n in names if n != "<built-in function getitem>")
    return {"delegates": counts.pop("executorch_call_delegate", 0), "portable_ops": sum(counts.values()),
            "portable_by_op": dict(counts.most_common(8))}


def lower(module, pixels, folder: Path, name: str) -> tuple[Path, dict]:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    t0 = time.perf_counter()
    with torch.no_grad(), torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        ep = torch.export.export(module, (pixels,), strict=False)
    edge = to_edge_transform_and_lower({"vision_encoder": ep}, partitioner={"vision_encoder": [XnnpackPartitioner()]},
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    info = op_counts(edge)
    path = folder / f"{name}.pte"
    path.write_bytes(edge.to_executorch().buffer)
    info["lower_s"] = round(time.perf_counter() - t0, 1)
    info["pte_mb"] = round(path.stat().st_size / 1e6, 1)
    return path, info


def timed(fn, rounds: int) -> dict:
    fn()  # warm-up (XNNPACK weight packing happens at load / first run)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": round(statistics.median(times), 1), "best_ms": round(min(times), 1)}


def build_variant(name: str, model, pixels, calibration):
    from alignkd.export.parts import VisionEncoder
    from alignkd.export.quantize import quantize_vision_dynamic, quantize_vision_pt2e
    from alignkd.export.vision_lowered import LoweredVisionEncoder

    if name in ("eager", "traced_fp32"):
        return VisionEncoder(model).eval()
    module = LoweredVisionEncoder(model).eval()
    if name == "int8_dynamic":
        return quantize_vision_dynamic(module)
    if name == "int8_pt2e":
        return quantize_vision_pt2e(module, pixels, calibration)
    return module


def main() -> None:
    import torch

    from alignkd.export.parity import metrics
    from alignkd.export.quantize import synthetic_calibration
    import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed kernels for PT2E leftovers)
    from executorch.runtime import Runtime, Verification

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="mobilevlm_v2_1.7b")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the eager row")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = vision_only(args.preset, args.checkpoint)
    size = model.config.image.size
    calibration = synthetic_calibration(size)
    pixels = calibration[0]
    from alignkd.export.parts import VisionEncoder

    with torch.no_grad():
        reference = VisionEncoder(model)(pixels)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            module = build_variant(name, model, pixels, calibration)
            row = {"variant": name, "preset": args.checkpoint and str(args.checkpoint) or args.preset}
            if name == "eager":
                with torch.no_grad():
                    row.update(timed(lambda: module(pixels), args.rounds))
                    out = module(pixels)
            else:
                path, info = lower(module, pixels, Path(tmp), name)
                row.update(info)
                method = Runtime.get().load_program(str(path), verification=Verification.Minimal).load_method("vision_encoder")
                row.update(timed(lambda: method.execute([pixels]), args.rounds))
                out = method.execute([pixels])[0]
            row.update({k: v for k, v in metrics(reference, out).items() if k != "psnr_db"})
            print(json.dumps(row), flush=True)
            del module


if __name__ == "__main__":
    main()
