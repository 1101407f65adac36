"""Guidance beyond plain CFG, end to end on the tiny random models: separate negatives, CFG rescale against
diffusers' pipeline, guidance-interval U-Net counts, and the settings' round trip through the PNG."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import Generated, make_images
from sdcli.loading.components import Model
from sdcli.sampling.loop import Schedule, build_scheduler, sigma_of_timestep
from sdcli.sampling.samplers import get_sampler

PROMPT = "a red circle on a white background"
FAST = {"steps": 3, "sampler": "euler", "seed": 7, "width": 16, "height": 16}


def make(model: Model, **settings) -> Generated:
    (made,) = make_images(model, make_request(PROMPT, **{**FAST, **settings}))
    return made


def pixels(made: Generated) -> np.ndarray:
    return np.asarray(made.image).astype(np.int16)


@contextmanager
def unet_batches(model: Model) -> Iterator[list[int]]:
    """The batch size of every U-Net call made inside the block."""
    sizes: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        hook.remove()


def test_separate_with_neg_scale_zero_is_bit_for_bit_no_negative(loaded: Model):
    plain = make(loaded)
    zero = make(loaded, negative_prompt="blue square", neg_mode="separate", neg_scale=0.0)
    assert np.array_equal(pixels(plain), pixels(zero))
    assert plain.unet_evaluations == zero.unet_evaluations == 2 * 3  # the zero-scale branch is not even run
    weighted = make(loaded, negative_prompt="blue square", neg_mode="separate", neg_scale=4.0)
    assert np.abs(pixels(weighted) - pixels(plain)).max() > 2


def test_separate_differs_from_replace(loaded: Model):
    replace = make(loaded, negative_prompt="blue square")
    separate = make(loaded, negative_prompt="blue square", neg_mode="separate")
    assert np.abs(pixels(replace) - pixels(separate)).max() > 2


def test_several_negatives_are_branches_of_one_batched_unet_call(loaded: Model):
    request = make_request(
        PROMPT,
        **{**FAST, "num_images": 2, "batch_size": 2},
        negative_prompt="blue",
        extra_negative_prompts=("square", "black"),
        neg_mode="separate",
    )
    with unet_batches(loaded) as sizes:
        made, _ = make_images(loaded, request)
    assert sizes == [2 * 5] * 3  # per step: 2 images x (empty, prompt, 3 negatives)
    assert made.unet_evaluations == 5 * 3


def test_separate_negatives_guide_even_at_cfg_one(loaded: Model):
    with unet_batches(loaded) as sizes:
        make(loaded, cfg=1.0, negative_prompt="blue", neg_mode="separate", neg_scale=2.0)
    assert sizes == [3] * 3


class Pipe:
    """diffusers' own pipeline on the same model, the oracle for CFG rescale."""

    def __init__(self, folder: Path):
        self.pipe = StableDiffusionPipeline.from_pretrained(folder)
        self.pipe.set_progress_bar_config(disable=True)

    def image(self, sampler: str, guidance_rescale: float) -> np.ndarray:
        entry = get_sampler(sampler)
        self.pipe.scheduler = getattr(diffusers, entry.scheduler).from_config(
            self.pipe.scheduler.config, **entry.settings
        )
        image = self.pipe(
            PROMPT,
            negative_prompt="blue square",
            num_inference_steps=4,
            guidance_scale=7.5,
            guidance_rescale=guidance_rescale,
            width=16,
            height=16,
            generator=torch.Generator("cpu").manual_seed(11),
        ).images[0]
        return np.asarray(image).astype(np.int16)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["euler", "dpm++2m-karras"])
def test_cfg_rescale_matches_diffusers_guidance_rescale(
    prediction: str, sampler: str, tiny_model: Path, tiny_v_model: Path, loaded: Model, loaded_v: Model
):
    folder, model = (tiny_model, loaded) if prediction == "epsilon" else (tiny_v_model, loaded_v)
    oracle = Pipe(folder)
    settings = {"steps": 4, "sampler": sampler, "seed": 11, "negative_prompt": "blue square", "cfg": 7.5}
    ours = pixels(make(model, **settings, cfg_rescale=0.7))
    theirs = oracle.image(sampler, 0.7)
    assert int(np.abs(ours - theirs).max()) <= 2
    # The comparison means something: rescale changes the image.
    assert int(np.abs(ours - pixels(make(model, **settings))).max()) > 2


def guided_steps(model: Model, interval_sigmas: tuple[float, float], steps: int = 4) -> int:
    """How many of an Euler run's steps have sigma(t) in the interval, computed from the schedule."""
    scheduler = build_scheduler(get_sampler("euler"), model.scheduler_config)
    schedule = Schedule(scheduler, steps, torch.device("cpu"))
    lo, hi = interval_sigmas
    return sum(lo <= sigma_of_timestep(t, scheduler.alphas_cumprod) <= hi for t in schedule.timesteps)


