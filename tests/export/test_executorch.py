"""ExecuTorch bundles: parity at export, the runtime loop, and ExecuTorch's own MultimodalRunner."""

import pytest

from tests.export.conftest import manifest_of

pytest.importorskip("executorch")


def test_fp32_parity_is_exact(bundles):
    m = manifest_of(bundles("executorch", "fp32"))
    assert set(m["files"]) >= {"model.pte", "tokenizer.json", "tokenizer.model"}
    parity = m["parity"]
    assert parity["measured"] and parity["passed"]
    assert parity["end_to_end"]["exact_match"]
    assert all(len(p["eager_tokens"]) > 0 for p in parity["end_to_end"]["pairs"])
    for part, fig in parity["parts"].items():
        assert fig["max_abs"] < 1e-4 and fig["cosine"] > 0.99999, part


def test_8da4w_reports_drift_within_thresholds(bundles):
    from alignkd.export.parity import MIN_LOGIT_COSINE, MIN_TOKEN_AGREEMENT

    m = manifest_of(bundles("executorch", "8da4w", embedding_bits=8))
    assert m["quant"] == {"scheme": "8da4w", "group_size": 32, "vision": "fp32", "embedding_bits": 8, "lm_head_bits": 8}
    e2e = m["parity"]["end_to_end"]
    assert e2e["token_agreement"] >= MIN_TOKEN_AGREEMENT["8da4w"]
    assert e2e["logit_cosine"] >= MIN_LOGIT_COSINE["8da4w"]
    assert m["files"]["model.pte"]["bytes"] < manifest_of(bundles("executorch", "fp32"))["files"]["model.pte"]["bytes"]


def test_8da4w_keeps_the_lm_head_at_int8_per_channel(checkpoint):
    """The output projection at int4 moved every yes/no logit margin of the trained toy teacher the same way and
    flipped 11% of its POPE answers (docs/export.md); it is int8 per output channel, the other linears int4 in groups."""
    from alignkd.export.executorch import LM_HEAD, build_decoder
    from alignkd.export.quantize import quantize_decoder_linears
    from alignkd.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    decoder = quantize_decoder_linears(build_decoder(model, 512), "8da4w", 32, lm_head=LM_HEAD)
    head, wq = decoder.transformer.output.weight, decoder.transformer.layers[0].attention.wq.weight
    assert tuple(head.block_size) == (1, model.config.llm.hidden_size) and tuple(wq.block_size) == (1, 32)
    assert int(head.qdata.min()) < -8 or int(head.qdata.max()) > 7  # int8 values, beyond int4's range
    assert -8 <= int(wq.qdata.min()) and int(wq.qdata.max()) <= 7


def test_generate_on_bundle_equals_checkpoint(bundles, checkpoint, fixture_dir):
    """`alignkd generate --model BUNDLE --json` gives the source checkpoint's output_ids (fp32)."""
    from alignkd.runtime.run import generate_from_checkpoint

    image = fixture_dir / "images" / "img0.png"
    q = "What shapes can you see in this picture?"
    ref = generate_from_checkpoint(checkpoint, q, image, max_new_tokens=24)
    got = generate_from_checkpoint(bundles("executorch", "fp32"), q, image, max_new_tokens=24)
    assert got.output_ids == ref.output_ids and got.input_ids == ref.input_ids


def test_constant_methods(bundles):
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(bundles("executorch", "fp32") / "model.pte"))
    names = program.method_names
    assert {"vision_encoder", "token_embedding", "text_decoder", "get_max_seq_len", "get_eos_ids", "use_kv_cache"} <= set(names)
    assert program.load_method("get_max_seq_len").execute([])[0] == 512


def _runner_text(bundle, tokenizer_json, token_inputs, pixels, n):
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.runner import GenerationConfig, MultimodalRunner, make_image_input, make_token_input

    runner = MultimodalRunner(str(bundle / "model.pte"), str(tokenizer_json))
    before, after = token_inputs
    pieces = []
    runner.generate([make_token_input(before), make_image_input(pixels[0]), make_token_input(after)],
                    GenerationConfig(max_new_tokens=n, temperature=0.0, echo=False), token_callback=pieces.append)
    return "".join(pieces)


