"""img2img in sdcli's own loop: the pixels of diffusers' `StableDiffusionImg2ImgPipeline` for every sampler, at
strengths 0.3 and 0.8, epsilon and v-prediction; the record, the replay, and the inputs refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image
from test_bad_input import refused
from test_oracle import ORACLE_SAMPLERS, PROMPT, SEED, TOLERANCE, max_difference
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.loading.components import Model
from sdcli.modes.img2img import schedule_steps
from sdcli.output.metadata import settings_from_png
from sdcli.sampling.samplers import get_sampler

STEPS = 6
SIZE = (24, 16)  # (width, height): not square, so a swapped side would show


def draw_init_image(folder: Path) -> Path:
    """`folder`/init.png: a 24x16 picture with structure, a red disc on white, a blue bar."""
    x, y = np.meshgrid(np.arange(SIZE[0]), np.arange(SIZE[1]))
    pixels = np.full((SIZE[1], SIZE[0], 3), 255, dtype=np.uint8)
    pixels[(x - 8) ** 2 + (y - 8) ** 2 < 25] = (220, 30, 30)
    pixels[:, 18:21] = (20, 40, 200)
    Image.fromarray(pixels).save(folder / "init.png")
    return folder / "init.png"


@pytest.fixture(scope="module")
def init_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_init_image(tmp_path_factory.mktemp("init"))


class Img2ImgOracle:
    def __init__(self, folder: Path, pipeline: type = StableDiffusionImg2ImgPipeline, **options: Any):
        self.pipe = pipeline.from_pretrained(folder, **options)
        self.pipe.set_progress_bar_config(disable=True)
        self.config = self.pipe.scheduler.config

    def image(self, sampler: str, init: Path, strength: float, negative: str = "") -> np.ndarray:
        entry = get_sampler(sampler)
        self.pipe.scheduler = getattr(diffusers, entry.scheduler).from_config(self.config, **entry.settings)
        with Image.open(init) as picture:
            image = self.pipe(
                PROMPT,
                image=picture.convert("RGB"),
                strength=strength,
                negative_prompt=negative or None,
                num_inference_steps=STEPS,
                guidance_scale=7.5,
                generator=torch.Generator("cpu").manual_seed(SEED),
            ).images[0]
        return np.asarray(image)


@pytest.fixture(scope="module")
def oracles(tiny_model: Path, tiny_v_model: Path) -> dict[str, Img2ImgOracle]:
    return {
        "epsilon": Img2ImgOracle(tiny_model, safety_checker=None),
        "v_prediction": Img2ImgOracle(tiny_v_model, safety_checker=None),
    }


def ours(model: Model, sampler: str, init: Path, strength: float, negative: str = "", **more) -> np.ndarray:
    request = make_request(
        PROMPT, seed=SEED, negative_prompt=negative, steps=STEPS, sampler=sampler, init_image=str(init),
        strength=strength, **more,
    )  # fmt: skip
    (made,) = make_images(model, request)
    return np.asarray(made.image)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ORACLE_SAMPLERS)
def test_every_sampler_matches_diffusers_img2img(
    sampler: str, prediction: str, oracles, loaded: Model, loaded_v: Model, init_image: Path
):
    model = loaded if prediction == "epsilon" else loaded_v
    for strength, negative in ((0.3, ""), (0.8, "blue square")):
        want = oracles[prediction].image(sampler, init_image, strength, negative)
        got = ours(model, sampler, init_image, strength, negative)
        assert got.shape == (SIZE[1], SIZE[0], 3)
        assert want.std() > 5
        assert max_difference(got, want) <= TOLERANCE, (strength, negative)


def test_strength_runs_its_share_of_the_steps(loaded: Model, init_image: Path):
    request = make_request(PROMPT, seed=1, steps=10, sampler="euler", init_image=str(init_image), strength=0.35)
    (made,) = make_images(loaded, request)
    assert schedule_steps(10, 0.35) == 3
    assert made.unet_evaluations == 3 * 2  # three steps, conditional and unconditional


def test_a_batch_of_seeds_gives_each_image_as_alone(loaded: Model, init_image: Path):
    request = make_request(
        PROMPT, seed=5, steps=4, sampler="euler-a", init_image=str(init_image), num_images=3, batch_size=3
    )
    together = [np.asarray(m.image) for m in make_images(loaded, request)]
    for i, image in enumerate(together):
        one = make_request(PROMPT, seed=5 + i, steps=4, sampler="euler-a", init_image=str(init_image))
        (made,) = make_images(loaded, one)
        assert max_difference(np.asarray(made.image), image) <= 1  # oneDNN may round a batch apart by a level
    assert max_difference(together[0], together[1]) > 1  # each seed its own posterior sample and noise


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_the_command_line_records_the_image_and_replays_it(tiny_model: Path, init_image: Path, tmp_path: Path):
    out, again = tmp_path / "out.png", tmp_path / "again.png"
    result = run("generate", PROMPT, "-m", str(tiny_model), "-i", str(init_image), "--strength", "0.5",
                 "--steps", "4", "--seed", "3", "-o", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert (row["width"], row["height"], row["strength"]) == (*SIZE, 0.5)
    assert row["init_image"] == str(init_image.resolve()) and len(row["init_image_sha256"]) == 64
    assert row["unet_evaluations"] == 2 * 2
    with Image.open(out) as image:
        assert "Denoising strength: 0.5" in image.text["parameters"]
    replay = run("generate", "--from", str(out), "-o", str(again))
    assert replay.exit_code == 0, replay.stderr
    assert again.read_bytes() == out.read_bytes()
    assert settings_from_png(again)["init_image_sha256"] == row["init_image_sha256"]


def test_a_replay_names_a_changed_or_missing_init_image(tiny_model: Path, init_image: Path, tmp_path: Path):
    copy = tmp_path / "copy.png"
    copy.write_bytes(init_image.read_bytes())
    out = tmp_path / "out.png"
    made = run("generate", "x", "-m", str(tiny_model), "-i", str(copy), "--steps", "2", "-o", str(out))
    assert made.exit_code == 0, made.stderr
    Image.new("RGB", SIZE, "green").save(copy)
    refused(run("generate", "--from", str(out), "-o", str(tmp_path / "a.png")), 2, str(copy), "sha256")
    copy.unlink()
    refused(run("generate", "--from", str(out), "-o", str(tmp_path / "b.png")), 2, str(copy), "does not exist")
    # Another init image given beside --from is that image, not the recorded one.
    other = run("generate", "--from", str(out), "-i", str(init_image), "-o", str(tmp_path / "c.png"))
    assert other.exit_code == 0, other.stderr
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()


@pytest.mark.parametrize(
    ("make", "args", "words"),
    [
        (None, ["--strength", "0.5"], ["--strength", "--init-image"]),
        ("missing", [], ["does not exist"]),
        ("empty", [], ["empty"]),
        ("text", [], ["not a readable image"]),
        ("truncated", [], ["not a readable image"]),
        ("ok", ["--strength", "0"], ["--strength", "above 0"]),
        ("ok", ["--strength", "1.5"], ["--strength", "at most 1"]),
        ("ok", ["--strength", "nan"], ["--strength"]),
        ("ok", ["--strength", "-0.5"], ["--strength"]),
        ("ok", ["--strength", "0.1", "--steps", "4"], ["runs no step", "--steps"]),
    ],
)
def test_bad_init_images_and_strengths(tiny_model: Path, init_image: Path, tmp_path: Path, make, args, words):
    path = tmp_path / "init.png"
    if make == "ok":
        path = init_image
    elif make == "empty":
        path.write_bytes(b"")
    elif make == "text":
        path.write_text("not a picture")
    elif make == "truncated":
        path.write_bytes(init_image.read_bytes()[:-40])
    out = tmp_path / "out"
    init = ["-i", str(path)] if make is not None else []
    refused(run("generate", "x", "-m", str(tiny_model), *init, *args, "--out-dir", str(out)), 2, *words)
    assert not out.exists()
