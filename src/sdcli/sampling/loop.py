"""The hand-written denoising loop, and the diffusers scheduler it steps with.

The loop knows nothing of prompts or U-Nets: it takes a `predict(x, t)` function (the guided U-Net, or any toy
denoiser in the tests) and a `Schedule`. Randomness is passed in: image i of a batch draws its initial noise and
any per-step noise from its own CPU generator, so a batch gives exactly the images its members give alone.

diffusers' schedulers are stateful: `set_timesteps` must come first (it also fixes `init_noise_sigma` for the
sigma-based samplers), `scale_model_input` must precede each model call, and `step` must be called once per entry
of `timesteps`, in order (multistep solvers remember earlier predictions; Heun and DPM2 alternate two half-steps,
so their `timesteps` repeat). `Schedule` keeps that coupling in one place, starting from a fresh copy of the
scheduler, so batches share no state.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import SchedulerMixin, UNet2DConditionModel

from sdcli.errors import UsageError, reason
from sdcli.sampling.cfgpp import CFG_PP_SCHEDULERS, GuidedPrediction
from sdcli.sampling.samplers import SCHEDULES, Sampler, resolve_schedule
from sdcli.text.conditioning import Conditioning

# (x_t scaled for the model (B, C, h, w), t) -> the model's prediction, eps or v (B, C, h, w); for a CFG++ sampler's
# step, the guided and the unconditional prediction (a GuidedPrediction).
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | GuidedPrediction]
# A conditional denoiser: (x (B, C, h, w), t (scalar), conditioning of B images) -> prediction (B, C, h, w).
Denoiser = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
# (timesteps done, timesteps in all) after each step.
StepCallback = Callable[[int, int], None]
# (i, x after step i (B, C, h, w)) -> the x the loop goes on with (B, C, h, w): a change made between steps.
AfterStep = Callable[[int, torch.Tensor], torch.Tensor]


def build_scheduler(
    sampler: Sampler, scheduler_config: Mapping[str, Any], schedule: str | None = None
) -> SchedulerMixin:
    """The sampler's scheduler (a CFG++ sampler's: sdcli's step on it), from the model's own scheduler config
    (betas, prediction_type) plus its settings, plus the config flags of `schedule` (None: the sampler's own)."""
    scheduler_class = CFG_PP_SCHEDULERS[sampler.scheduler] if sampler.cfg_pp else getattr(diffusers, sampler.scheduler)
    flags = resolve_schedule(sampler, schedule).settings
    takes = inspect.signature(scheduler_class.__init__).parameters
    if not flags.keys() <= takes.keys():
        works = [s.name for s in SCHEDULES if s.settings.keys() <= takes.keys()]
        raise UsageError(
            f"--sampler {sampler.name} cannot run --schedule {schedule} ({sampler.scheduler} has no "
            f"{', '.join(sorted(flags.keys() - takes.keys()))}); with it use --schedule {' or '.join(works)}"
        )
    try:
        return scheduler_class.from_config(scheduler_config, **{**sampler.settings, **flags})
    except (ValueError, NotImplementedError) as error:
        raise UsageError(
            f"sampler {sampler.name} cannot run with this model's scheduler config ({reason(error)}); "
            "choose another --sampler"
        ) from None


class Schedule:
    """One sampling run of `steps` steps, from the first (pure noise) or, for img2img, from step `first`."""

    def __init__(self, scheduler: SchedulerMixin, steps: int, device: torch.device, first: int = 0):
        # A copy, not a rebuild: some schedulers' constructors are slow (DPM2 inverts 1000 sigmas).
        self._scheduler = copy.deepcopy(scheduler)
        self._scheduler.set_timesteps(steps, device=device)
        begin = first * self._scheduler.order  # Heun and DPM2 make two calls a step
        if begin and hasattr(self._scheduler, "set_begin_index"):
            self._scheduler.set_begin_index(begin)
        self.timesteps: torch.Tensor = self._scheduler.timesteps[begin:]  # (T,): one model call each
        self.init_noise_sigma = self._scheduler.init_noise_sigma  # the noise's scale at the start
        self._takes_generator = "generator" in inspect.signature(self._scheduler.step).parameters

    def start_from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """x_T (B, C, h, w) from standard normal noise: scaled to the schedule's first noise level."""
        return noise * self.init_noise_sigma

    def start_from(self, x_0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t (B, C, h, w) at the schedule's first timestep from clean latents x_0: q(x_t | x_0) with `noise`."""
        return self.noised(x_0, noise, 0)

    def noised(self, x_0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """q(x_t | x_0) with `noise` at the schedule's i-th timestep t_i (B, C, h, w). Once stepping, a truncated
        schedule's sigma samplers find t_i's noise level by their step index: call it after step i - 1 (as diffusers'
        inpainting does)."""
        return self._scheduler.add_noise(x_0, noise, self.timesteps[i : i + 1].repeat(x_0.shape[0]))

    def scale_input(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t as the model expects it at t (sigma-based samplers divide by sqrt(sigma^2 + 1))."""
        return self._scheduler.scale_model_input(x_t, t)

    def step(
        self,
        pred: torch.Tensor | GuidedPrediction,
        t: torch.Tensor,
        x_t: torch.Tensor,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        """x_t to the next x (B, C, h, w) by the predictor's output. Stochastic samplers draw image i's noise from
        generators[i]."""
        extra = {"generator": generators} if self._takes_generator else {}
        return self._scheduler.step(pred, t, x_t, **extra, return_dict=False)[0]


def sigma_of_timestep(t: torch.Tensor | float, alphas_cumprod: torch.Tensor) -> float:
    """The noise level sigma = sqrt((1 - alphabar_t) / alphabar_t) of timestep t, interpolated in log sigma for a
    fractional t (as diffusers' sigma-based schedulers map sigmas to timesteps)."""
    alphas = alphas_cumprod.double().cpu().numpy()  # (T_train,)
    log_sigmas = 0.5 * np.log((1 - alphas) / alphas)
    return float(np.exp(np.interp(float(t), np.arange(len(alphas)), log_sigmas)))


def unet_denoiser(unet: UNet2DConditionModel) -> Denoiser:
    """A diffusers U-Net as a plain (x, t, conditioning) -> prediction function; further keywords go to the U-Net
    (a ControlNet's residuals, `sdcli.modes.controlnet`)."""

    def denoiser(x: torch.Tensor, t: torch.Tensor, cond: Conditioning, **residuals: Any) -> torch.Tensor:
        return unet(
            x,
            t,
            encoder_hidden_states=cond.context,
            added_cond_kwargs=cond.added_cond_kwargs,
            return_dict=False,
            **residuals,
        )[0]

    return denoiser


def with_channels(denoiser: Denoiser, extra: torch.Tensor) -> Denoiser:
    """`denoiser` with `extra` (B, E, h, w) appended to its input's channels, after the sampler's input scaling:
    x (k B, C, h, w) of k guidance branches batched into one call, branch by branch, reaches the model as
    (k B, C + E, h, w)."""

    def denoiser_with_channels(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        branches = x.shape[0] // extra.shape[0]  # k
        return denoiser(torch.cat([x, extra.repeat(branches, 1, 1, 1)], dim=1), t, cond)  # (k B, C + E, h, w) in

    return denoiser_with_channels


def initial_noise(
    generators: list[torch.Generator], shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(B, C, h, w) standard normal noise, row i drawn on the CPU from generators[i] (as diffusers' randn_tensor)."""
    rows = [torch.randn((1, *shape), generator=g, dtype=dtype) for g in generators]  # B x (1, C, h, w)
    return torch.cat(rows).to(device)


@torch.inference_mode()
def denoise(
    predict: Predictor,
    schedule: Schedule,
    x_start: torch.Tensor,
    generators: list[torch.Generator],
    on_step: StepCallback | None = None,
    after_step: AfterStep | None = None,
) -> torch.Tensor:
    """Run the sampler from `x_start` (B, C, h, w), the latents at the schedule's first timestep
    (`Schedule.start_from_noise`, `Schedule.start_from`), to clean latents x_0 (B, C, h, w); `after_step(i, x)`,
    if given, changes x after each step i (inpainting's blend)."""
    x_t = x_start
    total = len(schedule.timesteps)
    for i, t in enumerate(schedule.timesteps):
        pred = predict(schedule.scale_input(x_t, t), t)
        x_t = schedule.step(pred, t, x_t, generators)
        if after_step is not None:
            x_t = after_step(i, x_t)
        if on_step is not None:
            on_step(i + 1, total)
    return x_t