@pytest.mark.parametrize("quant", ["fp32", "8da4w"])
def test_multimodal_runner_runs_bundle_unchanged(bundles, tmp_path, quant):
    """ExecuTorch's MultimodalRunner (Python bindings) runs the .pte and gives the bundle's greedy tokens.

    The random tiny model emits many byte-fallback pieces, which the runner's per-token Python callback cannot
    pass as str; so the check decodes through a copy of tokenizer.json without ByteFallback (bytes then print
    as `<0xNN>`), which makes every one of the 32 tokens visible.
    """
    import json

    from alignkd.data.image import ImageProcessor
    from alignkd.data.templates import tokenize_with_image
    from alignkd.export.parity import golden_pairs
    from alignkd.runtime.bundle import load_bundle
    from alignkd.runtime.generation import build_prompt

    bundle = bundles("executorch", quant, **({"embedding_bits": 8} if quant == "8da4w" else {}))
    loaded = load_bundle(bundle)
    expected = manifest_of(bundle)["parity"]["end_to_end"]["pairs"][0]["bundle_tokens"]
    image, question = golden_pairs()[0]
    ids = tokenize_with_image(build_prompt(question, 1), loaded.tokenizer)
    cut = ids.index(-200)
    pixels = ImageProcessor(loaded.image_config)([image])
    spec = json.loads((bundle / "tokenizer.json").read_text())
    spec["decoder"]["decoders"] = [d for d in spec["decoder"]["decoders"] if d["type"] != "ByteFallback"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    text = _runner_text(bundle, tmp_path / "tokenizer.json", (ids[:cut], ids[cut + 1:]), pixels, len(expected))
    # the runner decodes token by token, so the Strip decoder drops each piece's leading space
    pieces = [loaded.tokenizer.sp.IdToPiece(i).replace("\u2581", " ").removeprefix(" ") for i in expected]
    assert text == "".join(p for p in pieces if p != "</s>")


def test_bundle_tokenizer_json_matches_sentencepiece(bundles):
    """tokenizer.json (for ExecuTorch's runners) tokenizes and decodes as alignkd's legacy tokenizer."""
    from tokenizers import Tokenizer as HFTokenizer

    from alignkd.data.tokenizer import Tokenizer

    bundle = bundles("executorch", "fp32")
    hf, sp = HFTokenizer.from_file(str(bundle / "tokenizer.json")), Tokenizer.from_folder(bundle)
    for text in ["hello", " leading space", "A chat between a curious user. USER:", "\nWhat shapes? ASSISTANT:", "héllo ✓"]:
        assert hf.encode(text, add_special_tokens=False).ids == sp.encode(text, add_special_tokens=False)
        ids = sp.encode(text, add_special_tokens=False)
        assert hf.decode(ids) == sp.decode(ids)


@pytest.mark.slow
@pytest.mark.parametrize("quant,options", [("8da8w", {}), ("8da4w", {"embedding_bits": 4, "vision_quant": "int8", "group_size": 64})])
def test_other_schemes(bundles, quant, options):
    from alignkd.export.parity import MIN_LOGIT_COSINE

    m = manifest_of(bundles("executorch", quant, **options))
    assert m["parity"]["passed"] and m["parity"]["end_to_end"]["logit_cosine"] >= MIN_LOGIT_COSINE[quant]
    if options.get("vision_quant") == "int8":
        assert m["parts"]["vision_encoder"]["quant"] == "int8" and m["parts"]["token_embedding"]["quant"] == "int4"
        assert m["parity"]["parts"]["vision_encoder"]["cosine"] > 0.9


def test_prompt_longer_than_the_bundle_is_one_error(bundles, fixture_dir):
    """ExecuTorch's own failure is `set_inputs ... error 0x10`; the length is checked before any part runs."""
    from alignkd.errors import AlignKDError
    from alignkd.runtime.run import generate_from_checkpoint

    long_question = "Describe the picture in detail, please. " * 80  # ~700 text positions > max_seq_len 512
    with pytest.raises(AlignKDError, match=r"the prompt takes \d+ positions \(its text alone\) but the model's context is 512.*shorten the prompt"):
        generate_from_checkpoint(bundles("executorch", "fp32"), long_question, fixture_dir / "images" / "img0.png")


def test_backend_refuses_a_chunk_past_the_exported_bound(bundles):
    import torch

    from alignkd.errors import AlignKDError
    from alignkd.runtime.executorch_backend import ExecuTorchBackend

    backend = ExecuTorchBackend(bundles("executorch", "fp32") / "model.pte", 512, 512)
    assert backend.embed_tokens(torch.ones(1, 511, dtype=torch.long)).shape[1] == 511
    with pytest.raises(AlignKDError, match="needs 512 positions but this ExecuTorch bundle holds at most 511"):
        backend.embed_tokens(torch.ones(1, 512, dtype=torch.long))
    with pytest.raises(AlignKDError, match="re-export with a larger --max-seq-len"):
        backend.decode(torch.zeros(1, 1, 64), 512)


def test_manifest_max_seq_len_above_the_program_is_refused_at_load(bundles, tmp_path):
    import json
    import shutil

    from alignkd.errors import AlignKDError
    from alignkd.runtime.bundle import load_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(bundles("executorch", "fp32"), copy)
    m = manifest_of(copy)
    m["max_seq_len"] = 1024  # the program's cache (get_max_seq_len) holds 512
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AlignKDError, match="manifest says max_seq_len 1024 but .*model.pte was exported with 512"):
        load_bundle(copy)
