"""Image preprocessing equals the official `process_images` bit for bit; bad images fail clearly."""

import numpy as np
import pytest
from PIL import Image

from alignkd.data.image import ImageConfig, ImageProcessor, expand_to_square, load_image
from alignkd.errors import AlignKDError


def test_pixel_values_bit_exact(official, fixture_dir):
    model, _ = official
    images = [load_image(fixture_dir / "images" / f"img{i}.png") for i in range(3)]
    pixels = ImageProcessor(model.config.image)(images).numpy()
    assert pixels.shape == (3, 3, 72, 72)
    np.testing.assert_array_equal(pixels, np.load(fixture_dir / "preprocess" / "pixel_values.npy"))


def test_pad_to_square_matches_official(fixture_dir):
    for i in range(3):
        square = expand_to_square(load_image(fixture_dir / "images" / f"img{i}.png"), (122, 116, 104))
        want = np.asarray(Image.open(fixture_dir / "preprocess" / f"img{i}_square.png").convert("RGB"))
        np.testing.assert_array_equal(np.asarray(square), want)


def test_pad_colour_is_int_of_mean_times_255():
    assert ImageConfig().pad_colour == (122, 116, 104)


def test_preprocessor_config_round_trip(fixture_dir, tmp_path):
    cfg = ImageConfig.from_preprocessor_config(fixture_dir / "checkpoint" / "vision_tower" / "preprocessor_config.json")
    assert cfg.size == 72 and cfg.resample == 3
    path = tmp_path / "pre.json"
    import json

    path.write_text(json.dumps(cfg.to_preprocessor_config()))
    assert ImageConfig.from_preprocessor_config(path) == cfg


def test_corrupt_and_missing_image(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(AlignKDError, match="cannot decode image .*broken.png"):
        load_image(bad)
    with pytest.raises(AlignKDError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
