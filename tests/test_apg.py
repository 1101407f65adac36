"""Adaptive projected guidance (Sadat et al. 2024): the paper's rule against diffusers' own implementation on the
same predictions, its place in the one batched call, its run state, and the settings it refuses."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.guiders import AdaptiveProjectedGuidance
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.errors import UsageError
from sdcli.guidance.apg import Momentum, apg, apg_guided
from sdcli.guidance.cfg import cfg, cfg_guided, rescale_cfg
from sdcli.guidance.context import GuidanceContext
from sdcli.loading.components import Model
from sdcli.recipe import Recipe
from sdcli.text.conditioning import Branches, Conditioning

ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dim=0)  # SD's scaled_linear


def predictions(seed: int, shape: tuple[int, ...] = (3, 4, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g)  # pred_u, pred_c (B, C, h, w)


@pytest.mark.parametrize("eta, r", [(0.0, 0.0), (0.0, 15.0), (0.5, 2.0), (1.0, 15.0)])
def test_apg_is_diffusers_paper_formulation_to_the_bit(eta: float, r: float):
    """diffusers' `normalized_guidance` with use_original_formulation=True and scale w - 1 is Algorithm 1's
    D_c + (w - 1)(...): the same operations in the same order, so the same bits; its guider class too."""
    pred_u, pred_c = predictions(0)
    w = 7.5
    ours = apg(pred_u, pred_c, w, eta, r)
    theirs = normalized_guidance(pred_c, pred_u, w - 1, None, eta, r, use_original_formulation=True)
    assert torch.equal(ours, theirs)
    guider = AdaptiveProjectedGuidance(
        guidance_scale=w - 1, adaptive_projected_guidance_rescale=r, eta=eta, use_original_formulation=True
    )
    assert torch.equal(ours, guider.forward(pred_c, pred_u).pred)


def test_apg_momentum_over_steps_is_diffusers_momentum_buffer_to_the_bit():
    w, eta, r, beta = 5.0, 0.0, 4.0, -0.5
    ours, theirs = Momentum(beta), MomentumBuffer(beta)
    for step in range(4):
        pred_u, pred_c = predictions(step)
        want = normalized_guidance(pred_c, pred_u, w - 1, theirs, eta, r, use_original_formulation=True)
        assert torch.equal(apg(pred_u, pred_c, w, eta, r, ours), want), step


def test_where_diffusers_default_formulation_differs():
    """diffusers' default ends with D_u + w (...); the paper's D_c + (w - 1)(...). Both are CFG at eta = 1 without
    rescaling (equal up to rounding), and differ by the parallel part otherwise."""
    pred_u, pred_c = predictions(1)
    w = 7.5
    default = normalized_guidance(pred_c, pred_u, w, None, 1.0, 0.0)
    assert torch.allclose(apg(pred_u, pred_c, w, 1.0, 0.0), cfg(pred_u, pred_c, w), atol=1e-5)
    assert torch.allclose(default, cfg(pred_u, pred_c, w), atol=1e-5)
    assert not torch.allclose(normalized_guidance(pred_c, pred_u, w, None, 0.0, 0.0), apg(pred_u, pred_c, w, 0.0, 0.0))


def test_rescaling_cuts_each_images_update_to_norm_r():
    pred_u, pred_c = predictions(2)
    w, r = 2.0, 0.5  # (w - 1) = 1: the result less D_c is the update itself
    update = apg(pred_u, pred_c, w, 1.0, r) - pred_c  # eta = 1: the whole update, rescaled
    assert torch.allclose(update.flatten(1).norm(dim=1), torch.full((3,), r), rtol=1e-5)


class ToyDenoiser:
    """pred = 0.4 x + sum of the context (and t / 1000): records every call's batch size."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return 0.4 * x + cond.context.sum(dim=(1, 2)).view(-1, 1, 1, 1) + t / 1000


def context_for(model: ToyDenoiser, prediction_type: str = "epsilon", **settings: object) -> GuidanceContext:
    cond, uncond = Conditioning(torch.full((2, 5, 8), 0.02)), Conditioning(torch.zeros(2, 5, 8))
    owner = SimpleNamespace(scheduler_config={"prediction_type": prediction_type})  # as a Model gives it
    return GuidanceContext(model, Branches(cond, uncond, ()), Recipe(**settings), ALPHAS_CUMPROD, owner)


def by_hand(x: torch.Tensor, t: int, w: float, eta: float, r: float, buffer: MomentumBuffer) -> torch.Tensor:
    """The APG'd epsilon written out: both branches' eps, their denoised estimates x_0 = (x_t - sqrt(1 - abar) eps)
    / sqrt(abar) (Ho et al. 2020, eq. 15), diffusers' rule on them, and eps again from the guided x_0."""
    abar = float(ALPHAS_CUMPROD[t])
    eps_u, eps_c = 0.4 * x + t / 1000, 0.4 * x + 0.8 + t / 1000
    x_0_u, x_0_c = ((x - (1 - abar) ** 0.5 * e) / abar**0.5 for e in (eps_u, eps_c))
    x_0 = normalized_guidance(x_0_c, x_0_u, w - 1, buffer, eta, r, use_original_formulation=True)
    return (x - abar**0.5 * x_0) / (1 - abar) ** 0.5


