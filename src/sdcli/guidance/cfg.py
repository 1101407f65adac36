"""Guidance as small pure functions: classifier-free guidance, separate negative prompts, CFG rescale, and the
guidance interval. All of them act on the model's own prediction (eps or v, whichever it was trained for), before
the sampler's step.

- Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"): the prediction is
  extrapolated away from the unconditional prediction towards the conditional one, pred = pred_u + w (pred_c -
  pred_u). w = 1 is the conditional model alone (so the unconditional pass is skipped), w = 0 the unconditional
  model, w > 1 guidance. With `--neg-mode replace` the negative prompt is the unconditional branch (diffusers,
  AUTOMATIC1111).
- Separate negatives (`--neg-mode separate`): each negative prompt is a term of its own beside a true unconditional
  (empty prompt) branch: pred = pred_u + w (pred_c - pred_u) - w_neg sum_k (pred_neg_k - pred_u).
- CFG rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15-16): the
  guided prediction is rescaled to the standard deviation of the conditional one, blended by phi.
- Guidance interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and
  Distribution Quality in Diffusion Models"): guidance only where the noise level sigma lies in [lo, hi]; elsewhere
  the conditional pass runs alone.
- Classifier guidance (Dhariwal & Nichol 2021, eq. 14): a noise-aware classifier's gradient shifts epsilon,
  eps - s sqrt(1 - alphabar_t) grad log p(y | x_t); the classifier itself lives in `sdcli.guidance.classifier`.

Every branch of a step goes through the model in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from sdcli.text.conditioning import Conditioning
from sdcli.guidance.interval import GuidanceInterval

# A conditional denoiser: (x (B, C, h, w), t (scalar), conditioning of B images) -> prediction (B, C, h, w).
Denoiser = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
# Whether to guide at timestep t (outside the guidance interval: the conditional pass alone).
GuideAt = Callable[[torch.Tensor], bool]


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


def classifier_shift(grad_log_p: torch.Tensor, alphabar: float, scale: float) -> torch.Tensor:
    """What classifier guidance subtracts from epsilon: s * sqrt(1 - alphabar_t) * grad_{x_t} log p(y | x_t, t)."""
    return scale * (1 - alphabar) ** 0.5 * grad_log_p


def needs_unconditional(scale: float, neg_scale: float = 0.0, separate_negatives: int = 0) -> bool:
    """Whether a step needs the unconditional prediction at all: not at w = 1, unless separate negatives (with a
    scale other than 0) are subtracted from it."""
    return scale != 1 or (separate_negatives > 0 and neg_scale != 0)


def sigma_of_timestep(t: torch.Tensor | float, alphas_cumprod: torch.Tensor) -> float:
    """The noise level sigma = sqrt((1 - alphabar_t) / alphabar_t) of timestep t, interpolated in log sigma for a
    fractional t (as diffusers' sigma-based schedulers map sigmas to timesteps)."""
    alphas = alphas_cumprod.double().cpu().numpy()  # (T_train,)
    log_sigmas = 0.5 * np.log((1 - alphas) / alphas)
    return float(np.exp(np.interp(float(t), np.arange(len(alphas)), log_sigmas)))


def interval_sigmas(interval: GuidanceInterval, alphas_cumprod: torch.Tensor) -> tuple[float, float]:
    """The interval as (sigma_lo, sigma_hi). A percentage p of the schedule is the timestep (1 - p) (T_train - 1)."""
    if not interval.percent:
        return interval.lo, interval.hi
    last = len(alphas_cumprod) - 1
    return (
        sigma_of_timestep((1 - interval.hi) * last, alphas_cumprod),
        sigma_of_timestep((1 - interval.lo) * last, alphas_cumprod),
    )


def guide_within(interval: GuidanceInterval, alphas_cumprod: torch.Tensor) -> GuideAt:
    """Whether to guide at t: sigma(t) in [sigma_lo, sigma_hi] (a little slack for float round-off at the ends)."""
    sigma_lo, sigma_hi = interval_sigmas(interval, alphas_cumprod)
    lo, hi = sigma_lo * (1 - 1e-6), sigma_hi * (1 + 1e-6)

    def guide_at(t: torch.Tensor) -> bool:
        return lo <= sigma_of_timestep(t, alphas_cumprod) <= hi

    return guide_at


def guided(
    model: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    scale: float,
    negatives: Sequence[Conditioning] = (),
    neg_scale: float = 0.0,
    rescale: float = 0.0,
    guide_at: GuideAt | None = None,
) -> torch.Tensor:
    """The guided prediction for x (B, C, h, w), all branches in one batched model call: unconditional,
    conditional, then each separate negative, each a conditioning of B images. The conditional branch runs alone
    when `uncond` is None (w = 1 without separate negatives) or `guide_at(t)` is false."""
    if uncond is None or (guide_at is not None and not guide_at(t)):
        return model(x, t, cond)
    branches = [uncond, cond, *negatives]
    pred = model(torch.cat([x] * len(branches)), t, Conditioning.cat(branches))  # (len(branches) * B, C, h, w)
    pred_uncond, pred_cond, *preds_neg = pred.chunk(len(branches))  # (B, C, h, w) each
    pred_guided = subtract_negatives(cfg(pred_uncond, pred_cond, scale), pred_uncond, preds_neg, neg_scale)
    return rescale_cfg(pred_guided, pred_cond, rescale) if rescale > 0 else pred_guided


class CountedDenoiser:
    """A denoiser that counts the rows it evaluates: `evaluations` = U-Net evaluations over all images so far."""

    def __init__(self, model: Denoiser):
        self.model = model
        self.evaluations = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.evaluations += x.shape[0]
        return self.model(x, t, cond)
