"""Export every target and scheme and print one JSON line each: size, export time and peak RSS, vision encode
ms, prefill tok/s (~190 positions: 144 image tokens + the golden prompt), decode tok/s, parity; plus eager
PyTorch on the same prompt and the ratio of each bundle's decode speed to eager decode.

Each export runs in a fresh child process so its peak RSS is its own. Core ML bundles are exported and sized
(prediction needs macOS). `--real-shape` builds a checkpoint of the real MobileVLM V2 1.7B shape with random
weights (built on the meta device, materialised tensor by tensor into safetensors) and exports that.

    python benchmarks/export_targets.py                                   # tiny official fixture, all targets
    python benchmarks/export_targets.py --real-shape --only executorch:8da4w --max-seq-len 512 [--vision-quant int8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY = ROOT / "tests/fixtures/mobilevlm_official_tiny/checkpoint"
DEFAULT_RUNS = ("executorch:fp32", "executorch:8da8w", "executorch:8da4w", "onnx:fp32", "onnx:int8", "onnx:int4",
                "coreml:fp16", "coreml:int4")
DECODE_STEPS = 32


def pad_tokenizer(src: Path, dst: Path, size: int) -> None:
    """Copy the tokenizer in `src` to `dst` with its SentencePiece model padded to `size` pieces.

    The added pieces are `[PAD<id>]` of SentencePiece's UNUSED kind (what llama.cpp's convert_hf_to_gguf.py
    writes for a vocabulary larger than its tokenizer): encoding never produces them, so every text keeps its
    ids, and llama.cpp, which needs as many pieces as the model has vocabulary rows, accepts the file.
    """
    from sentencepiece import sentencepiece_model_pb2

    from alignkd.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_folder(src)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.sp.serialized_model_proto())
    if len(proto.pieces) > size:
        raise ValueError(f"{src / 'tokenizer.model'} has {len(proto.pieces)} pieces, more than the {size} asked for")
    for i in range(len(proto.pieces), size):
        proto.pieces.add(piece=f"[PAD{i}]", score=-1000.0, type=sentencepiece_model_pb2.ModelProto.SentencePiece.UNUSED)
    tokenizer.save(dst)  # the special-token files, then the padded model over its tokenizer.model
    (dst / "tokenizer.model").write_bytes(proto.SerializeToString())


def make_real_shape_checkpoint(folder: Path) -> Path:
    """MobileVLM V2 1.7B config with N(0, 0.02) weights, written without ever holding two copies."""
    import torch
    from safetensors.torch import save_file

    from alignkd.data.tokenizer import Tokenizer
    from alignkd.models.checkpoint import config_to_official, to_official_key
    from alignkd.models.mobilevlm import MobileVLM, mobilevlm_v2_1_7b

    config = mobilevlm_v2_1_7b()
    with torch.device("meta"):
        skeleton = MobileVLM(config)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, p in skeleton.state_dict().items():
        t = torch.empty(p.shape, dtype=torch.float32)
        if name.endswith(("norm.weight", "layernorm.weight", "layer_norm1.weight", "layer_norm2.weight", "layrnorm.weight")):
            t.fill_(1.0)
        elif name.endswith("bias"):
            t.zero_()
        else:
            t.normal_(0, 0.02, generator=gen)
        state[to_official_key(name)] = t
    # The stand-in tokenizer has 512 real pieces: zero lm_head rows >= 512 so greedy ids stay decodable (a zero
    # logit never wins against 512 random ones of spread ~0.9, and zero rows stay zero when quantized).
    state["lm_head.weight"][Tokenizer.from_folder(TINY).vocab_size:] = 0
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    del state
    cfg = config_to_official(config)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    # The tiny fixture's tokenizer (512 pieces) drives the prompt, padded with unused pieces to the 32000-row
    # vocabulary so that llama.cpp (--target gguf) takes the checkpoint too.
    pad_tokenizer(TINY, folder, config.llm.vocab_size)
    return folder


def real_shape_checkpoint(folder: Path) -> Path:
    """`folder`'s real-shape checkpoint, built if missing; one built before its tokenizer was padded (512 pieces for
    32000 rows, which llama.cpp refuses) gets the padded tokenizer in place, weights untouched."""
    if not (folder / "config.json").is_file():
        return make_real_shape_checkpoint(folder)
    from alignkd.data.tokenizer import Tokenizer

    rows = json.loads((folder / "config.json").read_text())["vocab_size"]
    if Tokenizer.from_folder(folder).vocab_size < rows:
        pad_tokenizer(folder, folder, rows)
    return folder


def child_export(checkpoint: str, target: str, quant: str, out: str, max_seq_len: int, group_size: int,
                 vision_quant: str) -> None:
    from alignkd.export import export_bundle

    export_bundle(Path(checkpoint), target, quant, Path(out), max_seq_len=max_seq_len, group_size=group_size,
                  vision_quant=vision_quant if target == "executorch" else "fp32", overwrite=True, allow_drift=True)


def time_backend(backend, tokenizer, image_config, threads: int) -> dict:
    """Best of 3: vision encode, prefill of the golden prompt (~190 positions), DECODE_STEPS decode steps."""
    import torch

    from alignkd.data.image import ImageProcessor
    from alignkd.data.templates import tokenize_with_image
    from alignkd.export.parity import golden_pairs
    from alignkd.runtime.generation import build_prompt, splice_prompt

    torch.set_num_threads(threads)
    image, question = golden_pairs()[0]
    pixels = ImageProcessor(image_config)([image])
    ids = tokenize_with_image(build_prompt(question, 1), tokenizer)
    best = {"vision_ms": 1e9, "prefill_s": 1e9, "decode_s": 1e9}
    for _ in range(3):
        t0 = time.perf_counter()
        backend.encode_image(pixels)
        best["vision_ms"] = min(best["vision_ms"], (time.perf_counter() - t0) * 1e3)
        embeds, _ = splice_prompt(backend, ids, pixels)
        t0 = time.perf_counter()
        logits = backend.prefill(embeds)
        best["prefill_s"] = min(best["prefill_s"], time.perf_counter() - t0)
        n = embeds.shape[1]
        t0 = time.perf_counter()
        for step in range(DECODE_STEPS):
            tok = int(torch.argmax(logits))
            logits = backend.decode(backend.embed_tokens(torch.tensor([[tok]])), n + step)
        best["decode_s"] = min(best["decode_s"], time.perf_counter() - t0)
    return {"vision_ms": round(best["vision_ms"], 2), "prompt_positions": n,
            "prefill_tok_s": round(n / best["prefill_s"], 1), "decode_tok_s": round(DECODE_STEPS / best["decode_s"], 1)}


def summarise_parity(parity: dict) -> dict:
    if not parity.get("measured"):
        return {"measured": False, **{k: v.get("cosine") for k, v in parity.get("parts", {}).items()}}
    e2e = parity["end_to_end"]
    return {"exact_tokens": e2e["exact_match"], "token_agreement": round(e2e["token_agreement"], 3),
            "logit_cosine": round(e2e["logit_cosine"], 5), "passed": parity["passed"],
            "decoder_prefill_max_abs": parity["parts"]["text_decoder"]["max_abs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-shape", action="store_true", help="MobileVLM V2 1.7B shape, random weights")
    ap.add_argument("--only", nargs="*", default=None, help="target:scheme pairs (default: all)")
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vision-quant", default="fp32", help="ExecuTorch vision encoder: fp32 or int8")
    ap.add_argument("--workdir", type=Path, default=None, help="keep bundles here (default: a temp folder)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--child-eager", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_export(*args.child, args.max_seq_len, args.group_size, args.vision_quant)
    if args.child_eager:
        from alignkd.runtime.loader import load_model

        eager = load_model(args.child_eager)
        return print(json.dumps(time_backend(eager.backend, eager.tokenizer, eager.image_config, args.threads)))

    from alignkd.runtime.bundle import load_bundle

    work = args.workdir or Path(tempfile.mkdtemp(prefix="alignkd-bench-"))
    real = work / "real_shape_ckpt"
    checkpoint = real_shape_checkpoint(real) if args.real_shape else TINY
    model_name = "mobilevlm_v2_1.7b_shape_random" if args.real_shape else "mobilevlm_official_tiny"
    # Eager timing in its own process too, so the 1.7B eager weights are not resident during the exports.
    eager = subprocess.run([sys.executable, __file__, "--child-eager", str(checkpoint), "--threads", str(args.threads)],
                           capture_output=True, text=True, check=True)
    base = {"model": model_name, **json.loads(eager.stdout.strip().splitlines()[-1])}
    print(json.dumps({"target": "eager_pytorch", "scheme": "fp32", **base}), flush=True)
    for run in args.only or DEFAULT_RUNS:
        target, quant = run.split(":")
        vision = args.vision_quant if target == "executorch" else "fp32"
        out = work / f"{target}_{quant}" if vision == "fp32" else work / f"{target}_{quant}_vision{vision}"
        t0 = time.perf_counter()
        # The export's stage lines (stderr) pass through: a 1.7B export runs for minutes.
        proc = subprocess.run([sys.executable, __file__, "--child", str(checkpoint), target, quant, str(out),
                               "--max-seq-len", str(args.max_seq_len), "--group-size", str(args.group_size),
                               "--vision-quant", vision], stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            print(json.dumps({"target": target, "scheme": quant, "error": f"export exited {proc.returncode} (stderr above)"}), flush=True)
            continue
        manifest = json.loads((out / "manifest.json").read_text())
        row = {"target": target, "scheme": quant, "vision": vision, "model": model_name,
               "bundle_mb": round(sum(f["bytes"] for f in manifest["files"].values()) / 1e6, 2),
               "export_s": manifest["export"]["seconds"], "wall_s": round(time.perf_counter() - t0, 1),
               "export_peak_rss_gb": round(manifest["export"]["peak_rss_bytes"] / 2**30, 2),
               "export_stages_s": manifest["export"].get("stages"),
               "parity": summarise_parity(manifest["parity"])}
        if target != "coreml":
            loaded = load_bundle(out, threads=args.threads)
            row.update(time_backend(loaded.backend, loaded.tokenizer, loaded.image_config, args.threads))
            row["decode_vs_eager"] = round(row["decode_tok_s"] / base["decode_tok_s"], 2)
            row["prefill_vs_eager"] = round(row["prefill_tok_s"] / base["prefill_tok_s"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
