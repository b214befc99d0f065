"""Scenes of the synthetic world: sampling a structured scene record from a seed and drawing it with PIL.

A scene is a JSON-able dict: a plain or gradient background and 1-4 coloured shapes placed on a 3x3 grid,
some of the large ones carrying a short word or number on a white plate; or an "arithmetic card" (a sum
rendered as text, for MME's numerical_calculation). Every question in `synth_questions.py` is answered from
this record, never from the pixels, so the answers are exact. Same seed and size -> byte-identical PNG.

    rng = random.Random("0/train/17")
    scene = sample_scene(rng, 224)
    png = png_bytes(render_scene(scene))      # exercised by `alignkd data synth --out DIR`
"""

from __future__ import annotations

import io
import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Saturated object colours, all far from the light backgrounds below so every object stays visible. Four colours
# and three shapes (12 object classes): few enough that the toy teacher, whose language model starts from
# scratch, learns to match a question's words against its image tokens within its budget (docs/quickstart.md).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 0),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Skewed frequencies give POPE's "popular" sampling something to find (uniform classes would make it random).
COLOR_WEIGHTS = (5, 4, 3, 2)
SHAPE_WEIGHTS = (5, 4, 3)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "gray": (215, 215, 215),
    "beige": (240, 228, 200),
    "sky": (205, 228, 245),
    "mint": (210, 240, 220),
}
WORDS = (
    "cat", "dog", "sun", "box", "tea", "map", "cup", "hat", "key", "pen", "bus", "egg",
    "cake", "bird", "fish", "tree", "moon", "ship", "lamp", "book", "door", "milk", "rain", "frog",
    "shop", "exit", "stop", "open", "sale", "park", "food", "taxi", "home", "gold",
)
GRID = 3
POSITIONS_H = ("left", "middle", "right")
POSITIONS_V = ("top", "middle", "bottom")
# Radius as a fraction of the image side; a 3x3 cell is 0.333 wide, so even a large shape keeps clear of its
# neighbours and the row/column of a shape is also its true left/right/above/below order.
RADIUS = {"small": 0.075, "large": 0.13}


def object_name(obj: dict) -> str:
    """'red circle': the object class that POPE-like and existence questions ask about."""
    return f"{obj['color']} {obj['shape']}"


def sample_scene(rng: random.Random, image_size: int, min_objects: int = 1, max_objects: int = 4,
                 distinct: bool = False, text_prob: float = 0.35) -> dict:
    """A random shapes scene. `distinct=True` makes every (colour, shape) class appear at most once."""
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample(range(GRID * GRID), n)
    # Themed scenes (one colour or one shape repeated) make co-occurrence non-uniform, which is what POPE's
    # "adversarial" negatives exploit.
    theme = rng.choices(("none", "color", "shape"), weights=(5, 3, 2))[0]
    theme_color = rng.choices(list(COLORS), weights=COLOR_WEIGHTS)[0]
    theme_shape = rng.choices(SHAPES, weights=SHAPE_WEIGHTS)[0]
    objects, seen = [], set()
    for cell in cells:
        for _ in range(20):
            color = theme_color if theme == "color" and rng.random() < 0.7 else \
                rng.choices(list(COLORS), weights=COLOR_WEIGHTS)[0]
            shape = theme_shape if theme == "shape" and rng.random() < 0.7 else \
                rng.choices(SHAPES, weights=SHAPE_WEIGHTS)[0]
            if not distinct or (color, shape) not in seen:
                break
        if distinct and (color, shape) in seen:
            continue
        seen.add((color, shape))
        objects.append(_place(rng, cell, color, shape, rng.choice(SIZES), image_size))
    _add_texts(rng, objects, text_prob)
    return {"kind": "shapes", "size": [image_size, image_size], "background": _sample_background(rng),
            "objects": objects}


def _place(rng: random.Random, cell: int, color: str, shape: str, size: str, image_size: int) -> dict:
    row, col = divmod(cell, GRID)
    side = image_size / GRID
    radius = RADIUS[size] * image_size
    slack = max(0.0, side / 2 - radius - 0.02 * image_size)
    cx = (col + 0.5) * side + rng.uniform(-slack, slack)
    cy = (row + 0.5) * side + rng.uniform(-slack, slack)
    return {"shape": shape, "color": color, "size": size, "row": row, "col": col,
            "cx": round(cx, 2), "cy": round(cy, 2), "r": round(radius, 2), "text": None}


