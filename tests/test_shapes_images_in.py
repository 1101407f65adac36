"""Images in on the built-in shapes model, judged from pixels (slow: about two minutes on 2 CPU cores).

- Recolouring: a generated red circle, then img2img with "a blue circle on a white background": the share of 24
  seeds judged blue rises with the strength (0.3, 0.5, 0.7, 0.9) and is at least 90% at 0.7, while at 0.5 the
  shape's centre stays within 6 px of the original's in at least 90% of the images.
- Hires fix from 64 to 128 px: 128x128 images that the judge reads as the prompt (rescaled to 64) in at least 90%
  of 24 seeds.

The figures each test measures are in its assertion message, printed (`pytest -s`), and in the README.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import make_request

from sdcli.engine import make_images
from sdcli.loading.components import Model, load_model
from sdcli.loading.references import resolve_model
from sdcli.shapes.judge import judge, shape_centre

SHAPES = Path(__file__).resolve().parents[1] / "src" / "sdcli" / "models" / "shapes"
SEEDS = 24
RED_CIRCLE = "a red circle on a white background"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHAPES / "model_index.json").exists(), reason="the built-in shapes model is not built"),
]


@pytest.fixture(scope="module")
def shapes() -> Model:
    return load_model(resolve_model("shapes"), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def red_circle(shapes: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A red circle on white as the shapes model makes it (seed 1), judged so."""
    (made,) = make_images(shapes, make_request(RED_CIRCLE, seed=1))
    assert judge(np.asarray(made.image)) == judge(np.asarray(made.image)).__class__("circle", "red", "white")
    path = tmp_path_factory.mktemp("init") / "red-circle.png"
    made.image.save(path)
    return path


def test_img2img_recolours_more_with_strength_and_keeps_the_shape_in_place(shapes: Model, red_circle: Path):
    with Image.open(red_circle) as picture:
        x0, y0 = shape_centre(np.asarray(picture.convert("RGB")))
    blue, kept = {}, {}
    for strength in (0.3, 0.5, 0.7, 0.9):
        request = make_request(
            "a blue circle on a white background", seed=100, num_images=SEEDS, batch_size=SEEDS,
            init_image=str(red_circle), strength=strength,
        )  # fmt: skip
        images = [np.asarray(made.image) for made in make_images(shapes, request)]
        blue[strength] = sum(judge(image).colour == "blue" for image in images) / SEEDS
        centres = [shape_centre(image) for image in images]
        near = [c is not None and np.hypot(c[0] - x0, c[1] - y0) <= 6 for c in centres]
        kept[strength] = sum(near) / SEEDS
    measured = f"judged blue: {blue}; centre within 6 px: {kept}"
    print(measured)
    shares = [blue[s] for s in sorted(blue)]
    assert shares == sorted(shares) and shares[0] < shares[-1], measured
    assert blue[0.7] >= 0.9 and kept[0.5] >= 0.9, measured


def test_hires_fix_doubles_the_size_and_keeps_the_prompt(shapes: Model):
    request = make_request(RED_CIRCLE, seed=200, num_images=SEEDS, batch_size=8, hires_scale=2)
    images = [made.image for made in make_images(shapes, request)]
    assert all(image.size == (128, 128) for image in images)
    verdicts = [judge(np.asarray(image.resize((64, 64), Image.Resampling.LANCZOS))) for image in images]
    right = sum((v.shape, v.colour, v.background) == ("circle", "red", "white") for v in verdicts) / SEEDS
    measured = f"judged a red circle on white: {right:.0%} of {SEEDS}"
    print(measured)
    assert right >= 0.9, measured


def test_inpainting_keeps_the_left_half_exactly_and_paints_a_blue_shape_in_the_right(shapes: Model, tmp_path: Path):
    from sdcli.shapes.world import Scene, render

    init, mask = tmp_path / "left-red-circle.png", tmp_path / "right-half.png"
    Image.fromarray(render(Scene("circle", "red", "white", cx=16, cy=32, size=22))).save(init)
    repaint = np.zeros((64, 64), dtype=np.uint8)
    repaint[:, 32:] = 255  # white: repaint the right half
    Image.fromarray(repaint).save(mask)
    request = make_request(
        "a blue square on a white background", seed=300, num_images=SEEDS, batch_size=8, init_image=str(init),
        mask=str(mask), strength=1.0,
    )  # fmt: skip
    images = [np.asarray(made.image) for made in make_images(shapes, request)]
    with Image.open(init) as picture:
        original = np.asarray(picture.convert("RGB"))
    seam = 32 - 3 * 4  # a Gaussian blur of radius 4 reaches 10 px into the kept half (to the 8-bit level)
    exact = sum(np.array_equal(image[:, :seam], original[:, :seam]) for image in images) / SEEDS
    blue = sum(judge(image[:, 32:]).colour == "blue" for image in images) / SEEDS
    measured = f"kept half exact in {exact:.0%}, a blue shape in the repainted half in {blue:.0%} of {SEEDS}"
    print(measured)
    assert exact == 1.0 and blue >= 0.8, measured
