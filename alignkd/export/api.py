"""`export_bundle`: a MobileVLM checkpoint -> a self-describing bundle folder (manifest.json + parts), with parity.

Steps: validate every option and the output folder (before loading anything), create a hidden staging folder
next to `out` (removing stale ones of killed exports), load the checkpoint, write the target's parts and the
tokenizer files into it (ExecuTorch: record the eager model's answers for parity with alignkd.export.reference,
trace, drop the eager model, lower), load the staged bundle through the same runtime backend `alignkd generate`
uses, measure parity against the eager model (or its recorded answers), write the manifest, then rename the
staging folder to `out`. A failed export leaves no `out` behind. The checkpoint is only read; `--overwrite`
replaces only a bundle.

    alignkd export tests/fixtures/mobilevlm_official_tiny/checkpoint --target executorch --quant fp32 -o out/tiny_et
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

from alignkd.errors import AlignKDError

DEFAULT_MAX_SEQ_LEN = 1024
SLACK_BYTES = 64 << 20
# Bytes written per parameter, worst case over the target's intermediates (fp32 graphs before quantization).
# gguf: the f32 model file, kept until llama.cpp's quantiser has written the quantised one next to it.
BYTES_PER_PARAM = {"executorch": 4.2, "onnx": 8.5, "coreml": 6.5, "gguf": 8.2}


def estimate_bytes(n_params: int, target: str) -> int:
    return int(n_params * BYTES_PER_PARAM[target]) + SLACK_BYTES


def _check_output(out: Path, overwrite: bool, n_params: int, target: str) -> None:
    from alignkd.export.output import check_replaceable

    if out.exists() and not out.is_dir():
        raise AlignKDError(f"output path {out} is a file; pass a folder path for the bundle")
    if out.exists() and not overwrite:
        raise AlignKDError(f"output folder {out} already exists; pass --overwrite to replace it or choose another -o")
    if out.exists():
        check_replaceable(out)  # --overwrite replaces a bundle, never a user's folder
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    need, free = estimate_bytes(n_params, target), shutil.disk_usage(probe).free
    if free < need:
        raise AlignKDError(f"not enough disk space under {probe} for the bundle: about {need / 1e9:.2f} GB needed, "
                           f"{free / 1e9:.2f} GB free; free some space or choose another -o")


def _write_tokenizer(tokenizer, folder: Path) -> dict:
    """Our SentencePiece files (what alignkd's runtime reads) plus an HF tokenizer.json for ExecuTorch's runners."""
    from transformers import LlamaTokenizer

    tokenizer.save(folder)
    with tempfile.TemporaryDirectory() as tmp:
        # transformers converts tokenizer.model to a fast (tokenizers) BPE model; only its tokenizer.json is kept.
        LlamaTokenizer.from_pretrained(str(folder)).save_pretrained(tmp)
        fast = json.loads((Path(tmp) / "tokenizer.json").read_text())
    # Rewrite to the legacy LLaMA layout (normalizer Prepend + Replace, no pre-tokenizer): ExecuTorch's C++ HF
    # tokenizer has no Metaspace pre-tokenizer, and the legacy layout also reproduces the slow tokenizer's
    # handling of leading spaces, i.e. the ids of alignkd.data.tokenizer (checked in tests/export).
    fast["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    fast["pre_tokenizer"] = None
    fast["post_processor"] = None  # BOS is the caller's: alignkd's prompt ids carry it, the runner has num_bos
    (folder / "tokenizer.json").write_text(json.dumps(fast, ensure_ascii=False))
    return {"sentencepiece": "tokenizer.model", "hf_json": "tokenizer.json", "config": "tokenizer_config.json",
            "special_tokens_map": "special_tokens_map.json"}


def _versions(target: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    names = {"executorch": ("torch", "executorch", "torchao"), "onnx": ("torch", "onnx", "onnxscript", "onnxruntime"),
             "coreml": ("torch", "coremltools"), "gguf": ("torch", "gguf", "llama_cpp_python")}[target] + ("transformers",)
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _calibration(paths, image_config) -> list:
    from alignkd.data.image import ImageProcessor, load_image
    from alignkd.export.quantize import synthetic_calibration

    if not paths:
        return synthetic_calibration(image_config.size)
    processor = ImageProcessor(image_config)
    return [processor([load_image(p)]) for p in paths]


def _export_parts(model, tokenizer, target, quant, staging, *, group_size, embedding_bits, vision_quant, vision_runtime,
                  max_seq_len, calibration):
    if target == "gguf":
        from alignkd.export.gguf import export_gguf

        return export_gguf(model, tokenizer, model.config, model.config.image, staging, quant, vision_quant=vision_quant,
                           vision_runtime=vision_runtime)
    if target == "onnx":
        from alignkd.export.onnx import export_onnx

        return export_onnx(model, staging, quant, block_size=group_size, max_seq_len=max_seq_len)
    from alignkd.export.coreml import export_coreml

    return export_coreml(model, staging, quant, block_size=group_size, max_seq_len=max_seq_len)


def export_bundle(checkpoint: Path, target: str, quant: str | None, out: Path, *, group_size: int = 32, embedding_bits: int = 8,
                  vision_quant: str | None = None, max_seq_len: int = DEFAULT_MAX_SEQ_LEN, overwrite: bool = False,
                  allow_drift: bool = False, calibration_images=None, vision_runtime: str | None = None) -> Path:
    """Export `checkpoint` to a bundle folder `out` for `target` with scheme `quant` (None: the target's default,
    DEFAULT_SCHEME); returns `out`. `overwrite` replaces only a folder holding an alignkd bundle (alignkd.export.output).
    `vision_runtime` (gguf only): "pytorch" keeps the vision encoder as PyTorch weights (alignkd.export.gguf)."""
    from alignkd.contract.manifest import load_schema
    from alignkd.export import manifest as mf
    from alignkd.export.output import clean_stale_staging, make_staging, swap_in
    from alignkd.export.executorch import release_mapped_pages
    from alignkd.export.progress import Stages, peak_rss_bytes
    from alignkd.export.quantize import DEFAULT_SCHEME, check_backend, check_options

    t0 = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    quant = quant or DEFAULT_SCHEME.get(target, "fp32")
    from alignkd.export.gguf import check_vision_runtime

    vision_runtime = check_vision_runtime(target, vision_runtime, vision_quant)
    # llama.cpp ships quantised models with an f16 projector; elsewhere the vision encoder defaults to fp32.
    mtmd = target == "gguf" and vision_runtime == "llama.cpp"
    vision_quant = vision_quant or ("fp16" if mtmd and quant != "f32" else "fp32")
    check_options(target, quant, group_size=group_size, embedding_bits=embedding_bits, vision_quant=vision_quant)
    load_schema()  # the manifest is validated last: a broken install must fail now, not after the export
    from alignkd.models.checkpoint import load_checkpoint, load_config
    from alignkd.models.mobilevlm import num_parameters

    config = load_config(checkpoint)  # refuses a folder that is not a MobileVLM V2 checkpoint
    llm = config.llm
    check_options(target, quant, group_size=group_size, embedding_bits=embedding_bits, vision_quant=vision_quant,
                  linear_in_features=(llm.hidden_size, llm.intermediate_size))
    min_len = config.num_image_tokens + 64
    if not min_len <= max_seq_len <= llm.max_position_embeddings:
        raise AlignKDError(f"max sequence length {max_seq_len} must lie between {min_len} (image tokens plus a short prompt) "
                           f"and the model's {llm.max_position_embeddings} positions; pass another --max-seq-len")
    _check_output(out, overwrite, num_parameters(config), target)
    check_backend(target)
    if target == "gguf":
        from alignkd.export.gguf import check_model

        check_model(config, vision_runtime)

    clean_stale_staging(out)
    staging = make_staging(out)
    stages = Stages()
    try:
        with stages("load", str(checkpoint)):
            model, tokenizer = load_checkpoint(checkpoint)
        tokenizer_files = _write_tokenizer(tokenizer, staging)
        calibration = _calibration(calibration_images, config.image) if vision_quant == "int8" or target == "executorch" else []
        t_parts = time.perf_counter()
        options = dict(group_size=group_size, embedding_bits=embedding_bits, vision_quant=vision_quant,
                       max_seq_len=max_seq_len, calibration=calibration)
        if target == "executorch":
            from alignkd.export.executorch import lower_executorch, trace_executorch

            from alignkd.export.reference import record

            # Parity's eager answers now, while the model is loaded: parity then needs no eager model next to the
            # loaded bundle (reloading it there made the 1.7B export's 12.7 GB peak).
            with stages("reference", "the eager model's answers for the parity check"):
                eager = record(model, tokenizer, config.image)
                release_mapped_pages([*model.parameters(), *model.buffers()])  # every page was read
            traced = trace_executorch(model, tokenizer, quant, stages=stages, **options)
            # The eager fp32 weights (5.4 GB of decoder at 1.7B) are not in the bundle: drop the model before
            # lowering, the export's longest stage.
            model = None
            gc.collect()
            lower_executorch(traced, staging, stages)
            parts, traced = traced["parts"], None
        else:
            with stages("export", f"{target} {quant}"):
                parts = _export_parts(model, tokenizer, target, quant, staging, vision_runtime=vision_runtime, **options)
            from alignkd.runtime.generation import EagerBackend

            eager = EagerBackend(model)
        export_s = time.perf_counter() - t_parts
        extra = {}
        if target == "gguf":
            from alignkd.export.gguf import llama_cpp_info

            extra["llama_cpp"] = llama_cpp_info()
        scheme = {"scheme": quant, "group_size": group_size, "vision": vision_quant if target != "coreml" else "fp16",
                  "embedding_bits": (embedding_bits if quant == "8da4w" else 8 if quant == "8da8w" else None)}
        if (target, quant) in (("executorch", "8da4w"), ("onnx", "int4")):
            from alignkd.export.quantize import LM_HEAD_BITS

            scheme["lm_head_bits"] = LM_HEAD_BITS
        if target == "gguf":  # llama.cpp's types fix their own block sizes and embedding type
            scheme = {"scheme": quant, "vision": vision_quant, "embedding_bits": None}
        manifest = mf.build_manifest(
            config=config, tokenizer=tokenizer, target=target, quant=scheme, max_seq_len=max_seq_len, parts=parts,
            template="v1", tokenizer_files=tokenizer_files,
            source={"checkpoint": str(checkpoint), "sha256": mf.checkpoint_hash(checkpoint)},
            export_info={"parts_seconds": round(export_s, 2), "versions": _versions(target), **extra},
        )
        manifest["files"] = mf.file_table(staging)
        with stages("parity", "bundle vs eager on the golden pairs"):
            manifest["parity"] = _measure(eager, model, tokenizer, config, staging, manifest, quant, allow_drift)
        manifest["export"]["seconds"] = round(time.perf_counter() - t0, 2)
        manifest["export"]["peak_rss_bytes"] = peak_rss_bytes()
        manifest["export"]["stages"] = stages.times
        mf.write_manifest(staging, manifest)
        swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _measure(eager, model, tokenizer, config, staging: Path, manifest: dict, quant: str, allow_drift: bool) -> dict:
    """Load the staged bundle through the runtime backend and compare it with `eager`: the eager model's backend,
    or its recorded answers (alignkd.export.reference; ExecuTorch, where `model` is None by then)."""
    from alignkd.export import parity
    from alignkd.runtime.bundle import make_backend

    if manifest["target"] == "coreml":
        import torch

        from alignkd.export.coreml import module_parity
        from alignkd.export.parts import VisionEncoder

        pixels, _ = parity.probe(tokenizer, config.image)

        with torch.inference_mode():
            vision = parity.metrics(eager.encode_image(pixels), VisionEncoder(model)(pixels))
        return {"measured": False, "passed": True, "allow_drift": allow_drift, "thresholds": parity.thresholds(quant),
                "reason": "Core ML prediction needs macOS 15+; the converted PyTorch modules were checked against eager instead",
                "parts": {"vision_encoder_module": vision, **module_parity(model, manifest["max_seq_len"])}}
    bundle = make_backend(staging, manifest)
    pixels, ids = parity.probe(tokenizer, config.image)
    judged = bundle
    mtmd = manifest["target"] == "gguf" and manifest["parts"]["vision_encoder"].get("runtime") != "pytorch"
    if mtmd:  # llama.cpp's image path is measured apart: alignkd.export.gguf.EagerImages
        from alignkd.export.gguf import EagerImages

        judged = EagerImages(eager, bundle)
    # The image-token floor is the ExecuTorch vision option's (--vision-quant); ONNX's int8 schemes were never held to it.
    vision = manifest["parts"]["vision_encoder"]["quant"] if manifest["target"] == "executorch" else None
    result = {"measured": True, "thresholds": parity.thresholds(quant, vision), "allow_drift": allow_drift,
              "parts": parity.part_parity(eager, bundle, pixels, ids),
              "end_to_end": parity.end_to_end(eager, judged, tokenizer, config.image),
              "answers": parity.answer_parity(eager, judged, tokenizer, config.image)}
    if mtmd:
        from alignkd.export.gguf import image_path_parity

        result.update(image_path_parity(eager, bundle, model, tokenizer, config, pixels))
    ok, misses = parity.judge(quant, result["end_to_end"], vision, result["parts"], result["answers"])
    result["passed"] = ok
    if not ok and not allow_drift:
        raise AlignKDError(f"the {manifest['target']} {quant} bundle drifts from the eager model ({'; '.join(misses)}); "
                           "pass --allow-drift to keep it anyway, or pick a milder scheme")
    return result
