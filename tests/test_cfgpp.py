"""CFG++ samplers (Chung et al. 2024): sdcli's step against a hand-written k-diffusion loop on a toy denoiser, the
guided predictor that hands it the unconditional prediction, and the settings they refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from PIL import Image
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.errors import UsageError
from sdcli.guidance.cfg import cfg_guided
from sdcli.guidance.context import GuidanceContext
from sdcli.loading.components import Model
from sdcli.recipe import Recipe, declared
from sdcli.sampling.cfgpp import GuidedPrediction
from sdcli.sampling.loop import Predictor, Schedule, build_scheduler, denoise, initial_noise
from sdcli.sampling.prediction import denoised, prediction
from sdcli.sampling.samplers import get_sampler
from sdcli.text.conditioning import Branches, Conditioning

STEPS = 6
SHAPE = (4, 3, 3)  # (C, h, w)
LAMBDA = 0.6


def toy_predictions(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_u, eps_c) (B, C, h, w) of a toy denoiser: a shrinking of the model input plus a constant per branch."""
    return 0.3 * x + 0.1 * torch.sin(t / 100), 0.2 * x - 0.5


def toy_predictor(x: torch.Tensor, t: torch.Tensor) -> GuidedPrediction:
    """What the CFG entry hands a CFG++ step: CFG's prediction at w = lambda, and the unconditional one."""
    eps_u, eps_c = toy_predictions(x, t)
    return GuidedPrediction(eps_u + LAMBDA * (eps_c - eps_u), eps_u)


def run_ours(sampler: str, config: dict, seed: int = 0, predict: Predictor = toy_predictor) -> torch.Tensor:
    schedule = Schedule(build_scheduler(get_sampler(sampler), config), STEPS, torch.device("cpu"))
    generators = [torch.Generator().manual_seed(seed)]
    noise = initial_noise(generators, SHAPE, torch.device("cpu"), torch.float32)
    return denoise(predict, schedule, schedule.start_from_noise(noise), generators)


