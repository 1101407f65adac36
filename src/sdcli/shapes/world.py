"""The world the built-in model draws: one filled shape on a plain background, 64x64 RGB.

Everything here is plain numpy and fixed, so that an image can be judged from its pixels (see `judge.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import product

import numpy as np

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 190),
    "orange": (240, 140, 30),
}
# Colours the base model never saw, which a LoRA teaches it (`sdcli.shapes.train_lora`); the judge knows them too.
LORA_COLOURS = {"pink": (255, 128, 192)}
PALETTE = {**COLOURS, **LORA_COLOURS}  # every colour a scene may be drawn in (the world draws COLOURS' alone)
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
SIZE_RANGE = (0.35, 0.70)  # shape size as a fraction of the image side
WORDS = ("a", "on", "shape", "background", *SHAPES, *COLOURS, *BACKGROUNDS)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    cx: float  # centre, in pixels from the left
    cy: float  # centre, in pixels from the top
    size: float  # diameter, side, or base and height, in pixels


def full_caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def full_captions() -> list[tuple[str, str, str, str]]:
    """All 54 full captions as (caption, colour, shape, background)."""
    return [(full_caption(c, s, b), c, s, b) for c, s, b in product(COLOURS, SHAPES, BACKGROUNDS)]


def random_scene(rng: np.random.Generator) -> Scene:
    size = rng.uniform(*SIZE_RANGE) * IMAGE_SIZE
    cx, cy = rng.uniform(size / 2, IMAGE_SIZE - size / 2, size=2)
    return Scene(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        background=list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        cx=float(cx),
        cy=float(cy),
        size=float(size),
    )


def random_scene_given(rng: np.random.Generator, fixed: Mapping[str, str]) -> Scene:
    """A scene drawn as `random_scene` draws it with the attributes in `fixed` (shape, colour, background) set: the
    world draws its attributes independently, so this is its distribution conditioned on them."""
    return replace(random_scene(rng), **fixed)


def shape_mask(scene: Scene) -> np.ndarray:
    """(64, 64) bool: which pixel centres lie inside the shape."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5
    dx, dy, half = x - scene.cx, y - scene.cy, scene.size / 2
    if scene.shape == "circle":
        return dx**2 + dy**2 <= half**2
    if scene.shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # isosceles triangle pointing up: apex at the top, base as wide as the triangle is tall
    depth = dy + half  # distance below the apex
    return (depth >= 0) & (depth <= scene.size) & (np.abs(dx) <= depth / 2)


def render(scene: Scene, palette: Mapping[str, tuple[int, int, int]] = PALETTE) -> np.ndarray:
    """(64, 64, 3) uint8 image of the scene, its shape's colour from `palette`."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[scene.background]
    image[shape_mask(scene)] = palette[scene.colour]
    return image


def random_caption(scene: Scene, rng: np.random.Generator, p_full: float = 0.5, p_empty: float = 0.1) -> str:
    """A caption for the scene: the full form, a partial one naming some of its attributes, or empty.

    Partial forms make every attribute word mean something alone (`red`, `a circle on a black background`,
    `a blue shape`, `triangle`), so that one-word negative prompts steer. The empty caption trains the
    unconditional model used by classifier-free guidance (Ho & Salimans 2022).
    """
    u = rng.random()
    if u < p_empty:
        return ""
    if u < p_empty + p_full:
        return full_caption(scene.colour, scene.shape, scene.background)
    # a non-empty proper subset of the three attributes
    keep = [False, False, False]
    while sum(keep) in (0, 3):
        keep = list(rng.random(3) < 0.5)
    colour, shape, background = (v if k else None for k, v in zip(keep, (scene.colour, scene.shape, scene.background)))
    if sum(keep) == 1 and rng.random() < 0.4:  # a bare word: `red`, `triangle`, `white background`
        return colour or shape or f"{background} background"
    noun = shape or "shape"
    text = f"a {colour} {noun}" if colour else f"a {noun}"
    return f"{text} on a {background} background" if background else text
