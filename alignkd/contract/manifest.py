"""Reading a bundle's `manifest.json`: the schema, path safety and file verification every reader applies.

The manifest is the contract between `alignkd export` (which writes it: `alignkd.export.manifest`) and every
reader: the Python runtime (`alignkd.runtime.bundle`), the native runner (`runtime/src/manifest.cpp`), the
Android core (`android_demo/core`, `Manifest.java`) and the iOS core (`ios_demo/AlignKDCore`, `Manifest.swift`).
It holds the model's config, the parts with their file / method names, input and output names, shapes and
dtypes, the quantization scheme, tokenizer files and special ids, the image preprocessing constants, the prompt
template with the image placeholder, the number of image tokens, the sha256 of every file, the source
checkpoint's hash and the parity measured at export.

The schema ships inside the package (`alignkd/contract/manifest.schema.json`, package data), so a wheel install
reads the same single copy as a checkout, and the native runner compiles in the same file. Every path a manifest
names (`files`, `parts`, tokenizer files) must stay inside the bundle folder, and every file a runtime loads must
be listed in `files` and verified.

    python -m pytest tests/contract tests/export/test_bundle.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath, PureWindowsPath

from alignkd.errors import AlignKDError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCHEMA_NAME = "manifest.schema.json"
SCHEMA_PACKAGE = "alignkd.contract"  # the one copy: package data next to this module, read by every reader


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
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
