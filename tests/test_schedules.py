"""Noise schedules apart from samplers (`--schedule`): diffusers' config flags, the -karras names as their sampler
with the Karras schedule, the combinations a scheduler cannot build, and AUTOMATIC1111's "Schedule type".
(The pixels against diffusers' pipeline: tests/test_oracle.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.errors import UsageError
from sdcli.loading.components import Model
from sdcli.output.metadata import infotext, settings_from_infotext
from sdcli.recipe import ImageRecord, Recipe
from sdcli.sampling.loop import build_scheduler
from sdcli.sampling.samplers import get_sampler

FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "timestep_spacing")


@pytest.mark.parametrize(
    "schedule, want",
    [
        (None, (False, False, False, "leading")),  # the sampler's own over the model's config
        ("default", (False, False, False, "leading")),
        ("karras", (True, False, False, "leading")),
        ("exponential", (False, True, False, "leading")),
        ("beta", (False, False, True, "leading")),
        ("sgm-uniform", (False, False, False, "trailing")),
    ],
)
def test_each_schedule_is_diffusers_config_flags(loaded: Model, schedule: str | None, want: tuple):
    built = build_scheduler(get_sampler("dpm++2m"), loaded.scheduler_config, schedule)
    assert tuple(built.config[flag] for flag in FLAGS) == want
    assert built.config["algorithm_type"] == "dpmsolver++"  # the sampler's own settings stay


@pytest.mark.parametrize("karras_name", ["dpm++2m-karras", "lms-karras", "dpm++2m-sde-karras"])
def test_a_karras_name_is_its_sampler_with_the_karras_schedule(loaded: Model, karras_name: str):
    base = karras_name.removesuffix("-karras")
    named = build_scheduler(get_sampler(karras_name), loaded.scheduler_config)
    scheduled = build_scheduler(get_sampler(base), loaded.scheduler_config, "karras")
    assert {**named.config, "_use_default_values": None} == {**scheduled.config, "_use_default_values": None}

    def pixels(**settings: object) -> np.ndarray:
        (made,) = make_images(loaded, make_request("a red circle", seed=5, steps=4, negative_prompt="blue", **settings))
        return np.asarray(made.image)

    assert np.array_equal(pixels(sampler=karras_name), pixels(sampler=base, schedule="karras"))
    assert np.array_equal(pixels(sampler=karras_name), pixels(sampler=karras_name, schedule="karras"))


@pytest.mark.parametrize(
    "sampler, schedule, works",
    [
        ("euler-a", "karras", "default or sgm-uniform"),
        ("euler-a-cfgpp", "beta", "default or sgm-uniform"),
        ("ddim", "exponential", "default or sgm-uniform"),
        ("pndm", "beta", "default or sgm-uniform"),
    ],
)
def test_a_schedule_the_scheduler_has_no_flag_for_is_a_usage_error(
    loaded: Model, sampler: str, schedule: str, works: str
):
    with pytest.raises(UsageError) as error:
        build_scheduler(get_sampler(sampler), loaded.scheduler_config, schedule)
    message = str(error.value)
    assert f"--sampler {sampler} cannot run --schedule {schedule}" in message
    assert message.endswith(f"with it use --schedule {works}") and "\n" not in message


def test_every_schedule_builds_with_a_scheduler_that_has_the_flags(loaded: Model):
    for schedule in ("default", "karras", "exponential", "beta", "sgm-uniform"):
        for sampler in ("euler", "euler-cfgpp", "lms", "heun", "dpm2", "dpm2-a", "dpm++2m", "unipc", "deis"):
            build_scheduler(get_sampler(sampler), loaded.scheduler_config, schedule)


def test_the_command_line_names_the_schedules_that_work_in_one_line(tiny_model: Path):
    args = ["generate", "x", "-m", str(tiny_model), "--sampler", "euler-a", "--schedule", "karras", "--steps", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "use --schedule default or sgm-uniform" in result.stderr
    unknown = CliRunner().invoke(app, ["generate", "x", "--schedule", "polyexponential"])
    assert unknown.exit_code == 2 and "karras" in unknown.stderr


@pytest.mark.parametrize("schedule", ["exponential", "default"])
def test_a_karras_name_fixes_its_schedule(schedule: str):
    with pytest.raises(UsageError, match=f"is dpm\\+\\+2m with --schedule karras, not {schedule}; use --sampler "):
        Recipe(sampler="dpm++2m-karras", schedule=schedule)
    assert Recipe(sampler="dpm++2m-karras", schedule="karras").schedule == "karras"


def record(sampler: str, schedule: str | None) -> ImageRecord:
    return ImageRecord(prompt="a cat", sampler=sampler, schedule=schedule, seed=1, width=64, height=64)


@pytest.mark.parametrize(
    "sampler, schedule, written",
    [
        ("dpm++2m", "karras", "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale"),
        ("euler", "sgm-uniform", "Sampler: Euler, Schedule type: SGM Uniform, CFG scale"),
        ("unipc", "beta", "Sampler: UniPC, Schedule type: Beta, CFG scale"),
        ("dpm++2m-karras", None, "Sampler: DPM++ 2M Karras, CFG scale"),  # as before schedules were apart
        ("euler", "default", "Sampler: Euler, CFG scale"),  # the sampler's own: not written, as None
    ],
)
def test_the_schedule_is_automatic1111s_schedule_type_and_reads_back(sampler: str, schedule: str | None, written):
    text = infotext(record(sampler, schedule))
    assert written in text
    settings = settings_from_infotext(text)
    assert (settings["sampler"], settings.get("schedule")) == (sampler, None if schedule == "default" else schedule)


@pytest.mark.parametrize(
    "params, want",
    [
        ("Sampler: DPM++ 2M, Schedule type: Exponential", {"sampler": "dpm++2m", "schedule": "exponential"}),
        ("Sampler: Euler a, Schedule type: Automatic", {"sampler": "euler-a"}),  # the sampler's own
        ("Sampler: DPM++ 2M Karras", {"sampler": "dpm++2m-karras"}),  # AUTOMATIC1111 before 1.9
    ],
)
def test_automatic1111_schedule_types_read_as_the_schedule_setting(params: str, want: dict):
    settings = settings_from_infotext(f"a cat\nSteps: 20, {params}, CFG scale: 7, Seed: 1, Size: 512x512")
    assert {key: settings[key] for key in ("sampler", "schedule") if key in settings} == want


def test_an_unknown_automatic1111_schedule_type_is_a_usage_error_listing_the_known_ones():
    with pytest.raises(UsageError, match=r"'Align Your Steps'.*Automatic, Karras, Exponential, Beta, SGM Uniform"):
        settings_from_infotext("a cat\nSteps: 20, Sampler: Euler, Schedule type: Align Your Steps, Seed: 1")
