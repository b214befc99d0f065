"""The bundle contract: manifest schema, file hashes, tamper / truncation refusal, no side effects on the input."""

import json
import shutil

import pytest

from alignkd.errors import AlignKDError
from tests.export.conftest import manifest_of


def test_manifest_validates_and_describes_bundle(bundles, checkpoint):
    from alignkd.data.image import ImageConfig
    from alignkd.export.manifest import checkpoint_hash, sha256_file, validate

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
    from alignkd.runtime.generation import load_model

    loaded = load_model(bundles("onnx", "fp32"))
    assert loaded.kind == "onnx" and loaded.backend.max_seq_len == 512 and loaded.size_bytes > 0
