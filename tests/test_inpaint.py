"""Inpainting in sdcli's own loop: the pixels of diffusers' `StableDiffusionInpaintPipeline` for every sampler, at
strengths 0.75 and 1.0, with an inpainting (9-channel) U-Net and an ordinary (4-channel) one; the overlay, the
record, the replay, and the inputs refused.

Where diffusers draws differently: given a list of generators for a batch, the pipeline encodes its one init image
and its one masked image with generator[0] only and repeats the latents (`_encode_vae_image` loops over
`image.shape[0]`, which is 1), so images 1.. of its batch draw no posterior samples. sdcli draws both from each
image's own generator, so that a batch gives each image as it comes alone: diffusers' image for that image's seed
with one generator (`test_a_batch_gives_each_image_as_diffusers_gives_its_seed`)."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image, ImageFilter
from test_bad_input import refused
from test_oracle import ORACLE_SAMPLERS, PROMPT, SEED, TOLERANCE, max_difference
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.loading.components import Model
from sdcli.modes.inpaint import read_mask
from sdcli.output.metadata import settings_from_png
from sdcli.sampling.samplers import get_sampler

STEPS = 6
SIZE = (24, 16)  # (width, height): not square, so a swapped side would show
EXACT = {"mask_blur": 0, "mask_overlay": False}  # diffusers' pipeline neither blurs nor overlays


@pytest.fixture(scope="module")
def init_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24x16 picture with structure: a red disc on white, a blue bar."""
    x, y = np.meshgrid(np.arange(SIZE[0]), np.arange(SIZE[1]))
    pixels = np.full((SIZE[1], SIZE[0], 3), 255, dtype=np.uint8)
    pixels[(x - 8) ** 2 + (y - 8) ** 2 < 25] = (220, 30, 30)
    pixels[:, 18:21] = (20, 40, 200)
    path = tmp_path_factory.mktemp("init") / "init.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def mask(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A grey (L) mask of the disc's right half: white rows 3-11, a grey band above (160: repaint) and below
    (100: keep), edges at odd pixels, so the latent mask's top-left-pixel rule shows against any other."""
    levels = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
    levels[3:12, 5:15] = 255
    levels[1:3, 5:15] = 160
    levels[12:14, 5:15] = 100
    path = tmp_path_factory.mktemp("mask") / "mask.png"
    Image.fromarray(levels, mode="L").save(path)
    return path


class InpaintOracle:
    def __init__(self, folder: Path):
        self.pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None)
        self.pipe.set_progress_bar_config(disable=True)
        self.config = self.pipe.scheduler.config

    def image(self, sampler: str, init: Path, mask: Path, strength: float, seed: int = SEED) -> np.ndarray:
        entry = get_sampler(sampler)
        self.pipe.scheduler = getattr(diffusers, entry.scheduler).from_config(self.config, **entry.settings)
        with Image.open(init) as picture, Image.open(mask) as mask_image:
            image = self.pipe(
                PROMPT,
                image=picture.convert("RGB"),
                mask_image=mask_image,
                strength=strength,
                width=SIZE[0],  # diffusers' default is the U-Net's native size, sdcli's the image's
                height=SIZE[1],
                num_inference_steps=STEPS,
                guidance_scale=7.5,
                generator=torch.Generator("cpu").manual_seed(seed),
            ).images[0]
        return np.asarray(image)


@pytest.fixture(scope="module")
def oracles(tiny_model: Path, tiny_inpaint_model: Path) -> dict[int, InpaintOracle]:
    return {4: InpaintOracle(tiny_model), 9: InpaintOracle(tiny_inpaint_model)}