def reference(scheduler_class: type, config: dict, ancestral: bool, seed: int = 0) -> torch.Tensor:
    """CFG++ written out as k-diffusion's sample_euler_cfg_pp / sample_euler_ancestral_cfg_pp (ComfyUI), in sigma
    space over diffusers' own sigma ladder for the sampler: x_{i+1} = D_lambda + sigma_down (x_i - D_u) / sigma_i
    (+ sigma_up z), sigma_down = sigma_{i+1} without noise."""
    ladder = scheduler_class.from_config(config)
    ladder.set_timesteps(STEPS)
    sigmas, timesteps = ladder.sigmas.double(), ladder.timesteps
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, *SHAPE), generator=generator).double() * ladder.init_noise_sigma
    for i, t in enumerate(timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        eps_u, eps_c = (e.double() for e in toy_predictions((x / (sigma**2 + 1) ** 0.5).float(), t))
        denoised_guided = x - sigma * (eps_u + LAMBDA * (eps_c - eps_u))
        denoised_uncond = x - sigma * eps_u
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5 if ancestral else 0.0
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x = denoised_guided + sigma_down * (x - denoised_uncond) / sigma
        if ancestral:
            x = x + torch.randn((1, *SHAPE), generator=generator).double() * sigma_up
    return x.float()


@pytest.mark.parametrize(
    "sampler, scheduler_class, ancestral",
    [("euler-cfgpp", EulerDiscreteScheduler, False), ("euler-a-cfgpp", EulerAncestralDiscreteScheduler, True)],
)
def test_cfgpp_steps_are_the_written_out_update(loaded: Model, sampler, scheduler_class, ancestral):
    config = dict(loaded.scheduler_config)
    want = reference(scheduler_class, config, ancestral)
    got = run_ours(sampler, config)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    # And the renoising direction matters: the same loop renoising along the guided prediction ends elsewhere.
    plain = run_ours(sampler.removesuffix("-cfgpp"), config, predict=lambda x, t: toy_predictor(x, t).guided)
    assert (plain - got).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", ["euler", "euler-a"])
def test_without_guidance_cfgpp_is_its_sampler(loaded: Model, sampler: str):
    """Where the guided and the unconditional prediction agree, CFG++ is diffusers' own sampler (same sigmas, same
    noise draws from the same generators), up to the order of float operations."""
    config = dict(loaded.scheduler_config)
    same = lambda x, t: GuidedPrediction(toy_predictions(x, t)[0], toy_predictions(x, t)[0])
    got = run_ours(f"{sampler}-cfgpp", config, seed=3, predict=same)
    want = run_ours(sampler, config, seed=3, predict=lambda x, t: toy_predictions(x, t)[0])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoised_is_diffusers_eulers_x0_and_prediction_inverts_it(prediction_type: str):
    g = torch.Generator().manual_seed(4)
    x, pred = torch.randn(2, 2, *SHAPE, generator=g)
    scheduler = EulerDiscreteScheduler(prediction_type=prediction_type)
    scheduler.set_timesteps(5)
    sigma = scheduler.sigmas[2]
    scheduler.set_begin_index(2)
    _, x_0 = scheduler.step(pred, scheduler.timesteps[2], x, return_dict=False)
    assert torch.equal(denoised(pred, x, sigma, prediction_type), x_0)
    assert torch.allclose(prediction(x_0, x, sigma, prediction_type), pred, atol=1e-5)


class ToyDenoiser:
    """pred = x * t + sum of the context; records every call's batch size."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return x * t + cond.context.sum(dim=(1, 2)).view(-1, 1, 1, 1)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_the_cfg_entry_gives_a_cfgpp_step_both_predictions_from_one_call(lam: float):
    model = ToyDenoiser()
    cond, uncond = Conditioning(torch.full((2, 5, 8), 1.0)), Conditioning(torch.zeros(2, 5, 8))  # sums 40 and 0
    recipe = Recipe(sampler="euler-cfgpp", cfg=lam)
    context = GuidanceContext(model, Branches(cond, uncond, ()), recipe, torch.ones(1000), model=None)
    pred = cfg_guided(context.conditional, context)(torch.ones(2, *SHAPE), torch.tensor(2.0))
    assert model.calls == [4]  # both branches of both images in one call, at lambda = 1 too
    assert torch.equal(pred.uncond, torch.full((2, *SHAPE), 2.0))
    assert torch.equal(pred.guided, torch.full((2, *SHAPE), 2.0 + lam * 40))


def test_a_cfgpp_step_refuses_a_lone_prediction(loaded: Model):
    with pytest.raises(TypeError, match="unconditional"):
        run_ours("euler-cfgpp", dict(loaded.scheduler_config), predict=lambda x, t: toy_predictions(x, t)[0])


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_cfgpp_images_run_both_branches_at_every_lambda(loaded: Model, lam: float):
    request = make_request("a red circle", seed=1, steps=3, sampler="euler-a-cfgpp", cfg=lam, schedule="sgm-uniform")
    (made,) = make_images(loaded, request)
    assert made.unet_evaluations == 2 * 3
    assert made.record.sampler == "euler-a-cfgpp" and made.record.cfg == lam


@pytest.mark.parametrize("cfg", [7.5, -0.1, 1.01])
def test_cfgpp_takes_lambda_in_zero_one(cfg: float):
    with pytest.raises(UsageError, match=r"lambda from 0 to 1.*for example --cfg 0.6"):
        Recipe(sampler="euler-cfgpp", cfg=cfg)


@pytest.mark.parametrize(
    "settings, flag",
    [
        ({"apg": True}, "--apg"),
        ({"guidance_interval": "1,2"}, "--guidance-interval"),
        ({"classifier": "a=b"}, "--classifier"),
    ],
)
def test_cfgpp_refuses_what_changes_its_renoising(settings: dict, flag: str):
    with pytest.raises(UsageError, match=f"leave out {flag}, or use --sampler euler-a$"):
        Recipe(sampler="euler-a-cfgpp", cfg=0.5, **settings)


def test_the_command_line_refuses_cfg_out_of_range_for_cfgpp_in_one_line(tiny_model: Path):
    result = CliRunner().invoke(app, ["generate", "x", "-m", str(tiny_model), "--sampler", "euler-cfgpp"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "lambda from 0 to 1" in result.stderr


def test_help_says_cfgpp_samplers_take_lambda():
    helps = {f.name: spec.help for f, spec in declared(Recipe)}
    assert "lambda in [0, 1]" in helps["sampler"] and "lambda in [0, 1]" in helps["cfg"]
    listing = CliRunner().invoke(app, ["samplers"]).stdout.splitlines()
    assert [line.split()[0] for line in listing if "lambda in [0, 1]" in line] == ["euler-cfgpp", "euler-a-cfgpp"]


def test_cfgpp_runs_img2img_on_its_truncated_schedule(loaded: Model, tmp_path: Path):
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(init)
    request = make_request("a blue circle", seed=1, steps=6, sampler="euler-cfgpp", cfg=0.5, init_image=str(init))
    (made,) = make_images(loaded, request)
    assert made.unet_evaluations == 2 * int(6 * 0.75)  # both branches on the steps the strength keeps
