"""Load an exported bundle (a folder with manifest.json) as a `LoadedModel` for the generation loop.

The manifest is validated against the bundle schema (alignkd/contract/manifest.schema.json), every path it names
must stay inside the bundle, every file the backend loads must be listed, and every listed file's sha256 is
checked before anything is loaded, so a tampered, truncated or smuggled-in file is refused by name. The
backend is picked by the manifest's target (ExecuTorch, ONNX, Core ML, GGUF through llama.cpp).

    alignkd generate --model out/tiny_et --image photo.png --prompt "What is in the picture?" --json
"""

from __future__ import annotations

from pathlib import Path

from alignkd.errors import AlignKDError


def make_backend(folder: Path, manifest: dict, threads: int | None = None):
    """The Backend for a bundle folder and its (schema-valid, hash-verified) manifest."""
    from alignkd.contract.manifest import bundle_path, check_references

    check_references(folder, manifest)  # no part outside the bundle or missing from `files`
    target, model = manifest["target"], manifest["model"]
    if target == "executorch":
        from alignkd.runtime.executorch_backend import ExecuTorchBackend

        pte = bundle_path(folder, manifest["parts"]["text_decoder"]["file"], "part text_decoder")
        return ExecuTorchBackend(pte, manifest["max_seq_len"], model["vocab_size"])
    if target == "onnx":
        from alignkd.runtime.onnx_backend import OnnxBackend

        return OnnxBackend(folder, manifest["parts"], manifest["max_seq_len"], model["num_layers"], model["num_kv_heads"],
                           model["head_dim"], threads=threads)
    if target == "coreml":
        from alignkd.runtime.coreml_backend import CoreMLBackend

        return CoreMLBackend(folder, manifest)
    if target == "gguf":
        from alignkd.runtime.gguf_backend import GGUFBackend, load_vision_encoder

        parts, image = manifest["parts"], manifest["image"]
        vision_file = bundle_path(folder, parts["vision_encoder"]["file"], "part vision_encoder")
        vision = None
        if parts["vision_encoder"].get("runtime") == "pytorch":
            vision, vision_file = load_vision_encoder(vision_file, manifest, folder / "manifest.json"), None
        return GGUFBackend(bundle_path(folder, parts["text_decoder"]["file"], "part text_decoder"), vision_file,
                           manifest["max_seq_len"], exact=manifest["quant"]["scheme"] == "f32", image_size=image["size"],
                           mean=image["mean"], std=image["std"], rescale_factor=image["rescale_factor"], threads=threads,
                           vision=vision)
    raise AlignKDError(f"bundle target {target!r} is unknown; valid targets: executorch, onnx, coreml, gguf")


def load_bundle(path, threads: int | None = None):
    """Verify and load a bundle folder; returns a LoadedModel (kind = the bundle's target)."""
    from alignkd.data.image import ImageConfig
    from alignkd.data.tokenizer import Tokenizer
    from alignkd.contract.manifest import read_manifest, verify_files
    from alignkd.runtime.generation import LoadedModel

    folder = Path(path)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    image = manifest["image"]
    image_config = ImageConfig(size=image["size"], mean=tuple(image["mean"]), std=tuple(image["std"]),
                               resample=image["resample"], rescale_factor=image["rescale_factor"],
                               aspect_ratio=image["aspect_ratio"])
    tokenizer = Tokenizer.from_folder(folder)
    backend = make_backend(folder, manifest, threads)
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    return LoadedModel(backend, tokenizer, image_config, kind_of(manifest), str(folder), manifest["prompt"]["template"],
                       size_bytes=size, info={"quant": manifest["quant"], "max_seq_len": manifest["max_seq_len"],
                                              "parity": manifest["parity"].get("end_to_end", {}).get("exact_match")})


def kind_of(manifest: dict) -> str:
    """The loaded model's kind: the target, or `gguf+pytorch-vision` where llama.cpp runs only the language model."""
    if manifest["target"] == "gguf" and manifest["parts"]["vision_encoder"].get("runtime") == "pytorch":
        from alignkd.runtime.gguf_backend import PYTORCH_VISION_KIND

        return PYTORCH_VISION_KIND
    return manifest["target"]
