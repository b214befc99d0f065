"""Image preprocessing equals the official `process_images` bit for bit; bad images fail clearly."""

import numpy as np
import pytest
from PIL import Image, ImageFile

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


def _png_header_only(path, width, height):
    """A PNG that declares width x height but holds no pixel data: opening it reads only the header."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_one_error_naming_file_and_limit(tmp_path):
    """20000 x 20000 (400 MP): PIL's own DecompressionBombError becomes one AlignKDError, nothing is decoded."""
    from alignkd.data.image import MAX_IMAGE_PIXELS, ImageTooLargeError

    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ImageTooLargeError, match=f"bomb.png.*limit of {MAX_IMAGE_PIXELS:,}.*resize it") as err:
        load_image(bomb)
    assert isinstance(err.value, AlignKDError)


def test_pixel_cap_is_checked_before_decoding(tmp_path, monkeypatch):
    """Below PIL's own cap but above ours: refused from the header, before load() decodes anything."""
    from alignkd.data.image import ImageTooLargeError

    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    with pytest.raises(ImageTooLargeError, match=r"big.png is 40x30 = 1,200 pixels, above the limit of 1,000"):
        load_image(path, max_pixels=1000)
    assert not decoded
