"""Guidance as pure math, on toy tensors and a toy denoiser that is not a U-Net: classifier-free guidance, separate
negatives, CFG rescale, the guidance interval."""

from __future__ import annotations

import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from tiny_sd import make_request

from sdcli.engine import make_images
from sdcli.errors import UsageError
from sdcli.guidance.cfg import (
    CountedDenoiser,
    cfg,
    cfg_guided,
    needs_unconditional,
    rescale_cfg,
    subtract_negatives,
)
from sdcli.guidance.context import GuidanceContext
from sdcli.guidance.interval import guide_within, interval_sigmas, within
from sdcli.loading.components import Model
from sdcli.recipe import GuidanceInterval, Recipe, parse_interval
from sdcli.sampling.loop import sigma_of_timestep
from sdcli.text.conditioning import Branches, Conditioning


def test_cfg_is_the_formula_of_ho_and_salimans():
    u = torch.tensor([1.0, -2.0, 0.5])
    c = torch.tensor([3.0, 2.0, 0.5])
    assert torch.equal(cfg(u, c, 7.5), torch.tensor([1.0 + 7.5 * 2.0, -2.0 + 7.5 * 4.0, 0.5]))


def test_cfg_at_one_is_the_conditional_and_at_zero_the_unconditional_prediction():
    u, c = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cfg(u, c, 1.0), c)  # equal in exact arithmetic; w = 1 skips the formula altogether
    assert torch.equal(cfg(u, c, 0.0), u)
    # Negative scales extrapolate away from the condition.
    assert torch.allclose(cfg(u, c, -1.0), 2 * u - c)


def test_only_scale_one_skips_the_unconditional_branch():
    assert not needs_unconditional(1.0)
    assert needs_unconditional(0.0)
    assert needs_unconditional(7.5)
    assert needs_unconditional(-1.0)


