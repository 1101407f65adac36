"""Classifier-free guidance with separate negative prompts and CFG rescale, as small pure functions and the
predictor wrapper that runs every branch in one batched U-Net call.

- Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"): the prediction is
  extrapolated away from the unconditional prediction towards the conditional one, pred = pred_u + w (pred_c -
  pred_u). w = 1 is the conditional model alone (so the unconditional pass is skipped), w = 0 the unconditional
  model, w > 1 guidance. With `--neg-mode replace` the negative prompt is the unconditional branch (diffusers,
  AUTOMATIC1111).
- Separate negatives (`--neg-mode separate`): each negative prompt is a term of its own beside a true unconditional
  (empty prompt) branch: pred = pred_u + w (pred_c - pred_u) - w_neg sum_k (pred_neg_k - pred_u).
- CFG rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15-16): the
  guided prediction is rescaled to the standard deviation of the conditional one, blended by phi.

All act on the model's own prediction (eps or v, whichever it was trained for), before the sampler's step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sdcli.guidance.context import GuidanceContext
from sdcli.sampling.loop import Denoiser, Predictor
from sdcli.text.conditioning import Branches, Conditioning


def cfg(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: pred_u + w * (pred_c - pred_u)."""
    return pred_uncond + scale * (pred_cond - pred_uncond)


def subtract_negatives(
    pred: torch.Tensor, pred_uncond: torch.Tensor, preds_neg: Sequence[torch.Tensor], neg_scale: float
) -> torch.Tensor:
    """Separate negative prompts: pred - w_neg * (pred_neg_k - pred_u) for each negative k, in order."""
    for pred_neg in preds_neg:
        pred = pred - neg_scale * (pred_neg - pred_uncond)
    return pred


def rescale_cfg(pred_guided: torch.Tensor, pred_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """CFG rescale, Lin et al. 2023 eq. 15-16, per image of the batch (B, C, h, w):
    x_rescaled = x_cfg * std(x_pos) / std(x_cfg);  x_final = phi * x_rescaled + (1 - phi) * x_cfg.
    Written in the order of diffusers' `rescale_noise_cfg`, so the two agree to the bit."""
    dims = list(range(1, pred_cond.ndim))
    std_cond = pred_cond.std(dim=dims, keepdim=True)  # (B, 1, 1, 1)
    std_guided = pred_guided.std(dim=dims, keepdim=True)  # (B, 1, 1, 1)
    pred_rescaled = pred_guided * (std_cond / std_guided)
    return phi * pred_rescaled + (1 - phi) * pred_guided


def needs_unconditional(scale: float, neg_scale: float = 0.0, separate_negatives: int = 0) -> bool:
    """Whether a step needs the unconditional prediction at all: not at w = 1, unless separate negatives (with a
    scale other than 0) are subtracted from it."""
    return scale != 1 or (separate_negatives > 0 and neg_scale != 0)


def batched_cfg(
    model: Denoiser, branches: Branches, scale: float, neg_scale: float = 0.0, rescale: float = 0.0
) -> Predictor:
    """The guided predictor for x (B, C, h, w): all branches in one batched model call (unconditional,
    conditional, then each separate negative, each a conditioning of B images), combined by CFG, the separate
    negatives and CFG rescale. Needs the unconditional branch (`branches.uncond`)."""
    order = [branches.uncond, branches.cond, *branches.negatives]
    context = Conditioning.cat(order)  # (len(order) * B, ...)

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pred = model(torch.cat([x] * len(order)), t, context)  # (len(order) * B, C, h, w)
        pred_uncond, pred_cond, *preds_neg = pred.chunk(len(order))  # (B, C, h, w) each
        pred_guided = subtract_negatives(cfg(pred_uncond, pred_cond, scale), pred_uncond, preds_neg, neg_scale)
        return rescale_cfg(pred_guided, pred_cond, rescale) if rescale > 0 else pred_guided

    return predict


def cfg_guided(predict: Predictor, context: GuidanceContext) -> Predictor:
    """The registry's CFG entry: the conditional pass replaced by the batched guided call, unless no unconditional
    branch runs (w = 1 without separate negatives), where `predict` stays as it is."""
    if context.branches.uncond is None:
        return predict
    recipe = context.recipe
    return batched_cfg(context.denoiser, context.branches, recipe.cfg, recipe.neg_weight, recipe.cfg_rescale)


class CountedDenoiser:
    """A denoiser that counts the rows it evaluates: `evaluations` = U-Net evaluations over all images so far."""

    def __init__(self, model: Denoiser):
        self.model = model
        self.evaluations = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.evaluations += x.shape[0]
        return self.model(x, t, cond)