def test_apg_acts_on_the_denoised_predictions_in_one_batched_call_with_momentum_across_steps():
    model = ToyDenoiser()
    w, eta, r, beta = 6.0, 0.0, 3.0, -0.5
    context = context_for(model, cfg=w, apg=True, apg_eta=eta, apg_norm_threshold=r, apg_momentum=beta)
    predict = apg_guided(context.conditional, context)
    buffer = MomentumBuffer(beta)
    g = torch.Generator().manual_seed(5)
    for t in (999, 600, 200, 1):
        x = torch.randn(2, 4, 3, 3, generator=g)
        assert torch.allclose(predict(x, torch.tensor(float(t))), by_hand(x, t, w, eta, r, buffer), atol=1e-4), t
    assert model.calls == [4] * 4  # one call a step, both branches of both images


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_apg_with_eta_one_and_no_rescaling_or_momentum_is_cfg(prediction_type: str):
    x, t = predictions(6, (2, 4, 3, 3))[0], torch.tensor(400.0)
    context = context_for(ToyDenoiser(), prediction_type, cfg=7.5, apg=True, apg_eta=1.0, apg_norm_threshold=0.0)
    assert context.prediction_type == prediction_type
    plain = context_for(ToyDenoiser(), prediction_type, cfg=7.5)
    got, want = apg_guided(context.conditional, context)(x, t), cfg_guided(plain.conditional, plain)(x, t)
    assert torch.allclose(got, want, atol=1e-4)


def test_each_run_starts_a_fresh_momentum_and_rescale_follows_apg():
    settings = dict(cfg=4.0, apg=True, apg_momentum=-0.5, cfg_rescale=0.7)
    x, t = predictions(7, (2, 4, 3, 3))[0], torch.tensor(500.0)
    context = context_for(ToyDenoiser(), **settings)
    first = apg_guided(context.conditional, context)
    once = first(x, t)
    assert not torch.equal(first(x, t), once)  # the momentum carries over the run's steps
    assert torch.equal(apg_guided(context.conditional, context)(x, t), once)  # a new run (batch, pass): afresh
    # CFG rescale applies to APG's prediction, as diffusers' guider applies guidance_rescale after it.
    plain = context_for(ToyDenoiser(), **{**settings, "cfg_rescale": 0.0})
    unrescaled = apg_guided(plain.conditional, plain)(x, t)
    pred_cond = 0.4 * x + 0.8 + 0.5
    assert torch.equal(once, rescale_cfg(unrescaled, pred_cond, 0.7))


def test_momentum_is_a_running_sum():
    momentum = Momentum(-0.5)
    assert torch.equal(momentum(torch.tensor([2.0])), torch.tensor([2.0]))
    assert torch.equal(momentum(torch.tensor([1.0])), torch.tensor([0.0]))  # 1 - 0.5 * 2
    assert torch.equal(momentum(torch.tensor([4.0])), torch.tensor([4.0]))  # 4 - 0.5 * 0


def test_apg_images_make_one_batched_call_a_step_and_differ_from_cfgs(loaded: Model):
    def image(**settings: object) -> tuple[np.ndarray, int]:
        (made,) = make_images(loaded, make_request("a red circle", seed=2, steps=4, sampler="euler", **settings))
        return np.asarray(made.image).astype(int), made.unet_evaluations

    plain, evaluations = image(cfg=7.5)
    projected, apg_evaluations = image(cfg=7.5, apg=True, apg_norm_threshold=1.0, apg_momentum=-0.5)
    as_cfg, _ = image(cfg=7.5, apg=True, apg_eta=1.0, apg_norm_threshold=0.0)
    assert evaluations == apg_evaluations == 2 * 4
    assert np.abs(projected - plain).max() > 2
    assert np.abs(as_cfg - plain).max() <= 1  # APG at eta 1 without rescaling is CFG, up to rounding


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"apg": True, "apg_eta": 1.5}, "--apg-eta must be a number from 0 to 1"),
        ({"apg": True, "apg_eta": math.nan}, "--apg-eta must be"),
        ({"apg": True, "apg_norm_threshold": -1.0}, "--apg-norm-threshold must be a number of at least 0"),
        ({"apg": True, "apg_norm_threshold": math.inf}, "--apg-norm-threshold must be"),
        ({"apg": True, "apg_momentum": 1.0}, "--apg-momentum must be a number above -1 and below 1"),
        ({"apg": True, "apg_momentum": math.nan}, "--apg-momentum must be"),
        ({"apg_eta": 0.5}, "--apg-eta is APG's: it needs --apg"),
        ({"apg_momentum": -0.5}, "--apg-momentum is APG's: it needs --apg"),
        ({"apg": True, "neg_mode": "separate"}, "not separate negatives; use --neg-mode replace, or leave out --apg"),
    ],
)
def test_bad_apg_settings_are_usage_errors(settings: dict, words: str):
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        Recipe(**settings)


@pytest.mark.parametrize("args", [["--apg", "--apg-eta", "nan"], ["--apg", "--apg-momentum", "-1"], ["--apg-eta", "1"]])
def test_the_command_line_refuses_bad_apg_settings_in_one_line(tiny_model: Path, args: list[str]):
    result = CliRunner().invoke(app, ["generate", "x", "-m", str(tiny_model), *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "apg" in result.stderr


def test_apg_at_scale_one_is_the_conditional_pass():
    """At w = 1 the engine runs no unconditional branch, and APG, as CFG, leaves the conditional pass as it is
    (the paper's D_c + 0)."""
    model = ToyDenoiser()
    cond = Conditioning(torch.full((2, 5, 8), 0.02))
    context = GuidanceContext(model, Branches(cond, None, ()), Recipe(cfg=1.0, apg=True), ALPHAS_CUMPROD, None)
    conditional = context.conditional
    assert apg_guided(conditional, context) is conditional
