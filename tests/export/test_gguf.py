"""GGUF bundles (llama.cpp): the files read back with the gguf package, llama.cpp's own tokenizer on our vocab,
f32 parity with the official fixture's greedy tokens through llama.cpp, the quantised variants, and bad inputs."""

import json
import shutil
from pathlib import Path

import pytest

from tests.export.conftest import manifest_of

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'alignkd[gguf]' (builds llama.cpp)")
gguf = pytest.importorskip("gguf", reason="the gguf package is not installed: pip install 'alignkd[gguf]'")

GOLDEN = Path(__file__).resolve().parents[2] / "export" / "golden"
QUANTS = ("f16", "q8_0", "q4_0", "q4_k_s")


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return reader, {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_language_model_file(bundles, checkpoint):
    from alignkd.data.tokenizer import Tokenizer
    from alignkd.models.checkpoint import load_config

    config, tok = load_config(checkpoint).llm, Tokenizer.from_folder(checkpoint)
    reader, kv = _fields(bundles("gguf", "f32") / "model.gguf")
    assert kv["general.architecture"] == "llama" and kv["general.file_type"] == 0
    assert (kv["llama.embedding_length"], kv["llama.block_count"], kv["llama.feed_forward_length"]) == (64, 2, 128)
    assert (kv["llama.attention.head_count"], kv["llama.attention.head_count_kv"], kv["llama.rope.dimension_count"]) == (4, 4, 16)
    assert kv["llama.rope.freq_base"] == 10000.0 and kv["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert kv["tokenizer.ggml.model"] == "llama"
    assert kv["tokenizer.ggml.tokens"] == [tok.sp.IdToPiece(i) for i in range(config.vocab_size)]
    assert kv["tokenizer.ggml.scores"] == pytest.approx([tok.sp.GetScore(i) for i in range(config.vocab_size)])
    types = kv["tokenizer.ggml.token_type"]
    assert (types[0], types[1], types[2], types[3], types[300]) == (2, 3, 3, 6, 1)  # unk, bos, eos, <0x00>, a piece
    ids = (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"], kv["tokenizer.ggml.unknown_token_id"],
           kv["tokenizer.ggml.padding_token_id"])
    assert ids == (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id)
    assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.ggml.add_eos_token"] is False
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    assert shapes["token_embd.weight"] == [64, 512] and shapes["output.weight"] == [64, 512]
    assert shapes["blk.1.ffn_down.weight"] == [128, 64] and shapes["output_norm.weight"] == [64]
    assert len(shapes) == 3 + 2 * 9


def test_projector_file(bundles):
    reader, kv = _fields(bundles("gguf", "f32") / "mmproj.gguf")
    assert kv["general.architecture"] == "clip" and kv["clip.projector_type"] == "ldpv2"
    # hidden_states[-2] of a 3-layer CLIP is the output of 2 layers: 2 blocks stored, feature layer 2.
    assert kv["clip.vision.block_count"] == 2 and kv["clip.vision.feature_layer"] == [2]
    assert (kv["clip.vision.image_size"], kv["clip.vision.patch_size"], kv["clip.use_gelu"]) == (72, 3, False)
    shapes = {t.name: ([int(n) for n in t.shape], t.tensor_type.name) for t in reader.tensors}
    assert shapes["mm.model.peg.0.weight"] == ([3, 3, 64], "F16")  # ggml has no f32 depthwise-conv kernel path
    assert shapes["v.patch_embd.weight"] == ([3, 3, 3, 32], "F32")
    assert "v.blk.1.ffn_up.weight" in shapes and "v.blk.2.attn_q.weight" not in shapes and "v.post_ln.weight" not in shapes


def test_llama_cpp_tokenizes_like_ours(bundles, checkpoint):
    """llama.cpp's own SentencePiece tokenizer on the GGUF vocab gives alignkd's ids (llama-cli sees our prompts)."""
    import llama_cpp

    from alignkd.data.tokenizer import Tokenizer

    ours = Tokenizer.from_folder(checkpoint)
    llm = llama_cpp.Llama(str(bundles("gguf", "f32") / "model.gguf"), vocab_only=True, verbose=False)
    for text in ("A chat between a curious user and an artificial intelligence assistant.", " leading space, 123 digits!",
                 "USER: What colour is the largest object? ASSISTANT:"):
        assert llm.tokenize(text.encode(), add_bos=True) == ours.encode(text), text


def _eager_images_generate(bundle, checkpoint, image_path, question, n):
    """The GGUF model through llama.cpp, fed the eager image tokens (what export judges: see EagerImages)."""
    from alignkd.data.image import ImageProcessor, load_image
    from alignkd.export.gguf import EagerImages
    from alignkd.runtime.generation import GenerationConfig, build_prompt, generate
    from alignkd.runtime.loader import load_model

    gguf_model, eager = load_model(bundle), load_model(checkpoint)
    pixels = ImageProcessor(gguf_model.image_config)([load_image(image_path)])
    return generate(EagerImages(eager.backend, gguf_model.backend), gguf_model.tokenizer, build_prompt(question, 1), pixels,
                    GenerationConfig(max_new_tokens=n))


@pytest.mark.parametrize("case", [0, 1])
def test_f32_gives_official_greedy_tokens(bundles, checkpoint, fixture_dir, expected, case):
    """The official MobileVLM code's greedy tokens from llama.cpp's llama_decode on model.gguf (image tokens in)."""
    c = expected["cases"][case]
    got = _eager_images_generate(bundles("gguf", "f32"), checkpoint, fixture_dir / c["image_file"], c["question"],
                                 c["generate"]["max_new_tokens"])
    assert got.input_ids == c["input_ids"]
    assert got.output_ids == c["generate"]["new_token_ids"]


def test_f32_gives_golden_tokens(bundles, checkpoint):
    golden = json.loads((GOLDEN / "golden.json").read_text())
    for pair in golden["pairs"]:
        got = _eager_images_generate(bundles("gguf", "f32"), checkpoint, GOLDEN / pair["image"], pair["question"],
                                     golden["decoding"]["max_new_tokens"])
        assert got.output_ids == pair["expected_tokens"], pair["image"]


def test_f32_parity_at_export(bundles):
    m = manifest_of(bundles("gguf", "f32"))
    assert m["target"] == "gguf" and m["quant"] == {"scheme": "f32", "vision": "fp32", "embedding_bits": None}
    assert {"model.gguf", "mmproj.gguf", "tokenizer.model"} <= set(m["files"])
    assert "AVX2 = 1" in m["export"]["llama_cpp"]["system_info"]
    parity = m["parity"]
    assert parity["measured"] and parity["passed"] and parity["end_to_end"]["exact_match"]
    assert parity["parts"]["token_embedding"]["max_abs"] == 0.0 and parity["parts"]["text_decoder"]["max_abs"] < 1e-4


def test_llama_cpp_image_path_is_its_class_token_last_graph(bundles, checkpoint):
    """mtmd's image tokens equal the PyTorch emulation of llama.cpp's llava graph (class token last, issue 25814),
    so the projector GGUF is right and what differs from eager is llama.cpp's; `alignkd generate` runs that path."""
    from alignkd.runtime.run import generate_from_checkpoint

    bundle = bundles("gguf", "f32")
    path = manifest_of(bundle)["parity"]["llama_cpp_image_path"]
    assert path["vision_vs_cls_last_emulation"]["cosine"] > 0.9999  # tanh GELU and the f16 PEG kernel remain
    assert path["vision_vs_eager"]["cosine"] < path["vision_vs_cls_last_emulation"]["cosine"]
    assert 0 < path["end_to_end"]["token_agreement"] <= 1 and len(path["preprocessing"]["images"]) == 3
    got = generate_from_checkpoint(bundle, "Describe the image.", GOLDEN / "pair0.png", max_new_tokens=8)
    assert len(got.output_ids) >= 1 and got.timings["vision_encode_s"] > 0


@pytest.mark.parametrize("quant", QUANTS)
def test_quantised_variants_load_and_generate(bundles, quant):
    from alignkd.export.gguf import FTYPES
    from alignkd.export.parity import MIN_LOGIT_COSINE, MIN_TOKEN_AGREEMENT
    from alignkd.runtime.run import generate_from_checkpoint

    bundle = bundles("gguf", quant)
    m = manifest_of(bundle)
    assert m["quant"] == {"scheme": quant, "vision": "fp16", "embedding_bits": None}
    _, kv = _fields(bundle / "model.gguf")
    assert kv["general.file_type"] == FTYPES[quant]
    _, proj = _fields(bundle / "mmproj.gguf")
    assert proj["general.file_type"] == 1
    e2e = m["parity"]["end_to_end"]
    assert e2e["token_agreement"] >= MIN_TOKEN_AGREEMENT[quant] and e2e["logit_cosine"] >= MIN_LOGIT_COSINE[quant]
    f32 = manifest_of(bundles("gguf", "f32"))["files"]
    assert m["files"]["model.gguf"]["bytes"] < f32["model.gguf"]["bytes"]
    got = generate_from_checkpoint(bundle, "Describe the image.", GOLDEN / "pair1.png", max_new_tokens=8)
    assert len(got.output_ids) >= 1 and got.timings["prefill_tokens"] > 144


def test_projector_not_ldpv2_is_refused_by_name(bundles, tmp_path):
    """A projector GGUF of another kind (a LLaVA mlp one here) is refused before llama.cpp sees it."""
    from alignkd.errors import AlignKDError
    from alignkd.runtime.gguf_backend import GGUFBackend

    src = bundles("gguf", "f32")
    reader = gguf.GGUFReader(str(src / "mmproj.gguf"))
    writer = gguf.GGUFWriter(str(tmp_path / "mmproj.gguf"), "clip")
    writer.add_string("clip.projector_type", "mlp")
    for t in reader.tensors[:2]:
        writer.add_tensor(t.name, t.data)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(AlignKDError, match=r"is not a MobileVLM V2 projector \(clip.projector_type 'mlp', expected 'ldpv2'\)"):
        GGUFBackend(src / "model.gguf", tmp_path / "mmproj.gguf", 512, exact=True, image_size=72, mean=(0.5,) * 3,
                    std=(0.5,) * 3, rescale_factor=1 / 255)


def test_model_llama_cpp_cannot_run_is_refused_before_export(checkpoint, tmp_path):
    """llama.cpp's ldpv2 graph hard-codes a 24x24 patch grid: another grid is one error, before any file is written."""
    from alignkd.errors import AlignKDError
    from alignkd.export.gguf import check_model
    from alignkd.models.checkpoint import load_config

    config = load_config(checkpoint)
    config.vision.image_size = 36
    with pytest.raises(AlignKDError, match="needs a 24x24 CLIP patch grid but this model has 12x12"):
        check_model(config)


def test_bundle_with_tampered_model_file_is_refused(bundles, tmp_path):
    from alignkd.errors import AlignKDError
    from alignkd.runtime.bundle import load_bundle

    copy = tmp_path / "b"
    shutil.copytree(bundles("gguf", "q4_0"), copy)
    with open(copy / "model.gguf", "r+b") as fh:
        fh.seek(-16, 2)
        fh.write(b"\0" * 16)
    with pytest.raises(AlignKDError, match="model.gguf"):
        load_bundle(copy)


def test_cli_export_defaults_to_f32_and_loads_as_gguf(bundles):
    """`alignkd export CKPT --target gguf -o OUT` (no --quant): f32, token-exact, loaded by the gguf backend."""
    from alignkd.runtime.bundle import load_bundle

    bundle = bundles("gguf", "f32")
    args, result = bundles.runs[("gguf", "f32")]
    assert "--quant" not in args and result.exit_code == 0
    assert result.stdout.startswith(f"wrote {bundle}\n") and "end to end: exact eager tokens True" in result.stdout
    assert load_bundle(bundle).kind == "gguf"


# ---- --vision-runtime pytorch: llama.cpp's language model, the checkpoint's own PyTorch image tokens ----------

TEACHER = Path(__file__).resolve().parents[2] / "alignkd" / "assets" / "synth_teacher"  # 12x12 CLIP grid


@pytest.fixture(scope="module")
def pytorch_vision(tmp_path_factory):
    """The shipped toy teacher (a grid mtmd cannot run) exported through the CLI with --vision-runtime pytorch."""
    from typer.testing import CliRunner

    from alignkd.cli import app

    out = tmp_path_factory.mktemp("gguf_pytorch_vision") / "bundle"
    result = CliRunner().invoke(app, ["export", str(TEACHER), "--target", "gguf", "--vision-runtime", "pytorch",
                                      "--max-seq-len", "512", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_pytorch_vision_bundle_says_so(pytorch_vision):
    from alignkd.runtime.bundle import load_bundle

    bundle, result = pytorch_vision
    m = manifest_of(bundle)
    vision = m["parts"]["vision_encoder"]
    assert (vision["file"], vision["runtime"], vision["quant"], vision["function"]) == (
        "vision_encoder.safetensors", "pytorch", "fp32", "MobileVLM.encode_images")
    assert m["parts"]["text_decoder"]["file"] == "model.gguf" and "mmproj.gguf" not in m["files"]
    assert "llama_cpp_image_path" not in m["parity"]  # no mtmd in this bundle
    assert m["parity"]["passed"] and m["parity"]["end_to_end"]["exact_match"]
    assert m["parity"]["parts"]["vision_encoder"]["max_abs"] == 0.0
    assert "not llama.cpp's mtmd" in result.stdout
    assert load_bundle(bundle).kind == "gguf+pytorch-vision"


def test_pytorch_vision_bundle_gives_the_checkpoints_tokens(pytorch_vision):
    """The bundle on its own (no eager model fed in): llama.cpp's f32 decoder on the PyTorch image tokens."""
    from alignkd.runtime.run import generate_from_checkpoint

    bundle, _ = pytorch_vision
    golden = json.loads((GOLDEN / "golden.json").read_text())
    for pair in golden["pairs"]:
        args = (pair["question"], GOLDEN / pair["image"])
        got = generate_from_checkpoint(bundle, *args, max_new_tokens=12)
        want = generate_from_checkpoint(TEACHER, *args, max_new_tokens=12)
        assert got.output_ids == want.output_ids and len(got.output_ids) >= 1, pair["image"]
        assert got.kind == "gguf+pytorch-vision" and want.kind == "checkpoint"


def test_generate_and_eval_output_name_the_pytorch_image_side(pytorch_vision):
    from typer.testing import CliRunner

    from alignkd.cli import app
    from alignkd.eval.run import format_compare, format_table

    bundle, _ = pytorch_vision
    result = CliRunner().invoke(app, ["generate", "--model", str(bundle), "--image", str(GOLDEN / "pair0.png"),
                                      "--prompt", "Is there a circle?", "--max-new-tokens", "2"])
    assert result.exit_code == 0 and "note: this GGUF bundle's image tokens come from its PyTorch vision encoder" in result.stderr
    evaluation = {"model_id": "b", "kind": "gguf+pytorch-vision", "table": {}, "average": None, "partial": False, "benchmarks": {}}
    assert "not llama.cpp's mtmd" in format_table(evaluation)
    assert "not llama.cpp's mtmd" not in format_table({**evaluation, "kind": "gguf"})
    compared = {"bundle": evaluation, "reference": {"model_id": "r"}, "benchmarks": {}, "partial": False}
    assert "not llama.cpp's mtmd" in format_compare(compared)


def test_without_the_option_the_toy_grid_is_still_refused(tmp_path):
    from alignkd.errors import AlignKDError
    from alignkd.export import export_bundle

    with pytest.raises(AlignKDError) as err:
        export_bundle(TEACHER, "gguf", "q8_0", tmp_path / "b")
    assert str(err.value) == ("llama.cpp's ldpv2 projector needs a 24x24 CLIP patch grid but this model has 12x12 "
                              "(image 96, patch 8); use another target")
    assert not (tmp_path / "b").exists()


def test_vision_file_that_does_not_match_the_manifest_is_refused(pytorch_vision, tmp_path):
    """A vision_encoder.safetensors missing a weight, or with another shape, is one sentence (loaded directly:
    a bundle's own file would first fail its sha256)."""
    from safetensors.torch import load_file, save_file

    from alignkd.errors import AlignKDError
    from alignkd.runtime.gguf_backend import load_vision_encoder

    bundle, _ = pytorch_vision
    manifest, state = manifest_of(bundle), load_file(str(bundle / "vision_encoder.safetensors"))
    name = next(k for k in state if k.endswith("peg.peg.0.bias"))
    save_file({k: v for k, v in state.items() if k != name}, str(tmp_path / "missing.safetensors"))
    with pytest.raises(AlignKDError, match=r"does not hold the vision encoder .* \(1 weights missing or unexpected, such as "
                                           r"'mm_projector.peg.bias'\); re-export the bundle"):
        load_vision_encoder(tmp_path / "missing.safetensors", manifest, bundle / "manifest.json")
    save_file({**state, name: state[name][:-1].clone()}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(AlignKDError, match=r"does not hold the vision encoder .*size mismatch.*; re-export the bundle"):
        load_vision_encoder(tmp_path / "shape.safetensors", manifest, bundle / "manifest.json")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AlignKDError, match=r"cannot read the vision encoder .*junk.safetensors .*; re-export the bundle"):
        load_vision_encoder(tmp_path / "junk.safetensors", manifest, bundle / "manifest.json")


def test_llama_cpp_image_path_and_a_manifest_without_vision_config_are_refused(pytorch_vision):
    from PIL import Image

    from alignkd.errors import AlignKDError
    from alignkd.runtime.bundle import load_bundle
    from alignkd.runtime.gguf_backend import load_vision_encoder

    bundle, _ = pytorch_vision
    with pytest.raises(AlignKDError, match=r"has no llama.cpp image path \(it was exported with --vision-runtime pytorch\); "
                                           "re-export it without that option"):
        load_bundle(bundle).backend.encode_pil(Image.open(GOLDEN / "pair0.png"))
    manifest = manifest_of(bundle)
    del manifest["model"]["vision_config"]
    with pytest.raises(AlignKDError, match=r"manifest.json has no model.vision_config, which the PyTorch vision encoder is "
                                           "built from; re-export the bundle"):
        load_vision_encoder(bundle / "vision_encoder.safetensors", manifest, bundle / "manifest.json")


def test_manifest_runtime_is_a_closed_set(pytorch_vision):
    from alignkd.contract.manifest import validate
    from alignkd.errors import AlignKDError

    m = manifest_of(pytorch_vision[0])
    m["parts"]["vision_encoder"]["runtime"] = "onnxruntime"
    with pytest.raises(AlignKDError, match="does not follow the bundle schema at parts/vision_encoder/runtime"):
        validate(m)
