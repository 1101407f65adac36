"""Adaptive projected guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance
Scales in Diffusion Models"), in place of CFG's combination of the branches of the one batched U-Net call.

CFG written on the denoised predictions D (x_0 estimates) is D_c + (w - 1) Delta, Delta = D_c - D_u. APG
(Algorithm 1 of the paper) changes the update Delta, per image:

1. momentum: Delta_t <- Delta_t + beta Delta_{t-1}, a running sum over the steps (beta < 0: the paper's reverse
   momentum; 0: off);
2. rescaling: Delta <- Delta min(1, r / ||Delta||), its norm cut to the radius r (0: off);
3. projection: Delta = Delta_par + Delta_orth, parallel and orthogonal to D_c (in float64); the parallel part,
   which oversaturates, is weighted by eta:

       D_APG = D_c + (w - 1) (Delta_orth + eta Delta_par).

At eta = 1 without momentum or rescaling it is CFG. As the paper (and ComfyUI's APG node) does, it acts on the
denoised predictions: the model's eps or v is turned into D at the step's noise level and the result back, so every
sampler steps as before. diffusers' `AdaptiveProjectedGuidance` runs the same three steps on the raw prediction, and
by default ends with D_u + w (Delta_orth + eta Delta_par) (the parallel part of the result then differs unless
eta = 1); its `use_original_formulation=True` with guidance scale w - 1 is the paper's rule, which this module
matches to the bit on the same predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sdcli.guidance.cfg import Combine, guided_by
from sdcli.guidance.context import GuidanceContext
from sdcli.recipe import Recipe
from sdcli.sampling.loop import Predictor, sigma_of_timestep
from sdcli.sampling.prediction import denoised, prediction

IMAGE_DIMS = [-1, -2, -3]  # an image's (C, h, w): norms and projections are per image, as the paper's


class Momentum:
    """APG's running update Delta_t + beta Delta_{t-1} (diffusers' MomentumBuffer), over one run's steps."""

    def __init__(self, beta: float):
        self.beta = beta
        self.average: torch.Tensor | None = None  # (B, C, h, w) after the first step

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        self.average = delta if self.average is None else delta + self.beta * self.average
        return self.average


def rescale_update(delta: torch.Tensor, norm_threshold: float) -> torch.Tensor:
    """Delta min(1, r / ||Delta||) (B, C, h, w): each image's update cut to norm r; r = 0 leaves it as it is."""
    if norm_threshold <= 0:
        return delta
    norm = delta.norm(p=2, dim=IMAGE_DIMS, keepdim=True)  # (B, 1, 1, 1)
    return delta * torch.minimum(torch.ones_like(delta), norm_threshold / norm)


def project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v0's components (B, C, h, w) parallel and orthogonal to v1, per image, computed in float64."""
    v0_64, v1_unit = v0.double(), F.normalize(v1.double(), dim=IMAGE_DIMS)
    parallel = (v0_64 * v1_unit).sum(dim=IMAGE_DIMS, keepdim=True) * v1_unit
    orthogonal = v0_64 - parallel
    return parallel.to(v0.dtype), orthogonal.to(v0.dtype)


def apg(
    pred_uncond: torch.Tensor,
    pred_cond: torch.Tensor,
    scale: float,
    eta: float,
    norm_threshold: float,
    momentum: Momentum | None = None,
) -> torch.Tensor:
    """Algorithm 1: D_c + (w - 1) (Delta_orth + eta Delta_par), Delta = D_c - D_u after momentum and rescaling; each
    (B, C, h, w)."""
    delta = pred_cond - pred_uncond
    if momentum is not None:
        delta = momentum(delta)
    parallel, orthogonal = project(rescale_update(delta, norm_threshold), pred_cond)
    return pred_cond + (scale - 1) * (orthogonal + eta * parallel)


def apg_combine(recipe: Recipe, alphas_cumprod: torch.Tensor, prediction_type: str) -> Combine:
    """APG's combination of the batched call's predictions, on their denoised estimates, with momentum over the
    run's steps (a fresh run for each call of this function)."""
    momentum = Momentum(recipe.apg_momentum) if recipe.apg_momentum else None

    def combine(
        x: torch.Tensor,
        t: torch.Tensor,
        pred_uncond: torch.Tensor,
        pred_cond: torch.Tensor,
        preds_neg: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        sigma = sigma_of_timestep(t, alphas_cumprod)
        x_sigma = x.float() * (sigma**2 + 1) ** 0.5  # the sampler's x = x_0 + sigma eps, from the model's input
        denoised_uncond, denoised_cond = (
            denoised(p.float(), x_sigma, sigma, prediction_type) for p in (pred_uncond, pred_cond)
        )
        guided = apg(denoised_uncond, denoised_cond, recipe.cfg, recipe.apg_eta, recipe.apg_norm_threshold, momentum)
        return prediction(guided, x_sigma, sigma, prediction_type).to(pred_cond.dtype)

    return combine


def apg_guided(predict: Predictor, context: GuidanceContext) -> Predictor:
    """The registry's APG entry: CFG's batched call, its branches combined by APG; at w = 1 (no unconditional
    branch runs) `predict` as it is, as CFG's entry leaves it."""
    if context.branches.uncond is None:
        return predict
    return guided_by(apg_combine(context.recipe, context.alphas_cumprod, context.prediction_type), context)
