"""The sampler registry: the issue's table, the command line's choices, and schedulers that build and run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.errors import UsageError
from sdcli.loading.components import Model
from sdcli.recipe import Recipe, declared
from sdcli.sampling.cfgpp import GuidedPrediction
from sdcli.sampling.loop import Schedule, build_scheduler, denoise, initial_noise
from sdcli.sampling.samplers import NAMES, SAMPLERS, from_a1111_name, get_sampler

# The table of the core issue: name, AUTOMATIC1111 name, diffusers scheduler, settings that must hold.
TABLE = [
    ("ddim", "DDIM", "DDIMScheduler", {}),
    ("ddpm", "DDPM", "DDPMScheduler", {}),
    ("pndm", "PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    ("lms", "LMS", "LMSDiscreteScheduler", {"use_karras_sigmas": False}),
    ("lms-karras", "LMS Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    ("euler", "Euler", "EulerDiscreteScheduler", {}),
    ("euler-a", "Euler a", "EulerAncestralDiscreteScheduler", {}),
    # CFG++ (Guidance lab issue): sdcli's step on Euler's and Euler ancestral's schedules.
    ("euler-cfgpp", "Euler CFG++", "EulerDiscreteScheduler", {}),
    ("euler-a-cfgpp", "Euler a CFG++", "EulerAncestralDiscreteScheduler", {}),
    ("heun", "Heun", "HeunDiscreteScheduler", {}),
    ("dpm2", "DPM2", "KDPM2DiscreteScheduler", {}),
    ("dpm2-a", "DPM2 a", "KDPM2AncestralDiscreteScheduler", {}),
    ("dpm++2m", "DPM++ 2M", "DPMSolverMultistepScheduler", {"use_karras_sigmas": False}),
    ("dpm++2m-karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    (
        "dpm++2m-sde",
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": False},
    ),
    (
        "dpm++2m-sde-karras",
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    ("unipc", "UniPC", "UniPCMultistepScheduler", {}),
    ("deis", "DEIS", "DEISMultistepScheduler", {}),
    ("lcm", "LCM", "LCMScheduler", {}),
]


def test_registry_is_the_issues_table():
    assert [(s.name, s.a1111_name, s.scheduler) for s in SAMPLERS] == [row[:3] for row in TABLE]


@pytest.mark.parametrize("name, a1111_name, scheduler, settings", TABLE)
def test_each_sampler_builds_its_scheduler_with_its_settings(loaded: Model, name, a1111_name, scheduler, settings):
    built = build_scheduler(get_sampler(name), loaded.scheduler_config)
    cfg_pp = get_sampler(name).cfg_pp
    assert (type(built).__bases__[-1] if cfg_pp else type(built)).__name__ == scheduler  # CFG++: with sdcli's step
    for key, value in settings.items():
        assert built.config[key] == value
    # The model's own config comes through: its betas and its prediction type.
    assert built.config["beta_schedule"] == "scaled_linear"
    assert built.config["prediction_type"] == "epsilon"
    assert from_a1111_name(a1111_name).name == name


def test_a_sampler_name_does_not_inherit_karras_from_the_models_config(loaded: Model):
    karras_config = {**loaded.scheduler_config, "use_karras_sigmas": True}
    assert not build_scheduler(get_sampler("euler"), karras_config).config["use_karras_sigmas"]
    assert build_scheduler(get_sampler("dpm++2m-karras"), karras_config).config["use_karras_sigmas"]


def test_unknown_sampler_is_a_usage_error_listing_the_valid_ones():
    with pytest.raises(UsageError) as error:
        get_sampler("euler-b")
    assert "euler-b" in str(error.value)
    assert all(name in str(error.value) for name in NAMES)


def test_command_line_choices_are_the_registry():
    (sampler,) = [spec for f, spec in declared(Recipe) if f.name == "sampler"]
    assert sampler.choices == NAMES
    # And the parser uses them: an unknown name is refused with the registry's names, a known one passes parsing
    # (to fail later, on the model that does not exist).
    refused = CliRunner().invoke(app, ["generate", "x", "--sampler", "euler-b"])
    assert refused.exit_code == 2
    assert all(repr(name) in refused.stderr for name in NAMES)
    for name in NAMES:
        lam = ["--cfg", "0.5"] if get_sampler(name).cfg_pp else []  # CFG++ takes lambda in [0, 1]
        accepted = CliRunner().invoke(app, ["generate", "x", "--sampler", name, *lam, "-m", "/nonexistent/model"])
        assert "/nonexistent/model" in accepted.stderr


def test_samplers_command_lists_every_sampler():
    result = CliRunner().invoke(app, ["samplers"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == len(SAMPLERS)
    for line, sampler in zip(lines, SAMPLERS, strict=True):
        assert line.split()[0] == sampler.name
        assert sampler.a1111_name in line and sampler.scheduler in line


def test_samplers_command_json():
    result = CliRunner().invoke(app, ["samplers", "--json"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["name"], r["a1111_name"], r["scheduler"]) for r in rows] == [row[:3] for row in TABLE]


@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_runs_the_loop_on_a_toy_denoiser(loaded: Model, name: str):
    """Our loop drives each scheduler to the end: one prediction per timestep, a finite result."""
    schedule = Schedule(build_scheduler(get_sampler(name), loaded.scheduler_config), 5, torch.device("cpu"))
    calls = []

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | GuidedPrediction:
        calls.append(float(t))
        pred = 0.1 * x  # a toy denoiser: the prediction shrinks x
        return GuidedPrediction(pred, 0.2 * x) if get_sampler(name).cfg_pp else pred  # CFG++: the unconditional too

    generators = [torch.Generator().manual_seed(0)]
    noise = initial_noise(generators, (4, 3, 3), torch.device("cpu"), torch.float32)
    x_0 = denoise(predict, schedule, schedule.start_from_noise(noise), generators)
    assert len(calls) == len(schedule.timesteps)
    assert x_0.shape == (1, 4, 3, 3) and torch.isfinite(x_0).all()
