"""CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance").

With CFG, DDIM and Euler renoise along the guided noise prediction and leave the data manifold at high guidance
scales. CFG++ (Algorithm 1 of the paper, for DDIM) takes the denoised estimate from the guided prediction with a
scale lambda in [0, 1], x_0 = D_u + lambda (D_c - D_u), and renoises along the *unconditional* prediction. In the
sigma form of k-diffusion (ComfyUI's `sample_euler_cfg_pp` and `sample_euler_ancestral_cfg_pp`), with
D_lambda = D(x_i; sigma_i) of the guided prediction and d_u = (x_i - D_u(x_i; sigma_i)) / sigma_i:

    Euler:           x_{i+1} = D_lambda + sigma_{i+1} d_u
    Euler ancestral: x_{i+1} = D_lambda + sigma_down d_u + sigma_up z,  z ~ N(0, I)

(sigma_down, sigma_up: the ancestral split of sigma_{i+1}, as Euler ancestral's). At lambda = 1 the prediction is
the conditional one, yet the step still needs the unconditional one. Each CFG++ sampler is its diffusers scheduler
(Euler, Euler ancestral) with this `step`: the schedule (sigmas, timesteps, input scaling, img2img's noising and
`--schedule`'s flags) is diffusers' own, so only the update differs. The guided predictor hands the step both
predictions as a `GuidedPrediction` (`sdcli.guidance.cfg`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from sdcli.sampling.prediction import denoised


class GuidedPrediction(NamedTuple):
    """What the guided predictor gives a CFG++ step."""

    guided: torch.Tensor  # (B, C, h, w): CFG's prediction (eps or v) with w = lambda
    uncond: torch.Tensor  # (B, C, h, w): the unconditional prediction, for the renoising direction


# A draw of z ~ N(0, I) (B, C, h, w), image i's from its own generator, as the scheduler's step draws it.
DrawNoise = Callable[[], torch.Tensor]


class CFGPPStep:
    """`step` of a CFG++ sampler, mixed in before the diffusers scheduler whose schedule it runs on; each CFG++
    scheduler defines `renoise(x_0, d_uncond, sigma, sigma_next, draw_noise)`, its update to x_{i+1}."""

    def step(
        self,
        model_output: GuidedPrediction,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_i (B, C, h, w) to x_{i+1}, and the denoised estimate D_lambda (B, C, h, w)."""
        if not isinstance(model_output, GuidedPrediction):
            raise TypeError("a CFG++ step needs the guided and the unconditional prediction (a GuidedPrediction)")
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        x = sample.to(torch.float32)  # upcast, as diffusers' Euler steps do
        kind = self.config.prediction_type
        x_0 = denoised(model_output.guided, x, sigma, kind)  # D_lambda(x_i)
        d_uncond = (x - denoised(model_output.uncond, x, sigma, kind)) / sigma  # (x_i - D_u) / sigma_i
        like = model_output.guided

        def draw_noise() -> torch.Tensor:
            return randn_tensor(like.shape, dtype=like.dtype, device=like.device, generator=generator)

        x_next = self.renoise(x_0, d_uncond, sigma, sigma_next, draw_noise)
        self._step_index += 1
        return x_next.to(like.dtype), x_0


class EulerCFGPPScheduler(CFGPPStep, EulerDiscreteScheduler):
    """Euler with CFG++."""

    def renoise(
        self, x_0: torch.Tensor, d_uncond: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, _: DrawNoise
    ) -> torch.Tensor:
        """x_{i+1} = D_lambda + sigma_{i+1} d_u."""
        return x_0 + sigma_next * d_uncond


class EulerAncestralCFGPPScheduler(CFGPPStep, EulerAncestralDiscreteScheduler):
    """Euler ancestral with CFG++."""

    def renoise(
        self,
        x_0: torch.Tensor,
        d_uncond: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        draw_noise: DrawNoise,
    ) -> torch.Tensor:
        """x_{i+1} = D_lambda + sigma_down d_u + sigma_up z, split as Euler ancestral's (eta = 1)."""
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        return x_0 + sigma_down * d_uncond + draw_noise() * sigma_up


# The CFG++ scheduler of each diffusers scheduler a CFG++ sampler names.
CFG_PP_SCHEDULERS: dict[str, type] = {
    "EulerDiscreteScheduler": EulerCFGPPScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralCFGPPScheduler,
}
