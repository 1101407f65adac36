"""The exactness contract: our loop gives the pixels diffusers' own StableDiffusionPipeline gives.

For one image on the CPU in fp32 with seed S, our images must match (max difference 2/255) the pipeline built from
the same components with the same scheduler and settings and `generator=torch.Generator("cpu").manual_seed(S)`:
for every sampler but lcm, with and without a negative prompt, square and non-square, epsilon and v-prediction.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.loading.components import Model
from sdcli.sampling.samplers import SAMPLERS, get_sampler

TOLERANCE = 2  # in 8-bit levels
STEPS = 4
SEED = 1234
PROMPT = "a red circle on a white background"
ORACLE_SAMPLERS = [s.name for s in SAMPLERS if s.name != "lcm" and not s.cfg_pp]  # CFG++: sdcli's own step
CASES = [  # (negative prompt, width, height): diffusers' pipeline wants multiples of 8
    ("", 16, 16),
    ("blue square", 16, 16),
    ("", 24, 16),
    ("blue square", 16, 24),
]


class Oracle:
    def __init__(self, folder: Path, pipeline: type = StableDiffusionPipeline, **options: Any):
        self.pipe = pipeline.from_pretrained(folder, **options)
        self.pipe.set_progress_bar_config(disable=True)
        self.scheduler_config: Mapping[str, Any] = self.pipe.scheduler.config  # the model's own
        self.schedulers: dict[tuple, Any] = {}

    def image(
        self,
        sampler: str,
        *,
        negative: str,
        width: int,
        height: int,
        cfg: float = 7.5,
        flags: Mapping[str, Any] = MappingProxyType({}),
    ) -> np.ndarray:
        """(H, W, 3) uint8, with the sampler's scheduler built on the model's config as diffusers' docs do, plus
        scheduler config `flags` (a schedule), and kept across calls, as a pipeline's user does."""
        key = (sampler, *sorted(flags.items()))
        if key not in self.schedulers:
            entry = get_sampler(sampler)
            scheduler_class = getattr(diffusers, entry.scheduler)
            self.schedulers[key] = scheduler_class.from_config(self.scheduler_config, **{**entry.settings, **flags})
        self.pipe.scheduler = self.schedulers[key]
        image = self.pipe(
            PROMPT,
            negative_prompt=negative or None,
            num_inference_steps=STEPS,
            guidance_scale=cfg,
            width=width,
            height=height,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
        return np.asarray(image)


@pytest.fixture(scope="module")
def oracles(tiny_model: Path, tiny_v_model: Path) -> dict[str, Oracle]:
    return {"epsilon": Oracle(tiny_model), "v_prediction": Oracle(tiny_v_model)}


def ours(
    model: Model,
    sampler: str,
    *,
    negative: str,
    width: int,
    height: int,
    cfg: float = 7.5,
    schedule: str | None = None,
) -> np.ndarray:
    request = make_request(
        PROMPT,
        seed=SEED,
        negative_prompt=negative,
        cfg=cfg,
        steps=STEPS,
        sampler=sampler,
        schedule=schedule,
        width=width,
        height=height,
    )
    (made,) = make_images(model, request)
    return np.asarray(made.image)


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_the_models_differ_in_prediction_type(loaded: Model, loaded_v: Model):
    assert loaded.scheduler_config["prediction_type"] == "epsilon"
    assert loaded_v.scheduler_config["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ORACLE_SAMPLERS)
def test_every_sampler_matches_diffusers_pipeline(
    sampler: str, prediction: str, oracles: dict[str, Oracle], loaded: Model, loaded_v: Model
):
    model = loaded if prediction == "epsilon" else loaded_v
    for negative, width, height in CASES:
        want = oracles[prediction].image(sampler, negative=negative, width=width, height=height)
        got = ours(model, sampler, negative=negative, width=width, height=height)
        assert got.shape == (height, width, 3)
        assert want.std() > 5, "a flat image would make the comparison meaningless"
        assert max_difference(got, want) <= TOLERANCE, (negative, width, height)


# Samplers with a schedule apart (--schedule), against the pipeline with diffusers' own config flags for it.
SCHEDULE_CASES = [
    ("euler", "karras", {"use_karras_sigmas": True}, "epsilon"),
    ("euler", "sgm-uniform", {"timestep_spacing": "trailing"}, "epsilon"),
    ("dpm++2m", "exponential", {"use_exponential_sigmas": True}, "epsilon"),
    ("dpm++2m", "beta", {"use_beta_sigmas": True}, "v_prediction"),
    ("heun", "karras", {"use_karras_sigmas": True}, "v_prediction"),
    ("unipc", "exponential", {"use_exponential_sigmas": True}, "epsilon"),
    ("ddim", "sgm-uniform", {"timestep_spacing": "trailing"}, "v_prediction"),
    ("euler-a", "sgm-uniform", {"timestep_spacing": "trailing"}, "epsilon"),
]


@pytest.mark.parametrize("sampler, schedule, flags, prediction", SCHEDULE_CASES)
def test_samplers_with_a_schedule_match_diffusers_pipeline(
    sampler: str,
    schedule: str,
    flags: dict,
    prediction: str,
    oracles: dict[str, Oracle],
    loaded: Model,
    loaded_v: Model,
):
    model = loaded if prediction == "epsilon" else loaded_v
    for negative, width, height in CASES[:2]:
        want = oracles[prediction].image(sampler, negative=negative, width=width, height=height, flags=flags)
        got = ours(model, sampler, negative=negative, width=width, height=height, schedule=schedule)
        assert max_difference(got, want) <= TOLERANCE, (negative, width, height)
        assert max_difference(got, ours(model, sampler, negative=negative, width=width, height=height)) > TOLERANCE


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_other_guidance_scales_match_diffusers_pipeline(cfg: float, oracles: dict[str, Oracle], loaded: Model):
    # diffusers skips the unconditional pass at scale 1 (it does at any scale <= 1), as we do at exactly 1.
    want = oracles["epsilon"].image("euler-a", negative="blue", width=16, height=16, cfg=cfg)
    got = ours(loaded, "euler-a", negative="blue", width=16, height=16, cfg=cfg)
    assert max_difference(got, want) <= TOLERANCE


def test_the_negative_prompt_changes_the_image(loaded: Model):
    plain = ours(loaded, "euler", negative="", width=16, height=16)
    negative = ours(loaded, "euler", negative="blue square", width=16, height=16)
    assert max_difference(plain, negative) > TOLERANCE


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_command_line_writes_the_pipelines_pixels(
    prediction: str, oracles: dict[str, Oracle], tiny_model: Path, tiny_v_model: Path, tmp_path: Path
):
    folder = tiny_model if prediction == "epsilon" else tiny_v_model
    out = tmp_path / "image.png"
    args = ["generate", PROMPT, "-m", str(folder), "--neg", "blue square", "--steps", str(STEPS), "--seed", str(SEED)]
    args += ["--sampler", "dpm++2m-karras", "--width", "24", "--height", "16", "-o", str(out), "--dtype", "fp32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    want = oracles[prediction].image("dpm++2m-karras", negative="blue square", width=24, height=16)
    with Image.open(out) as image:
        assert image.mode == "RGB"
        assert max_difference(np.asarray(image), want) <= TOLERANCE
