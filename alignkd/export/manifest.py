"""The bundle's `manifest.json`: what it holds, file hashes, and validation against its JSON Schema.

The manifest is the contract the runtime (`alignkd.runtime.bundle`) and the demo apps read: the model's
config, the parts with their file / method names, input and output names, shapes and dtypes, the
quantization scheme, tokenizer files and special ids, the image preprocessing constants, the prompt template
with the image placeholder, the number of image tokens, the sha256 of every file, the source checkpoint's
hash and the parity measured at export.

The schema ships inside the package (`alignkd/export/manifest.schema.json`, package data), so a wheel install
reads the same single copy as a checkout. Every path a manifest names (`files`, `parts`, tokenizer files) must
stay inside the bundle folder, and every file the runtime loads must be listed in `files` and verified.

    python -m pytest tests/export/test_bundle.py -k manifest
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath, PureWindowsPath

from alignkd.errors import AlignKDError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCHEMA_NAME = "manifest.schema.json"
SCHEMA_PACKAGE = "alignkd.export"  # the one copy: package data next to this module, read by every reader


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_table(folder: Path) -> dict:
    """{relative path: {sha256, bytes}} of every file under `folder` except the manifest itself."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def checkpoint_hash(folder: Path) -> str:
    """One sha256 over (relative path, file sha256) of every file of the checkpoint folder, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def load_schema() -> dict:
    """The bundle schema from the installed package (importlib.resources, so zips and wheels work too)."""
    import sys
    from importlib.resources import files

    resource = files(sys.modules[SCHEMA_PACKAGE]) / SCHEMA_NAME  # the package is loaded: this module is in it
    try:
        return json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AlignKDError(f"the bundle schema {SCHEMA_NAME} of the installed alignkd package cannot be read ({err}); "
                           "reinstall alignkd (pip install --force-reinstall alignkd)") from err


def validate(manifest: dict, where: str = MANIFEST) -> None:
    """Validate against the JSON Schema; the error names the first offending field."""
    import jsonschema

    try:
        jsonschema.validate(manifest, load_schema())
    except jsonschema.ValidationError as err:
        field = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise AlignKDError(f"{where} does not follow the bundle schema at {field}: {err.message}; re-export the bundle") from None


def bundle_path(folder: Path, rel: str, what: str) -> Path:
    """`folder / rel`, refusing a path that leaves the bundle: absolute, with `..`, or through a symlink."""
    folder = Path(folder)
    escapes = (not isinstance(rel, str) or not rel.strip() or "\\" in rel or PurePosixPath(rel).is_absolute()
               or PureWindowsPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts)
    if not escapes:
        path = folder / rel
        if path.resolve().is_relative_to(folder.resolve()):
            return path
    raise AlignKDError(f"{folder / MANIFEST}: {what} {rel!r} points outside the bundle folder (absolute, '..' or a symlink "
                       "leading out); refusing to read it, re-export the bundle")


def _listed(rel: str) -> str:
    return PurePosixPath(rel).as_posix()  # "./model.pte" and "model.pte" name the same entry


def check_references(folder: Path, manifest: dict) -> None:
    """Every file the runtime will load (parts, tokenizer) lies inside the bundle and is listed in `files`.

    Together with `verify_files` (which hashes every listed file) nothing unverified is ever loaded. A part
    that is a folder (a Core ML .mlpackage) must have every file inside it listed.
    """
    folder = Path(folder)
    listed = {_listed(rel) for rel in manifest["files"]}
    refs = [(f"part {name}", part["file"]) for name, part in manifest["parts"].items()]
    refs += [(f"tokenizer file {key}", rel) for key, rel in manifest["tokenizer"]["files"].items()]
    for what, rel in refs:
        path = bundle_path(folder, rel, what)
        if path.is_dir():
            inside = [p.relative_to(folder).as_posix() for p in sorted(path.rglob("*")) if p.is_file() or p.is_symlink()]
            unlisted = [p for p in inside if p not in listed]
            if unlisted or not inside:
                extra = f"{unlisted[0]} is not listed in files" if unlisted else "it is empty"
                raise AlignKDError(f"bundle {what} {path} cannot be verified ({extra}); copy the whole bundle folder again or re-export it")
        elif _listed(rel) not in listed:
            raise AlignKDError(f"bundle {what} {rel!r} is not listed in {folder / MANIFEST} files, so it cannot be verified; "
                               "re-export the bundle")


def verify_files(folder: Path, manifest: dict) -> None:
    """Refuse a missing, truncated or modified file, naming it (and any path that leaves the bundle)."""
    for rel, entry in manifest["files"].items():
        path = bundle_path(folder, rel, "file")
        if not path.is_file():
            raise AlignKDError(f"bundle file {path} is missing; copy the whole bundle folder again or re-export it")
        if path.stat().st_size != entry["bytes"]:
            raise AlignKDError(f"bundle file {path} has {path.stat().st_size} bytes but the manifest says {entry['bytes']} (truncated or replaced); copy it again or re-export the bundle")
        if sha256_file(path) != entry["sha256"]:
            raise AlignKDError(f"bundle file {path} does not match its sha256 in the manifest (modified or corrupt); copy it again or re-export the bundle")


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise AlignKDError(f"cannot read {path} ({err}); pass a bundle folder written by `alignkd export`") from err
    validate(manifest, str(path))
    return manifest


def write_manifest(folder: Path, manifest: dict) -> Path:
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as any reader will see them
    validate(manifest)
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def build_manifest(*, config, tokenizer, target: str, quant: dict, max_seq_len: int, parts: dict, template: str,
                   tokenizer_files: dict, source: dict, export_info: dict) -> dict:
    """Everything but `files` and `parity`, which are added once the files exist and parity is measured."""
    from alignkd.data.templates import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, get_template, user_message
    from alignkd.models.checkpoint import config_to_official

    tpl = get_template(template)
    prompt = tpl.prompt(user_message("{question}", 1))
    return {
        "format_version": FORMAT_VERSION,
        "model": {
            "family": "mobilevlm_v2",
            "config": config_to_official(config),
            "vision_config": config.vision.to_dict(),
            "hidden_size": config.llm.hidden_size,
            "num_layers": config.llm.num_hidden_layers,
            "num_heads": config.llm.num_attention_heads,
            "num_kv_heads": config.llm.num_key_value_heads,
            "head_dim": config.llm.hidden_size // config.llm.num_attention_heads,
            "vocab_size": config.llm.vocab_size,
        },
        "target": target,
        "quant": quant,
        "max_seq_len": max_seq_len,
        "parts": parts,
        "tokenizer": {"files": tokenizer_files, "vocab_size": tokenizer.vocab_size, "add_bos": tokenizer.add_bos,
                      "kind": "sentencepiece-legacy-llama"},
        "special_tokens": {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "unk": tokenizer.unk_id, "pad": tokenizer.pad_id},
        "image": config.image.to_dict(),
        "num_image_tokens": config.num_image_tokens,
        "prompt": {
            "template": template,
            "text": prompt,
            "image_placeholder": IMAGE_TOKEN,
            "image_placeholder_offset": prompt.index(IMAGE_TOKEN),
            "image_token_index": IMAGE_TOKEN_INDEX,
            "stop_strings": [tpl.stop_str] if tpl.stop_str else [],
            # how the ids are formed: each <image>-separated chunk tokenized alone, BOS once, image tokens spliced
            "tokenization": "chunks split at the placeholder are tokenized separately (SentencePiece, dummy prefix); BOS only before the first",
        },
        "source": source,
        "export": export_info,
    }
