"""Size presets reproduce the published checkpoints' exact parameter counts (meta device, nothing allocated)."""

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