class ToyDenoiser:
    """pred = x * t + sum of the context: easy to compute by hand; records every call's batch."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.calls.append(cond.context)
        return x * t + cond.context.sum(dim=(1, 2)).view(-1, 1, 1, 1)


def guided(model, x, t, cond, uncond, scale, negatives=(), neg_scale=None, rescale=0.0, guide_at=None):
    """The registry's CFG entry over a toy model, inside `guide_at`'s interval when given, evaluated once."""
    recipe = Recipe(
        cfg=scale, neg_mode="separate" if negatives else "replace", neg_scale=neg_scale, cfg_rescale=rescale
    )
    context = GuidanceContext(model, Branches(cond, uncond, tuple(negatives)), recipe, ALPHAS_CUMPROD, model=None)
    predict = cfg_guided(context.conditional, context)
    return (predict if guide_at is None else within(predict, context.conditional, guide_at))(x, t)


def test_guided_makes_one_batched_call_with_unconditional_half_first():
    model = ToyDenoiser()
    x = torch.ones(2, 4, 3, 3)  # (B, C, h, w)
    t = torch.tensor(2.0)
    cond = torch.full((2, 5, 8), 1.0)  # (B, L, D): sums to 40 per image
    uncond = torch.zeros(2, 5, 8)  # sums to 0
    pred = guided(model, x, t, Conditioning(cond), Conditioning(uncond), scale=3.0)
    assert len(model.calls) == 1
    assert model.calls[0].shape == (4, 5, 8)
    assert torch.equal(model.calls[0][:2], uncond) and torch.equal(model.calls[0][2:], cond)
    # pred_u = 2, pred_c = 42: guided = 2 + 3 * 40.
    assert torch.equal(pred, torch.full((2, 4, 3, 3), 122.0))


def test_guided_without_unconditional_context_runs_only_the_conditional_pass():
    model = ToyDenoiser()
    x = torch.ones(1, 4, 3, 3)
    cond = torch.full((1, 5, 8), 1.0)
    pred = guided(model, x, torch.tensor(2.0), Conditioning(cond), None, scale=1.0)
    assert len(model.calls) == 1 and model.calls[0].shape == (1, 5, 8)
    assert torch.equal(pred, torch.full((1, 4, 3, 3), 42.0))


@pytest.mark.parametrize("scale, per_call", [(7.5, 2 * 3), (0.0, 2 * 3), (1.0, 3)])
def test_one_unet_call_per_step_with_both_halves_unless_scale_is_one(loaded: Model, scale: float, per_call: int):
    batches: list[int] = []
    hook = loaded.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        request = make_request("a red circle", seed=0, steps=4, sampler="euler", cfg=scale, num_images=3, batch_size=3)
        list(make_images(loaded, request))
    finally:
        hook.remove()
    assert batches == [per_call] * 4  # Euler: one model call per step, 3 images, both halves in one call


def test_separate_negatives_are_the_lectures_formula():
    u = torch.tensor([1.0, 0.0])
    c = torch.tensor([2.0, 1.0])
    n1 = torch.tensor([0.0, 3.0])
    n2 = torch.tensor([4.0, 0.5])
    w, w_neg = 5.0, 2.0
    # eps_u + w (eps_c - eps_u) - w_neg (eps_n1 - eps_u) - w_neg (eps_n2 - eps_u)
    want = torch.tensor([1.0 + 5 * 1 - 2 * (-1) - 2 * 3, 0.0 + 5 * 1 - 2 * 3 - 2 * 0.5])
    assert torch.equal(subtract_negatives(cfg(u, c, w), u, [n1, n2], w_neg), want)


def test_a_negative_at_scale_zero_changes_nothing_to_the_bit():
    u, c, n = torch.randn(3, 2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    plain = cfg(u, c, 7.5)
    assert torch.equal(subtract_negatives(plain, u, [n], 0.0), plain)


def test_separate_negatives_need_the_unconditional_branch_even_at_scale_one():
    assert needs_unconditional(1.0, neg_scale=3.0, separate_negatives=1)
    assert not needs_unconditional(1.0, neg_scale=0.0, separate_negatives=1)
    assert not needs_unconditional(1.0, neg_scale=3.0, separate_negatives=0)


def test_guided_batches_unconditional_conditional_and_each_negative_in_one_call():
    model = ToyDenoiser()
    x = torch.ones(2, 4, 3, 3)  # (B, C, h, w)
    uncond = torch.zeros(2, 5, 8)  # context sums: 0, 40, 80, 120
    cond, neg1, neg2 = (torch.full((2, 5, 8), v) for v in (1.0, 2.0, 3.0))
    negatives = [Conditioning(neg1), Conditioning(neg2)]
    pred = guided(model, x, torch.tensor(2.0), Conditioning(cond), Conditioning(uncond), 3.0, negatives, neg_scale=0.5)
    assert len(model.calls) == 1 and model.calls[0].shape == (8, 5, 8)
    assert torch.equal(model.calls[0], torch.cat([uncond, cond, neg1, neg2]))
    # pred_u = 2, pred_c = 42, pred_n1 = 82, pred_n2 = 122: 2 + 3 * 40 - 0.5 * 80 - 0.5 * 120.
    assert torch.equal(pred, torch.full((2, 4, 3, 3), 22.0))


def test_rescale_is_lin_et_al_eq_15_16_by_hand():
    pred_cond = torch.tensor([[1.0, 3.0]])  # std (unbiased) sqrt(2)
    pred_cfg = torch.tensor([[0.0, 4.0]])  # std sqrt(8): rescaled by 1/2 to [0, 2]
    assert torch.allclose(rescale_cfg(pred_cfg, pred_cond, 1.0), torch.tensor([[0.0, 2.0]]))
    assert torch.allclose(rescale_cfg(pred_cfg, pred_cond, 0.5), torch.tensor([[0.0, 3.0]]))
    assert torch.equal(rescale_cfg(pred_cfg, pred_cond, 0.0), pred_cfg)


def test_rescale_works_per_image_and_matches_diffusers_to_the_bit():
    g = torch.Generator().manual_seed(2)
    pred_cond = torch.randn(3, 4, 6, 6, generator=g)
    pred_cfg = 5 * torch.randn(3, 4, 6, 6, generator=g)
    out = rescale_cfg(pred_cfg, pred_cond, 1.0)
    assert torch.allclose(out.std(dim=(1, 2, 3)), pred_cond.std(dim=(1, 2, 3)))
    for phi in (0.3, 0.7, 1.0):
        assert torch.equal(rescale_cfg(pred_cfg, pred_cond, phi), rescale_noise_cfg(pred_cfg, pred_cond, phi))


def test_guided_rescales_only_when_asked():
    model = lambda x, t, cond: x * cond.context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    cond, uncond = Conditioning(torch.full((1, 2, 2), 2.0)), Conditioning(torch.full((1, 2, 2), 0.5))
    plain = guided(model, x, torch.tensor(1.0), cond, uncond, 7.5)
    assert torch.equal(guided(model, x, torch.tensor(1.0), cond, uncond, 7.5, rescale=0.0), plain)
    rescaled = guided(model, x, torch.tensor(1.0), cond, uncond, 7.5, rescale=1.0)
    assert torch.allclose(rescaled.std(), (2 * x).std())


ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dim=0)  # SD's scaled_linear


def test_sigma_of_a_timestep():
    a = ALPHAS_CUMPROD
    for t in (0, 500, 999):
        assert sigma_of_timestep(torch.tensor(t), a) == pytest.approx(float(((1 - a[t]) / a[t]).sqrt()), rel=1e-6)
    # A fractional timestep interpolates log sigma, as diffusers' sigma-based schedulers do.
    s1, s2 = sigma_of_timestep(100, a), sigma_of_timestep(101, a)
    assert sigma_of_timestep(100.5, a) == pytest.approx((s1 * s2) ** 0.5, rel=1e-9)
    assert sigma_of_timestep(999, a) == pytest.approx(14.6146, rel=1e-4)  # SD's sigma_max


def test_interval_in_sigmas_and_in_percentages_of_the_schedule():
    a = ALPHAS_CUMPROD
    assert interval_sigmas(GuidanceInterval(0.28, 5.42, percent=False), a) == (0.28, 5.42)
    lo, hi = interval_sigmas(GuidanceInterval(0.2, 0.8, percent=True), a)
    # 20% of the schedule is timestep 0.8 * 999, 80% timestep 0.2 * 999.
    assert lo == pytest.approx(sigma_of_timestep(0.2 * 999, a)) and hi == pytest.approx(sigma_of_timestep(0.8 * 999, a))
    assert interval_sigmas(GuidanceInterval(0.0, 1.0, percent=True), a) == (
        pytest.approx(sigma_of_timestep(0, a)),
        pytest.approx(sigma_of_timestep(999, a)),
    )


def test_guide_within_is_a_closed_interval():
    a = ALPHAS_CUMPROD
    guide_at = guide_within(GuidanceInterval(0.0, 0.5, percent=True), a)  # timesteps 999 down to 499.5
    assert guide_at(torch.tensor(999)) and guide_at(torch.tensor(500))
    assert not guide_at(torch.tensor(499)) and not guide_at(torch.tensor(0))


def test_outside_the_interval_only_the_conditional_pass_runs():
    model = ToyDenoiser()
    x, cond, uncond = torch.ones(1, 4, 3, 3), torch.full((1, 5, 8), 1.0), torch.zeros(1, 5, 8)
    pred = guided(model, x, torch.tensor(2.0), Conditioning(cond), Conditioning(uncond), 3.0, guide_at=lambda t: False)
    assert len(model.calls) == 1 and model.calls[0].shape == (1, 5, 8)
    assert torch.equal(pred, torch.full((1, 4, 3, 3), 42.0))  # the conditional prediction, unguided


@pytest.mark.parametrize(
    "text, want",
    [
        ("0.28,5.42", GuidanceInterval(0.28, 5.42, percent=False)),
        (" 1 , 2 ", GuidanceInterval(1.0, 2.0, percent=False)),
        ("20%,80%", GuidanceInterval(0.2, 0.8, percent=True)),
        ("0%,100%", GuidanceInterval(0.0, 1.0, percent=True)),
        ("3,3", GuidanceInterval(3.0, 3.0, percent=False)),
    ],
)
def test_parse_interval(text: str, want: GuidanceInterval):
    assert parse_interval(text) == want


@pytest.mark.parametrize(
    "text, words",
    [
        ("1", "two values"),
        ("1,2,3", "two values"),
        ("a,b", "numbers"),
        ("5,1", "LO <= HI"),
        ("-1,1", "LO <= HI"),
        ("nan,1", "LO <= HI"),
        ("20%,3", "both"),
        ("20%,120%", "0% to 100%"),
    ],
)
def test_bad_intervals_say_what_to_type(text: str, words: str):
    with pytest.raises(UsageError, match=words) as error:
        parse_interval(text)
    assert "for example --guidance-interval" in str(error.value)


def test_counted_denoiser_counts_rows():
    counted = CountedDenoiser(ToyDenoiser())
    counted(torch.ones(6, 4, 3, 3), torch.tensor(1.0), Conditioning(torch.zeros(6, 5, 8)))
    counted(torch.ones(3, 4, 3, 3), torch.tensor(1.0), Conditioning(torch.zeros(3, 5, 8)))
    assert counted.evaluations == 9