def test_the_sigma_of_a_timestep_is_the_sigma_eulers_scheduler_uses(loaded: Model):
    scheduler = build_scheduler(get_sampler("euler"), loaded.scheduler_config)
    scheduler.set_timesteps(4)
    ours = [sigma_of_timestep(t, scheduler.alphas_cumprod) for t in scheduler.timesteps]
    assert ours == pytest.approx(scheduler.sigmas[:-1].tolist(), rel=1e-5)


def test_guidance_interval_runs_the_conditional_pass_alone_outside(loaded: Model):
    # Euler, 4 steps on SD's schedule ("leading" spacing): timesteps 751, 501, 251, 1; sigmas 4.12, 1.62, 0.70, 0.04.
    assert guided_steps(loaded, (0.5, 2.0)) == 2
    with unet_batches(loaded) as sizes:
        made = make(loaded, steps=4, guidance_interval="0.5,2")
    assert sizes == [1, 2, 2, 1]
    assert made.unet_evaluations == 6  # 8 without the interval
    full = make(loaded, steps=4, guidance_interval="0%,100%")
    assert full.unet_evaluations == 8
    assert np.array_equal(pixels(full), pixels(make(loaded, steps=4)))
    none = make(loaded, steps=4, guidance_interval="100,200")
    assert none.unet_evaluations == 4
    assert np.array_equal(pixels(none), pixels(make(loaded, steps=4, cfg=1.0)))


def test_guidance_interval_in_percent_of_the_schedule(loaded: Model):
    with unet_batches(loaded) as sizes:
        made = make(loaded, steps=4, guidance_interval="0%,50%")  # timesteps 999 down to 499.5: 751 and 501
    assert sizes == [2, 2, 1, 1]
    assert made.unet_evaluations == 6


def run(*args: str):
    return CliRunner().invoke(app, ["generate", *args])


def test_the_new_settings_are_recorded_and_replayed_by_from(tiny_model: Path, tmp_path: Path):
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    prompt = "a (red:1.3) circle BREAK [white] background " + "red " * 80
    options = ["--neg", "blue", "--neg", "square", "--neg-mode", "separate", "--neg-scale", "2"]
    options += ["--cfg-rescale", "0.5", "--guidance-interval", "20%,80%", "--steps", "4", "--sampler", "euler"]
    result = run(prompt, "-m", str(tiny_model), *options, "--seed", "3", "-o", str(first), "--json")
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr  # long prompts are chunked, not truncated
    record = json.loads(result.stdout)
    assert record["prompt"] == prompt
    assert record["negative_prompt"] == "blue" and record["extra_negative_prompts"] == ["square"]
    assert record["neg_mode"] == "separate" and record["neg_scale"] == 2.0
    assert record["cfg_rescale"] == 0.5 and record["guidance_interval"] == "20%,80%"
    assert record["long_prompts"] is True
    assert record["unet_evaluations"] < 4 * 4  # 4 branches, some steps outside the interval
    inspected = json.loads(CliRunner().invoke(app, ["inspect", str(first), "--json"]).stdout)
    assert inspected["guidance_interval"] == "20%,80%" and inspected["extra_negative_prompts"] == ["square"]
    replay = run("--from", str(first), "-m", str(tiny_model), "-o", str(again))
    assert replay.exit_code == 0, replay.stderr
    assert again.read_bytes() == first.read_bytes()


def test_long_prompts_are_chunked_unless_told_not_to(tiny_model: Path, tmp_path: Path):
    prompt = "red " * 75 + "blue " * 25
    base = [prompt, "-m", str(tiny_model), "--steps", "2", "--sampler", "euler", "--seed", "1"]
    long, short = tmp_path / "long.png", tmp_path / "short.png"
    assert run(*base, "-o", str(long)).stderr == ""
    truncated = run(*base, "--no-long-prompts", "-o", str(short))
    assert "25 tokens were dropped" in truncated.stderr
    with Image.open(long) as a, Image.open(short) as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))
        assert json.loads(b.text["sdcli"])["long_prompts"] is False


def refused(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and result.stdout == ""
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(
    "args, words",
    [
        (["--neg", "a", "--neg", "b"], ["several --neg", "--neg-mode separate"]),
        (["--neg-scale", "3"], ["--neg-scale needs --neg-mode separate"]),
        (["--neg-mode", "both"], ["--neg-mode"]),
        (["--cfg-rescale", "1.5"], ["--cfg-rescale", "0 to 1"]),
        (["--cfg-rescale", "nan"], ["--cfg-rescale"]),
        (["--neg-mode", "separate", "--neg-scale", "inf"], ["--neg-scale"]),
        (["--guidance-interval", "5,1"], ["LO <= HI", "for example"]),
        (["--guidance-interval", "0.5"], ["two values"]),
        (["--guidance-interval", "20%,2"], ["both"]),
    ],
)
def test_bad_guidance_options(tiny_model: Path, tmp_path: Path, args: list[str], words: list[str]):
    out = tmp_path / "out"
    refused(run("a cat", "-m", str(tiny_model), *args, "--out-dir", str(out)), *words)
    assert not out.exists()
