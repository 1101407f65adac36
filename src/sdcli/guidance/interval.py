"""The guidance interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and
Distribution Quality in Diffusion Models"): guidance only where the noise level sigma lies in [lo, hi]; elsewhere
the conditional pass runs alone. `--guidance-interval` as typed is parsed by `sdcli.recipe.parse_interval`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdcli.guidance.context import GuidanceContext
from sdcli.recipe import GuidanceInterval, parse_interval
from sdcli.sampling.loop import Predictor, sigma_of_timestep

# Whether to guide at timestep t (outside the guidance interval: the conditional pass alone).
GuideAt = Callable[[torch.Tensor], bool]


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


def within(guided: Predictor, unguided: Predictor, guide_at: GuideAt) -> Predictor:
    """`guided` where `guide_at(t)`, `unguided` elsewhere."""
    return lambda x, t: guided(x, t) if guide_at(t) else unguided(x, t)


def interval_guided(predict: Predictor, context: GuidanceContext) -> Predictor:
    """The registry's interval entry: `predict` inside the recipe's interval, the conditional pass outside it."""
    interval = parse_interval(context.recipe.guidance_interval)
    return within(predict, context.conditional, guide_within(interval, context.alphas_cumprod))
