"""A pixel judge for the shapes world: which shape, colour and background an image shows. The module is the
built-in model's `sdcli.workflows.metrics.Judge`: sweeps of the model measure adherence with it.

Background from the border, the shape's pixels by their distance from it, colour by the nearest palette entry,
shape by how much of its bounding box it fills (square 1, circle pi/4, triangle 1/2). `read_out` adds the layout
the world draws freely, binned: the size from the box, the position of its centre, for the distribution of what a
prompt leaves free (`sdcli.shapes.reference`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sdcli.shapes.world import BACKGROUNDS, IMAGE_SIZE, PALETTE, SHAPES, SIZE_RANGE

MIN_DISTANCE = 60.0  # RGB distance from the background beyond which a pixel belongs to the shape
MIN_PIXELS = 30  # fewer shape pixels than this: no shape
SIZE_BINS = ("small", "medium", "large")  # thirds of the world's size range
POSITION_BINS = {"x": ("left", "middle", "right"), "y": ("top", "middle", "bottom")}  # thirds of the image
NO_SHAPE = "none"  # what `read_out` reads where the judge sees no shape


@dataclass(frozen=True)
class Verdict:
    shape: str | None
    colour: str | None
    background: str


def _nearest(palette: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> str:
    names = list(palette)
    distances = np.linalg.norm(np.array([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    return names[int(distances.argmin())]


def _shape_pixels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The background's colour (the border's median) and the mask (H, W) of the pixels far from it: the shape's."""
    border = np.concatenate(
        [
            pixels[:2].reshape(-1, 3),
            pixels[-2:].reshape(-1, 3),
            pixels[:, :2].reshape(-1, 3),
            pixels[:, -2:].reshape(-1, 3),
        ]
    )
    background_rgb = np.median(border, axis=0)
    return background_rgb, np.linalg.norm(pixels - background_rgb, axis=-1) > MIN_DISTANCE


def shape_centre(image: np.ndarray) -> tuple[float, float] | None:
    """The (x, y) centre of the shape's pixels in one (H, W, 3) uint8 image; None where there is no shape."""
    _, mask = _shape_pixels(image.astype(np.float64))
    if mask.sum() < MIN_PIXELS:
        return None
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The shape's robust bounding box (x0, x1, y0, y1), inclusive, from its mask (H, W): the outermost 1% of stray
    pixels on each side ignored."""
    ys, xs = np.nonzero(mask)
    y0, y1 = np.percentile(ys, [1, 99])
    x0, x1 = np.percentile(xs, [1, 99])
    return int(x0), int(x1), int(y0), int(y1)


def layout(image: np.ndarray) -> tuple[float, float, float] | None:
    """The shape's (cx, cy, size) in pixels of one (H, W, 3) uint8 image, as the world's Scene has them: the centre
    of its bounding box and the mean of the box's sides; None where there is no shape."""
    _, mask = _shape_pixels(image.astype(np.float64))
    if mask.sum() < MIN_PIXELS:
        return None
    x0, x1, y0, y1 = _box(mask)
    return (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2, (x1 - x0 + y1 - y0 + 2) / 2


def _bin(value: float, low: float, high: float, names: tuple[str, ...]) -> str:
    """The name of the equal-width bin of [low, high] that value falls in (values outside: the end bins)."""
    index = int((value - low) / (high - low) * len(names))
    return names[min(max(index, 0), len(names) - 1)]


def read_out(image: np.ndarray) -> dict[str, str]:
    """Everything the world draws, read from one (64, 64, 3) uint8 image: shape, colour and background as `judge`
    sees them, and the size (thirds of the world's size range) and position (thirds of the image) of the shape's
    box; each "none" where there is no shape."""
    verdict = judge(image)
    found = layout(image)
    if found is None:
        return {"shape": NO_SHAPE, "colour": NO_SHAPE, "background": verdict.background, "size": NO_SHAPE,
                "x": NO_SHAPE, "y": NO_SHAPE}  # fmt: skip
    cx, cy, size = found
    low, high = (fraction * IMAGE_SIZE for fraction in SIZE_RANGE)
    return {
        "shape": verdict.shape,
        "colour": verdict.colour,
        "background": verdict.background,
        "size": _bin(size, low, high, SIZE_BINS),
        "x": _bin(cx, 0, IMAGE_SIZE, POSITION_BINS["x"]),
        "y": _bin(cy, 0, IMAGE_SIZE, POSITION_BINS["y"]),
    }


def judge(image: np.ndarray) -> Verdict:
    """Judge one (H, W, 3) uint8 image."""
    pixels = image.astype(np.float64)
    background_rgb, mask = _shape_pixels(pixels)  # mask (H, W)
    background = _nearest(BACKGROUNDS, background_rgb)
    if mask.sum() < MIN_PIXELS:
        return Verdict(shape=None, colour=None, background=background)
    colour = _nearest(PALETTE, np.median(pixels[mask], axis=0))
    x0, x1, y0, y1 = _box(mask)
    fill = mask[y0 : y1 + 1, x0 : x1 + 1].mean()
    shape = "triangle" if fill < 0.65 else "circle" if fill < 0.89 else "square"
    return Verdict(shape=shape, colour=colour, background=background)


def named_attributes(prompt: str) -> dict[str, str]:
    """The shapes-world attributes a prompt names: {"colour": ..., "shape": ..., "background": ...}, each only if
    named (the first word of its palette in the prompt). `a red circle on a white background` names all three."""
    words = re.findall(r"[a-z]+", prompt.lower())
    found: dict[str, str] = {}
    for key, names in (("colour", PALETTE), ("shape", SHAPES), ("background", BACKGROUNDS)):
        named = [word for word in words if word in names]
        if named:
            found[key] = named[0]
    return found


def judged_adherence(image: Image.Image, attributes: dict[str, str]) -> bool:
    """Whether the judge sees every attribute in `attributes` in the image."""
    verdict = judge(np.asarray(image.convert("RGB")))
    return all(getattr(verdict, key) == value for key, value in attributes.items())
