"""Image loading and MobileVLM's preprocessing: pad to a square with the mean colour, then CLIP's processor.

`process_images` in the official code (`image_aspect_ratio="pad"`): paste the RGB image centred on a square
canvas filled with `int(mean * 255)` per channel = (122, 116, 104), then `CLIPImageProcessor` (bicubic resize
of the shortest edge on uint8 through PIL, centre crop, rescale 1/255, normalise). transformers' PIL backend
of that processor (`CLIPImageProcessorPil`) reproduces the official pixel values bit for bit
(`tests/data/test_image.py`), so we use it rather than a re-implementation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignkd.errors import AlignKDError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.BICUBIC, as "resample" in preprocessor_config.json
# Largest image decoded: PIL's own warning threshold (about 89 MP, a 9459 x 9459 square; ~270 MB as RGB). The
# model sees 336 x 336, so anything larger is a mistake or a decompression bomb.
MAX_IMAGE_PIXELS = 89_478_485


class ImageTooLargeError(AlignKDError):
    """An image whose header declares more pixels than the cap; nothing was decoded."""


@dataclass
class ImageConfig:
    """The preprocessing constants; the same numbers go into an exported bundle's manifest."""

    size: int = 336  # shortest edge after resize, and the centre-crop side
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = BICUBIC
    rescale_factor: float = 1 / 255
    aspect_ratio: str = "pad"  # "pad" (V2 inference and fine-tuning) or "square" (resize + crop, no pad)
    extra: dict = field(default_factory=dict)  # unknown keys of preprocessor_config.json, kept for saving

    @property
    def pad_colour(self) -> tuple[int, int, int]:
        return tuple(int(m * 255) for m in self.mean)

    @classmethod
    def from_preprocessor_config(cls, path: Path, aspect_ratio: str = "pad") -> "ImageConfig":
        try:
            cfg = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise AlignKDError(f"cannot read image-processor config {path} ({err}); it must be the CLIP preprocessor_config.json") from err
        size = cfg.get("crop_size", cfg.get("size", {}))
        size = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
        known = {"crop_size", "size", "image_mean", "image_std", "resample", "rescale_factor"}
        return cls(
            size=int(size),
            mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
            resample=int(cfg.get("resample", BICUBIC)),
            rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
            aspect_ratio=aspect_ratio,
            extra={k: v for k, v in cfg.items() if k not in known},
        )

    def to_preprocessor_config(self) -> dict:
        cfg = {
            "crop_size": {"height": self.size, "width": self.size},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": list(self.mean),
            "image_processor_type": "CLIPImageProcessor",
            "image_std": list(self.std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": {"shortest_edge": self.size},
        }
        return {**self.extra, **cfg}

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("extra")
        out["pad_colour"] = list(self.pad_colour)
        return out


def load_image(path: str | Path, max_pixels: int | None = None):
    """Open an image file as RGB, or fail with the file's name.

    The size is read from the header and checked against `max_pixels` (default MAX_IMAGE_PIXELS) before any
    pixel is decoded, so a decompression bomb costs nothing; callers may catch the AlignKDError to skip a file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not path.is_file():
        raise AlignKDError(f"image file {path} does not exist; pass the path of a PNG/JPEG image")
    try:
        with Image.open(path) as img:  # reads the header only
            _check_pixels(path, img.size, limit)
            img.load()
            return img.convert("RGB")
    except Image.DecompressionBombError:  # PIL's own cap fired first (a size far above its limit)
        raise ImageTooLargeError(f"image {path} has more pixels than the limit of {limit:,} and is not decoded; "
                                 "resize it (the model sees it at a few hundred pixels a side)") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise AlignKDError(f"cannot decode image {path} ({err}); re-save it as PNG or JPEG") from err


def _check_pixels(path: Path, size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise ImageTooLargeError(f"image {path} is {width}x{height} = {width * height:,} pixels, above the limit of {limit:,}; "
                                 "resize it (the model sees it at a few hundred pixels a side)")


def expand_to_square(img, colour: tuple[int, int, int]):
    """`expand2square`: centre the image on a square canvas of the long side's length."""
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), colour)
    canvas.paste(img, ((side - w) // 2, 0) if w < h else (0, (side - h) // 2))
    return canvas


class ImageProcessor:
    """PIL images -> pixel values [N, 3, size, size] float32, exactly as the official `process_images`."""

    def __init__(self, config: ImageConfig):
        from transformers.models.clip import CLIPImageProcessorPil

        self.config = config
        self._clip = CLIPImageProcessorPil(
            size={"shortest_edge": config.size},
            crop_size={"height": config.size, "width": config.size},
            resample=config.resample,
            rescale_factor=config.rescale_factor,
            image_mean=list(config.mean),
            image_std=list(config.std),
            do_center_crop=True,
            do_convert_rgb=True,
        )

    def __call__(self, images):
        import torch

        images = [img.convert("RGB") for img in images]
        if self.config.aspect_ratio == "pad":
            images = [expand_to_square(img, self.config.pad_colour) for img in images]
        pixels = self._clip(images=images, return_tensors="np")["pixel_values"]
        return torch.from_numpy(pixels)