def ours(model: Model, init: Path, mask: Path, sampler: str = "euler", strength: float = 0.75, **more) -> np.ndarray:
    request = make_request(
        PROMPT, seed=SEED, steps=STEPS, sampler=sampler, init_image=str(init), mask=str(mask), strength=strength,
        **{**EXACT, **more},
    )  # fmt: skip
    (made,) = make_images(model, request)
    return np.asarray(made.image)


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("sampler", ORACLE_SAMPLERS)
def test_every_sampler_matches_diffusers_inpainting(
    sampler: str, channels: int, oracles, loaded: Model, loaded_inpaint: Model, init_image: Path, mask: Path
):
    model = loaded_inpaint if channels == 9 else loaded
    assert model.unet.config.in_channels == channels
    for strength in (0.75, 1.0):
        want = oracles[channels].image(sampler, init_image, mask, strength)
        got = ours(model, init_image, mask, sampler, strength)
        assert got.shape == (SIZE[1], SIZE[0], 3)
        assert want.std() > 5
        assert max_difference(got, want) <= TOLERANCE, strength


def test_the_mask_changes_the_image(loaded: Model, loaded_inpaint: Model, init_image: Path, mask: Path, tmp_path: Path):
    """The mask makes a visible difference: against an all-white one (repaint everything) for either U-Net."""
    white = tmp_path / "white.png"
    Image.new("L", SIZE, 255).save(white)
    for model in (loaded, loaded_inpaint):
        assert max_difference(ours(model, init_image, mask), ours(model, init_image, white)) > 20


def test_a_batch_gives_each_image_as_diffusers_gives_its_seed(
    oracles, loaded: Model, loaded_inpaint: Model, init_image: Path, mask: Path
):
    for channels, model in ((9, loaded_inpaint), (4, loaded)):
        request = make_request(
            PROMPT, seed=SEED, steps=STEPS, sampler="euler-a", init_image=str(init_image), mask=str(mask),
            num_images=2, batch_size=2, **EXACT,
        )  # fmt: skip
        together = [np.asarray(made.image) for made in make_images(model, request)]
        for i, image in enumerate(together):
            want = oracles[channels].image("euler-a", init_image, mask, 0.75, seed=SEED + i)
            assert max_difference(image, want) <= TOLERANCE, (channels, i)


def test_the_grey_mask_is_binarised_at_half(mask: Path):
    ready = read_mask(mask, 0, *SIZE, latent_scale=2)
    with Image.open(mask) as levels:
        want = np.asarray(levels) >= 128  # / 255 >= 0.5
    assert np.array_equal(ready.repaint[0, 0].numpy() == 1, want)
    assert set(np.unique(ready.repaint.numpy())) == {0.0, 1.0}


@pytest.mark.parametrize("model_name", ["loaded", "loaded_inpaint"])
def test_the_overlay_keeps_the_input_exactly_outside_the_blurred_seam(
    model_name: str, request, init_image: Path, mask: Path
):
    model = request.getfixturevalue(model_name)
    overlaid = ours(model, init_image, mask, mask_blur=2, mask_overlay=True)
    plain = ours(model, init_image, mask, mask_blur=2, mask_overlay=False)
    with Image.open(init_image) as picture, Image.open(mask) as levels:
        source = np.asarray(picture.convert("RGB"))
        blurred = np.asarray(levels.filter(ImageFilter.GaussianBlur(2)))  # 4 would reach every pixel of 24x16
    outside, inside = blurred == 0, blurred >= 128  # the overlay's mask is the blurred one doubled
    assert outside.sum() > 50 and inside.sum() > 50
    assert np.array_equal(overlaid[outside], source[outside])
    assert np.array_equal(overlaid[inside], plain[inside])
    assert max_difference(plain[outside], source[outside]) > 2  # the VAE alone does not give the input back


