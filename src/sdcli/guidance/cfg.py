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

All act on the model's own prediction (eps or v, whichever it was trained for), before the sampler's step. The
batched call is shared: another combination of its branches (APG, `sdcli.guidance.apg`) is another `Combine`, a
further branch after the prompts' (PAG's perturbed one, `sdcli.guidance.pag`) is an `ExtraBranch` with its term, and
a CFG++ sampler gets the unconditional prediction beside the guided one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sdcli.guidance.context import GuidanceContext
from sdcli.sampling.cfgpp import GuidedPrediction
from sdcli.sampling.loop import Denoiser, Predictor
from sdcli.sampling.samplers import get_sampler
from sdcli.text.conditioning import Branches, Conditioning

# (x (B, C, h, w), t, pred_uncond, pred_cond, preds_neg, each (B, C, h, w)) -> the guided prediction (B, C, h, w):
# how the guided predictor combines the branches of its one batched call.
Combine = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class ExtraBranch:
    """A branch the batched call runs after the prompts' branches: its conditioning (of the batch's B images) and
    its term, added to the guided prediction."""

    conditioning: Conditioning
    term: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pred_cond, pred_extra) (B, C, h, w) -> (B, C, h, w)


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


def needs_unconditional(
    scale: float, neg_scale: float = 0.0, separate_negatives: int = 0, cfg_pp: bool = False
) -> bool:
    """Whether a step needs the unconditional prediction at all: not at w = 1, unless separate negatives (with a
    scale other than 0) are subtracted from it, or a CFG++ sampler renoises along it (at every lambda)."""
    return scale != 1 or (separate_negatives > 0 and neg_scale != 0) or cfg_pp


def cfg_combine(scale: float, neg_scale: float = 0.0) -> Combine:
    """CFG's combination: pred_u + w (pred_c - pred_u), less w_neg (pred_neg_k - pred_u) for each separate negative."""

    def combine(
        x: torch.Tensor,
        t: torch.Tensor,
        pred_uncond: torch.Tensor,
        pred_cond: torch.Tensor,
        preds_neg: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        return subtract_negatives(cfg(pred_uncond, pred_cond, scale), pred_uncond, preds_neg, neg_scale)

    return combine


def batched_cfg(
    model: Denoiser,
    branches: Branches,
    combine: Combine,
    rescale: float = 0.0,
    with_uncond: bool = False,
    extra: ExtraBranch | None = None,
) -> Predictor:
    """The guided predictor for x (B, C, h, w): all branches in one batched model call (unconditional if it runs,
    conditional, each separate negative, then the extra branch if any, each a conditioning of B images); the
    prompts' predictions combined by `combine` (without an unconditional branch: the conditional prediction), plus
    the extra branch's term, then CFG rescale where CFG runs; with `with_uncond` (CFG++), a GuidedPrediction with the
    unconditional prediction beside."""
    uncond = [] if branches.uncond is None else [branches.uncond]
    order = [*uncond, branches.cond, *branches.negatives, *([] if extra is None else [extra.conditioning])]
    context = Conditioning.cat(order)  # (len(order) * B, ...)

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | GuidedPrediction:
        preds = list(model(torch.cat([x] * len(order)), t, context).chunk(len(order)))  # (B, C, h, w) each
        pred_extra = None if extra is None else preds.pop()
        pred_uncond = preds.pop(0) if uncond else None
        pred_cond, *preds_neg = preds
        pred_guided = pred_cond if pred_uncond is None else combine(x, t, pred_uncond, pred_cond, preds_neg)
        if extra is not None:
            pred_guided = pred_guided + extra.term(pred_cond, pred_extra)
        if rescale > 0 and pred_uncond is not None:
            pred_guided = rescale_cfg(pred_guided, pred_cond, rescale)
        return GuidedPrediction(pred_guided, pred_uncond) if with_uncond else pred_guided

    return predict


def guided_by(combine: Combine, context: GuidanceContext, extra: ExtraBranch | None = None) -> Predictor:
    """The batched guided call of the context's branches (and `extra`'s), combined by `combine`, with the recipe's
    CFG rescale, and the unconditional prediction beside for a CFG++ sampler."""
    recipe = context.recipe
    cfg_pp = get_sampler(recipe.sampler).cfg_pp
    return batched_cfg(context.denoiser, context.branches, combine, recipe.cfg_rescale, cfg_pp, extra)


def cfg_guided(predict: Predictor, context: GuidanceContext) -> Predictor:
    """The registry's CFG entry: the conditional pass replaced by the batched guided call, unless no unconditional
    branch runs (w = 1 without separate negatives), where `predict` stays as it is."""
    if context.branches.uncond is None:
        return predict
    return guided_by(cfg_combine(context.recipe.cfg, context.recipe.neg_weight), context)


class CountedDenoiser:
    """A denoiser that counts the rows it evaluates: `evaluations` = U-Net evaluations over all images so far."""

    def __init__(self, model: Denoiser):
        self.model = model
        self.evaluations = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.evaluations += x.shape[0]
        return self.model(x, t, cond)
