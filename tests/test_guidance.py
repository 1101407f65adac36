"""Classifier-free guidance as pure math, on toy tensors and a toy denoiser that is not a U-Net."""

from __future__ import annotations

import pytest
import torch

from sdcli.generate import make_images
from sdcli.guidance import cfg, guided, needs_unconditional
from sdcli.loading import Model
from sdcli.settings import Request


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

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.calls.append(context)
        return x * t + context.sum(dim=(1, 2)).view(-1, 1, 1, 1)


def test_guided_makes_one_batched_call_with_unconditional_half_first():
    model = ToyDenoiser()
    x = torch.ones(2, 4, 3, 3)  # (B, C, h, w)
    t = torch.tensor(2.0)
    cond = torch.full((2, 5, 8), 1.0)  # (B, L, D): sums to 40 per image
    uncond = torch.zeros(2, 5, 8)  # sums to 0
    pred = guided(model, x, t, cond, uncond, scale=3.0)
    assert len(model.calls) == 1
    assert model.calls[0].shape == (4, 5, 8)
    assert torch.equal(model.calls[0][:2], uncond) and torch.equal(model.calls[0][2:], cond)
    # pred_u = 2, pred_c = 42: guided = 2 + 3 * 40.
    assert torch.equal(pred, torch.full((2, 4, 3, 3), 122.0))


def test_guided_without_unconditional_context_runs_only_the_conditional_pass():
    model = ToyDenoiser()
    x = torch.ones(1, 4, 3, 3)
    cond = torch.full((1, 5, 8), 1.0)
    pred = guided(model, x, torch.tensor(2.0), cond, None, scale=1.0)
    assert len(model.calls) == 1 and model.calls[0].shape == (1, 5, 8)
    assert torch.equal(pred, torch.full((1, 4, 3, 3), 42.0))


@pytest.mark.parametrize("scale, per_call", [(7.5, 2 * 3), (0.0, 2 * 3), (1.0, 3)])
def test_one_unet_call_per_step_with_both_halves_unless_scale_is_one(loaded: Model, scale: float, per_call: int):
    batches: list[int] = []
    hook = loaded.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        request = Request("a red circle", seed=0, steps=4, sampler="euler", cfg=scale, num_images=3, batch_size=3)
        list(make_images(loaded, request))
    finally:
        hook.remove()
    assert batches == [per_call] * 4  # Euler: one model call per step, 3 images, both halves in one call
