"""The bundle contract: manifest schema, file hashes, tamper / truncation refusal, no side effects on the input."""

import json
import shutil

import pytest

from alignkd.errors import AlignKDError
from tests.export.conftest import manifest_of


def test_manifest_validates_and_describes_bundle(bundles, checkpoint):
    from alignkd.data.image import ImageConfig
    from alignkd.contract.manifest import sha256_file, validate
    from alignkd.export.manifest import checkpoint_hash

    bundle = bundles("onnx", "fp32")
    m = manifest_of(bundle)
    validate(m)
    assert m["format_version"] == 1 and m["model"]["family"] == "mobilevlm_v2"
    assert m["num_image_tokens"] == 144 and m["max_seq_len"] == 512
    assert m["special_tokens"] == {"bos": 1, "eos": 2, "unk": 0, "pad": 0}
    assert m["image"]["pad_colour"] == [122, 116, 104] and m["image"]["size"] == 72
    assert set(ImageConfig(size=72).to_dict()) == set(m["image"])
    assert "<image>" in m["prompt"]["text"] and m["prompt"]["text"].index("<image>") == m["prompt"]["image_placeholder_offset"]
    assert m["source"]["sha256"] == checkpoint_hash(checkpoint)
    for rel, entry in m["files"].items():
        assert sha256_file(bundle / rel) == entry["sha256"]
    assert m["export"]["peak_rss_bytes"] > 0 and "onnxruntime" in m["export"]["versions"]


def test_checkpoint_untouched(bundles, checkpoint):
    from alignkd.export.manifest import checkpoint_hash

    before = checkpoint_hash(checkpoint)
    bundles("onnx", "fp32")
    assert checkpoint_hash(checkpoint) == before


@pytest.mark.parametrize("damage", ["modify", "truncate", "delete"])
def test_tampered_file_refused(bundles, tmp_path, damage):
    from alignkd.runtime.bundle import load_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(bundles("onnx", "fp32"), copy)
    target = copy / "text_decoder.onnx"
    data = target.read_bytes()
    if damage == "modify":
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    else:
        target.unlink()
    with pytest.raises(AlignKDError, match="text_decoder.onnx"):
        load_bundle(copy)


def test_invalid_manifest_refused(bundles, tmp_path):
    from alignkd.runtime.bundle import load_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(bundles("onnx", "fp32"), copy)
    m = manifest_of(copy)
    del m["parts"]["text_decoder"]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AlignKDError, match="schema at parts"):
        load_bundle(copy)


def test_load_model_dispatches_to_bundle(bundles):
    from alignkd.runtime.loader import load_model

    loaded = load_model(bundles("onnx", "fp32"))
    assert loaded.kind == "onnx" and loaded.backend.max_seq_len == 512 and loaded.size_bytes > 0


def _copy_with(bundles, tmp_path, target="onnx", quant="fp32", edit=None):
    copy = tmp_path / "bundle"
    shutil.copytree(bundles(target, quant), copy, symlinks=True)
    if edit is not None:
        m = manifest_of(copy)
        edit(m, copy)
        (copy / "manifest.json").write_text(json.dumps(m))
    return copy


def _refused_before_any_part_loads(copy, match, monkeypatch):
    from alignkd.runtime import onnx_backend
    from alignkd.runtime.bundle import load_bundle

    monkeypatch.setattr(onnx_backend, "OnnxBackend", lambda *a, **k: pytest.fail("a part was loaded"))
    with pytest.raises(AlignKDError, match=match):
        load_bundle(copy)


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_part_outside_the_bundle_is_refused(bundles, tmp_path, monkeypatch, where):
    outside = tmp_path / "x.onnx"
    shutil.copy(bundles("onnx", "fp32") / "text_decoder.onnx", outside)

    def edit(m, copy):
        m["parts"]["text_decoder"]["file"] = "../x.onnx" if where == "dotdot" else str(outside)
    copy = _copy_with(bundles, tmp_path, edit=edit)
    _refused_before_any_part_loads(copy, r"part text_decoder .*x.onnx' points outside the bundle folder", monkeypatch)


def test_part_through_a_symlink_leading_out_is_refused(bundles, tmp_path, monkeypatch):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(bundles("onnx", "fp32") / "text_decoder.onnx", outside)

    def edit(m, copy):
        (copy / "linked.onnx").symlink_to(outside)
        m["parts"]["text_decoder"]["file"] = "linked.onnx"
        m["files"]["linked.onnx"] = m["files"]["text_decoder.onnx"]  # listed, even with the right hash
    copy = _copy_with(bundles, tmp_path, edit=edit)
    _refused_before_any_part_loads(copy, r"'linked.onnx' points outside the bundle folder", monkeypatch)


def test_part_not_listed_in_files_is_refused(bundles, tmp_path, monkeypatch):
    def edit(m, copy):
        shutil.copy(copy / "text_decoder.onnx", copy / "unlisted.onnx")
        m["parts"]["text_decoder"]["file"] = "unlisted.onnx"
    copy = _copy_with(bundles, tmp_path, edit=edit)
    _refused_before_any_part_loads(copy, r"part text_decoder 'unlisted.onnx' is not listed in .*files", monkeypatch)


def test_tokenizer_file_not_listed_is_refused(bundles, tmp_path, monkeypatch):
    copy = _copy_with(bundles, tmp_path, edit=lambda m, copy: m["files"].pop("tokenizer.model"))
    _refused_before_any_part_loads(copy, r"tokenizer file sentencepiece 'tokenizer.model' is not listed", monkeypatch)


def test_files_entry_outside_the_bundle_is_not_hashed(bundles, tmp_path, monkeypatch):
    from alignkd.contract import manifest as mf

    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")

    def edit(m, copy):
        m["files"]["../secret.txt"] = {"sha256": mf.sha256_file(secret), "bytes": secret.stat().st_size}
    copy = _copy_with(bundles, tmp_path, edit=edit)
    hashed = []
    real = mf.sha256_file
    monkeypatch.setattr(mf, "sha256_file", lambda path, *a: hashed.append(path) or real(path, *a))
    _refused_before_any_part_loads(copy, r"file '../secret.txt' points outside the bundle folder", monkeypatch)
    assert secret not in hashed and all(copy.resolve() in p.resolve().parents for p in hashed)


def test_unlisted_file_inside_a_package_part_is_refused(bundles, tmp_path):
    """A Core ML part is a folder: every file in it must be listed (and so verified) before it is loaded."""
    from alignkd.runtime.bundle import load_bundle

    copy = _copy_with(bundles, tmp_path, "coreml", "fp16")
    (copy / "text_decoder.mlpackage" / "Data" / "smuggled.bin").write_bytes(b"\0" * 16)
    with pytest.raises(AlignKDError, match=r"part text_decoder .*smuggled.bin is not listed in files"):
        load_bundle(copy)