def test_the_mask_blur_moves_the_seam(loaded_inpaint: Model, init_image: Path, mask: Path):
    sharp = ours(loaded_inpaint, init_image, mask, mask_blur=0, mask_overlay=True)
    soft = ours(loaded_inpaint, init_image, mask, mask_blur=4, mask_overlay=True)
    assert max_difference(sharp, soft) > 2


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_the_command_line_records_the_mask_and_replays_it(
    tiny_inpaint_model: Path, init_image: Path, mask: Path, tmp_path: Path
):
    out, again, copy = tmp_path / "out.png", tmp_path / "again.png", tmp_path / "mask.png"
    copy.write_bytes(mask.read_bytes())
    result = run("generate", PROMPT, "-m", str(tiny_inpaint_model), "-i", str(init_image), "--mask", str(copy),
                 "--steps", "4", "--seed", "3", "--mask-blur", "2", "-o", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["mask"] == str(copy.resolve()) and len(row["mask_sha256"]) == 64
    assert (row["mask_blur"], row["mask_overlay"], row["strength"]) == (2, True, 0.75)
    with Image.open(out) as image:
        assert "Mask blur: 2" in image.text["parameters"]
    replay = run("generate", "--from", str(out), "-o", str(again))
    assert replay.exit_code == 0, replay.stderr
    assert again.read_bytes() == out.read_bytes()
    assert settings_from_png(again)["mask_sha256"] == row["mask_sha256"]
    # The mask changed since: refused, naming it; another mask given beside --from is that mask.
    Image.new("L", SIZE, 255).save(copy)
    refused(run("generate", "--from", str(out), "-o", str(tmp_path / "a.png")), 2, "--mask", str(copy), "sha256")
    other = run("generate", "--from", str(out), "--mask", str(mask), "-o", str(tmp_path / "b.png"))
    assert other.exit_code == 0, other.stderr
    assert not (tmp_path / "a.png").exists()


def test_img2img_writes_no_mask_blur(tiny_model: Path, init_image: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    result = run("generate", "x", "-m", str(tiny_model), "-i", str(init_image), "--steps", "2", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as image:
        assert "Mask blur" not in image.text["parameters"]
    assert settings_from_png(out)["mask"] is None


def test_a_mask_of_another_aspect_ratio_is_stretched_with_a_warning(tiny_model: Path, init_image: Path, tmp_path: Path):
    square = tmp_path / "square.png"
    Image.new("L", (10, 10), 255).save(square)
    result = run("generate", "x", "-m", str(tiny_model), "-i", str(init_image), "--mask", str(square),
                 "--steps", "2", "-o", str(tmp_path / "out.png"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert "10x10" in warning and "24x16" in warning and "stretched" in warning
    half = tmp_path / "half.png"  # the same aspect ratio at half the size: no warning
    Image.new("L", (12, 8), 255).save(half)
    result = run("generate", "x", "-m", str(tiny_model), "-i", str(init_image), "--mask", str(half),
                 "--steps", "2", "-o", str(tmp_path / "half-out.png"))  # fmt: skip
    assert result.exit_code == 0 and "warning" not in result.stderr


@pytest.mark.parametrize(
    ("make", "args", "words"),
    [
        ("missing", [], ["--mask", "does not exist"]),
        ("empty", [], ["--mask", "empty"]),
        ("text", [], ["--mask", "not a readable image"]),
        ("no init", [], ["--mask", "--init-image"]),
        ("ok", ["--mask-blur", "-1"], ["--mask-blur", "whole number"]),
        ("ok", ["--mask-blur", "1000"], ["--mask-blur", "whole number"]),
    ],
)
def test_bad_masks(tiny_model: Path, init_image: Path, mask: Path, tmp_path: Path, make, args, words):
    path = tmp_path / "mask.png"
    if make in ("ok", "no init"):
        path = mask
    elif make == "empty":
        path.write_bytes(b"")
    elif make == "text":
        path.write_text("not a picture")
    out = tmp_path / "out"
    init = [] if make == "no init" else ["-i", str(init_image)]
    refused(run("generate", "x", "-m", str(tiny_model), *init, "--mask", str(path), *args, "--out-dir", str(out)),
            2, *words)  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("with_init", [True, False])
def test_an_inpainting_model_needs_a_mask(tiny_inpaint_model: Path, init_image: Path, tmp_path: Path, with_init):
    out = tmp_path / "out"
    init = ["-i", str(init_image)] if with_init else []
    result = run("generate", "x", "-m", str(tiny_inpaint_model), *init, "--steps", "2", "--out-dir", str(out))
    refused(result, 2, "inpainting model", "--mask")
    assert not out.exists()
