"""diffusers schedulers for the loop: built from the registry, and run with their order-coupled calls in one place.

diffusers' schedulers are stateful: `set_timesteps` must come first (it also fixes `init_noise_sigma` for the
sigma-based samplers), `scale_model_input` must precede each model call, and `step` must be called once per entry
of `timesteps`, in order (multistep solvers remember earlier predictions; Heun and DPM2 alternate two half-steps,
so their `timesteps` repeat). A `Schedule` starts from a fresh copy of the scheduler, so batches share no state.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import diffusers
import torch
from diffusers import SchedulerMixin

from sdcli.errors import UsageError, reason
from sdcli.sampling.samplers import Sampler


def build_scheduler(sampler: Sampler, scheduler_config: Mapping[str, Any]) -> SchedulerMixin:
    """The sampler's scheduler, from the model's own scheduler config (betas, prediction_type) plus its settings."""
    try:
        return getattr(diffusers, sampler.scheduler).from_config(scheduler_config, **sampler.settings)
    except (ValueError, NotImplementedError) as error:
        raise UsageError(
            f"sampler {sampler.name} cannot run with this model's scheduler config ({reason(error)}); "
            "choose another --sampler"
        ) from None


class Schedule:
    """One sampling run of `steps` steps."""

    def __init__(self, scheduler: SchedulerMixin, steps: int, device: torch.device):
        # A copy, not a rebuild: some schedulers' constructors are slow (DPM2 inverts 1000 sigmas).
        self._scheduler = copy.deepcopy(scheduler)
        self._scheduler.set_timesteps(steps, device=device)
        self.timesteps: torch.Tensor = self._scheduler.timesteps  # (T,): one model call each
        self.init_noise_sigma = self._scheduler.init_noise_sigma  # the noise's scale at the start
        self._takes_generator = "generator" in inspect.signature(self._scheduler.step).parameters

    def scale_input(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t as the model expects it at t (sigma-based samplers divide by sqrt(sigma^2 + 1))."""
        return self._scheduler.scale_model_input(x_t, t)

    def step(
        self, pred: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """x_t to the next x (B, C, h, w). Stochastic samplers draw image i's noise from generators[i]."""
        extra = {"generator": generators} if self._takes_generator else {}
        return self._scheduler.step(pred, t, x_t, **extra, return_dict=False)[0]
