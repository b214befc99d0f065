"""The exported modules against the eager model, before any backend is involved."""

import torch

from alignkd.contract.decoder import causal_mask
from alignkd.export.parts import PastKVDecoder, StatefulDecoder, VisionEncoder, check_vision_encoder


def test_vision_encoder_truncated_equals_eager(official, fixture_dir):
    import numpy as np

    model, _ = official
    pixels = torch.from_numpy(np.load(fixture_dir / "preprocess" / "pixel_values.npy"))
    enc = VisionEncoder(model)
    # select_layer -2 of 3 layers: two layers run, the last one and the post-LN are not exported
    assert len(enc.layers) == model.config.vision.num_hidden_layers - 1
    assert enc.grid == 24  # so the 12x12 adaptive pool is replaced by avg_pool2d(2)
    assert check_vision_encoder(model, pixels) < 1e-5
    with torch.no_grad():
        official_features = torch.from_numpy(np.load(fixture_dir / "forward" / "case0_image_features.npy"))
        assert torch.allclose(enc(pixels[:1])[0], official_features.reshape(enc(pixels[:1])[0].shape), atol=1e-5)


def test_vision_encoder_pools_the_toy_grid_with_a_plain_avg_pool():
    """The synthetic presets' toy CLIP (96 px, 8 px patches: 12x12) pools to 6x6: avg_pool2d(2), equal to the eager model."""
    from alignkd.models.mobilevlm import MobileVLM, get_preset

    torch.manual_seed(0)
    model = MobileVLM(get_preset("synth_student")).eval()
    enc = VisionEncoder(model)
    assert (enc.grid, enc.pooled) == (12, 6)
    pixels = torch.randn(2, 3, 96, 96)
    assert check_vision_encoder(model, pixels) < 1e-5
    graph = torch.export.export(enc, (pixels[:1],)).graph_module.code
    assert "avg_pool2d" in graph and "adaptive" not in graph
    assert enc(pixels[:1]).shape == (1, 36, model.config.hidden_size)


def test_vision_encoder_on_equal_grids_skips_the_pool():
    """A CLIP grid that already is the pooled grid (12x12 -> 12x12) emits no pooling op at all."""
    from dataclasses import replace

    from alignkd.models.mobilevlm import MobileVLM, get_preset

    torch.manual_seed(0)
    model = MobileVLM(replace(get_preset("synth_student"), pooled_grid=12)).eval()
    enc = VisionEncoder(model)
    assert enc.grid == enc.pooled == 12
    pixels = torch.randn(2, 3, 96, 96)
    assert check_vision_encoder(model, pixels) < 1e-5
    graph = torch.export.export(enc, (pixels[:1],)).graph_module.code
    assert "pool" not in graph


@torch.inference_mode()
def test_past_kv_decoder_matches_eager(official):
    model, _ = official
    cfg = model.config.llm
    dec = PastKVDecoder(model)
    embeds = torch.randn(1, 7, cfg.hidden_size)
    ref = model.llm(inputs_embeds=embeds).logits
    head = cfg.hidden_size // cfg.num_attention_heads
    empty = tuple(torch.zeros(1, cfg.num_key_value_heads, 0, head) for _ in range(2 * cfg.num_hidden_layers))
    out = dec(embeds[:, :5], torch.ones(1, 5, dtype=torch.long), torch.arange(5)[None], empty)
    step = dec(embeds[:, 5:7], torch.ones(1, 7, dtype=torch.long), torch.arange(5, 7)[None], tuple(out[1:]))
    assert torch.allclose(out[0], ref[:, :5], atol=1e-5)
    assert torch.allclose(step[0], ref[:, 5:7], atol=1e-5)
    assert step[1].shape[2] == 7


@torch.inference_mode()
def test_stateful_decoder_matches_eager(official):
    """The module converted to Core ML: fp32 cache is exact, the fp16 cache (what Core ML holds) close."""
    model, _ = official
    embeds = torch.randn(1, 9, model.config.llm.hidden_size)
    ref = model.llm(inputs_embeds=embeds).logits
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 5e-2)):
        dec = StatefulDecoder(model, 32, cache_dtype=dtype)
        pre = dec(embeds[:, :6], causal_mask(0, 6))
        steps = [dec(embeds[:, i:i + 1], causal_mask(i, 1)) for i in range(6, 9)]
        got = torch.cat([pre] + steps, dim=1)
        assert (got - ref).abs().max() < tol, dtype


def test_causal_mask():
    m = causal_mask(2, 3)[0, 0]
    assert m.shape == (3, 5)
    assert torch.isinf(m[0, 3]) and m[0, 2] == 0 and m[2, 4] == 0
