"""Size presets reproduce the published checkpoints' exact parameter counts (meta device, nothing allocated)."""

import json

import pytest

from alignkd.errors import AlignKDError
from alignkd.models.mobilevlm import get_preset, num_parameters


@pytest.mark.parametrize("name,count", [
    ("mobilevlm_v2_1_7b", 1_674_121_216),
    ("mobilevlm_v2_3b", 3_014_273_536),
    ("mobilevlm_v2_7b", 7_062_943_744),
])
def test_published_parameter_counts(name, count):
    assert num_parameters(get_preset(name)) == count


def test_tiny_preset_matches_official_tiny(expected):
    assert num_parameters(get_preset("mobilevlm_tiny")) == expected["n_params"]


def test_image_tokens_and_heads():
    cfg = get_preset("mobilevlm_v2_3b")
    assert cfg.num_image_tokens == 144
    assert (cfg.num_heads, cfg.llm.head_dim) == (32, 80)  # not the lit-gpt leftover n_head=16


def test_unknown_preset():
    with pytest.raises(AlignKDError, match="valid presets: mobilevlm_v2_1_7b"):
        get_preset("mobilevlm_v3")


def test_pooled_grid_round_trips_through_config_json(tmp_path):
    """The toy presets' 6x6 pool is saved under our own key; official 12x12 configs stay byte-for-byte official."""
    from alignkd.models.checkpoint import config_to_official, load_config
    from alignkd.models.mobilevlm import POOLED_GRID_KEY

    from dataclasses import replace

    real = get_preset("mobilevlm_v2_1_7b")
    assert get_preset("synth_student").pooled_grid == get_preset("synth_teacher").pooled_grid == 6
    assert POOLED_GRID_KEY not in config_to_official(real)
    raw = config_to_official(replace(real, pooled_grid=6))  # the real CLIP config is built in: no vision_tower/ needed
    assert raw[POOLED_GRID_KEY] == 6
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded = load_config(tmp_path)
    assert loaded.pooled_grid == 6 and loaded.num_image_tokens == 36 and POOLED_GRID_KEY not in loaded.extra
    raw[POOLED_GRID_KEY] = 0
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(AlignKDError, match=f"{POOLED_GRID_KEY}=0 must be a positive integer"):
        load_config(tmp_path)