def _add_texts(rng: random.Random, objects: list[dict], text_prob: float) -> None:
    """Put a word or a number on up to two large objects (small ones are too small for a legible plate)."""
    large = [o for o in objects if o["size"] == "large"]
    rng.shuffle(large)
    used = set()
    for obj in large[:2]:
        if rng.random() >= text_prob:
            continue
        for _ in range(10):
            text = rng.choice(WORDS) if rng.random() < 0.6 else str(rng.randint(0, 99))
            if text not in used:
                break
        used.add(text)
        obj["text"] = text


def _sample_background(rng: random.Random) -> dict:
    names = rng.sample(sorted(BACKGROUNDS), 2)
    if rng.random() < 0.5:
        return {"kind": "plain", "colors": names[:1]}
    return {"kind": "gradient", "colors": names, "direction": rng.choice(("vertical", "horizontal"))}


def sample_arithmetic_scene(rng: random.Random, image_size: int) -> dict:
    """An arithmetic card 'a + b =' or 'a - b =' (non-negative result), like MME's numerical_calculation."""
    op = rng.choice("+-")
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if op == "-" and b > a:
        a, b = b, a
    result = a + b if op == "+" else a - b
    return {"kind": "arithmetic", "size": [image_size, image_size], "background": _sample_background(rng),
            "objects": [], "a": a, "b": b, "op": op, "result": result, "text": f"{a} {op} {b} ="}


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont:
    """PIL's built-in font: no font file to ship. FreeType builds scale it; others only have the bitmap."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _background(scene: dict) -> Image.Image:
    w, h = scene["size"]
    bg = scene["background"]
    c0 = np.array(BACKGROUNDS[bg["colors"][0]], dtype=np.float64)
    if bg["kind"] == "plain":
        return Image.new("RGB", (w, h), tuple(int(v) for v in c0))
    c1 = np.array(BACKGROUNDS[bg["colors"][1]], dtype=np.float64)
    n = h if bg["direction"] == "vertical" else w
    ramp = np.linspace(0.0, 1.0, n)[:, None]
    line = np.rint(c0 * (1 - ramp) + c1 * ramp).astype(np.uint8)
    arr = np.broadcast_to(line[:, None, :], (h, w, 3)) if bg["direction"] == "vertical" \
        else np.broadcast_to(line[None, :, :], (h, w, 3))
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + 0.95 * r, cy + 0.8 * r), (cx - 0.95 * r, cy + 0.8 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * float(np.cos(ang)), cy + rad * float(np.sin(ang))))
        return pts
    raise ValueError(shape)


def _draw_object(draw: ImageDraw.ImageDraw, obj: dict) -> None:
    cx, cy, r = obj["cx"], obj["cy"], obj["r"]
    fill = COLORS[obj["color"]]
    if obj["shape"] == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj["shape"] == "square":
        s = 0.85 * r
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    else:
        draw.polygon(_shape_points(obj["shape"], cx, cy, r), fill=fill)


def _draw_text(draw: ImageDraw.ImageDraw, text: str, cx: float, cy: float, font_size: int,
               plate: bool) -> None:
    font = _font(font_size)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    tw, th = x1 - x0, y1 - y0
    left, top = round(cx - tw / 2 - x0), round(cy - th / 2 - y0)
    if plate:
        pad = max(1, font_size // 6)
        draw.rectangle((left + x0 - pad, top + y0 - pad, left + x1 + pad, top + y1 + pad),
                       fill=(255, 255, 255), outline=(0, 0, 0))
    draw.text((left, top), text, fill=(0, 0, 0), font=font)


def render_scene(scene: dict) -> Image.Image:
    """Draw the scene record; the picture depends only on the record, so seed -> record -> same pixels."""
    image = _background(scene)
    draw = ImageDraw.Draw(image)
    side = scene["size"][0]
    if scene["kind"] == "arithmetic":
        _draw_text(draw, scene["text"], side / 2, side / 2, max(10, side // 6), plate=False)
        return image
    for obj in scene["objects"]:
        _draw_object(draw, obj)
    # Plates go on top of every shape, so a neighbour never hides a word.
    for obj in scene["objects"]:
        if obj["text"] is not None:
            _draw_text(draw, obj["text"], obj["cx"], obj["cy"], max(8, side // 9), plate=True)
    return image


def png_bytes(image: Image.Image) -> bytes:
    """PNG without metadata chunks, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
