"""Seeds: image i of a run with seed S is seeded S+i, from its own CPU generator, whatever the batch size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.loading.components import Model
from sdcli.sampling.loop import initial_noise


def pixels(model: Model, **settings) -> list[np.ndarray]:
    request = make_request("a blue square", **{"steps": 3, **settings})
    return [np.asarray(made.image) for made in make_images(model, request)]


def test_initial_noise_rows_are_the_single_draws():
    shape = (4, 3, 5)
    batch = initial_noise(
        [torch.Generator().manual_seed(s) for s in (7, 8, 9)], shape, torch.device("cpu"), torch.float32
    )
    for row, seed in zip(batch, (7, 8, 9), strict=True):
        assert torch.equal(row, torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed))[0])


# Ancestral and SDE samplers draw fresh noise at every step: the hardest case for batch independence.
@pytest.mark.parametrize("sampler", ["euler-a", "dpm++2m-sde-karras", "ddpm", "dpm++2m-karras"])
def test_a_batch_gives_exactly_the_images_of_single_runs(loaded: Model, sampler: str):
    one_at_a_time = pixels(loaded, sampler=sampler, seed=40, num_images=3, batch_size=1)
    all_at_once = pixels(loaded, sampler=sampler, seed=40, num_images=3, batch_size=3)
    two_then_one = pixels(loaded, sampler=sampler, seed=40, num_images=3, batch_size=2)
    singles = [pixels(loaded, sampler=sampler, seed=40 + i)[0] for i in range(3)]
    for i in range(3):
        assert np.array_equal(one_at_a_time[i], all_at_once[i])
        assert np.array_equal(one_at_a_time[i], two_then_one[i])
        assert np.array_equal(one_at_a_time[i], singles[i])
    # ...and the seeds do matter.
    assert not np.array_equal(one_at_a_time[0], one_at_a_time[1])


def test_records_carry_each_images_own_seed(loaded: Model):
    request = make_request("a blue square", seed=100, steps=2, num_images=3, batch_size=2)
    assert [made.record.seed for made in make_images(loaded, request)] == [100, 101, 102]


def test_rerunning_the_same_command_writes_the_same_bytes(tiny_model: Path, tmp_path: Path):
    args = ["generate", "a red circle", "-m", str(tiny_model), "--steps", "3", "--seed", "5", "--sampler", "euler-a"]
    first = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a.png")])
    second = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b.png")])
    assert first.exit_code == second.exit_code == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_without_a_seed_one_is_drawn_and_recorded(tiny_model: Path, tmp_path: Path):
    result = CliRunner().invoke(
        app, ["generate", "a red circle", "-m", str(tiny_model), "--steps", "2", "--out-dir", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert isinstance(record["seed"], int) and 0 <= record["seed"] < 2**32
    assert Path(record["path"]).name.startswith(f"{record['seed']}-")
