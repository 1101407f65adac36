"""The hand-written denoising loop: noise in, latents out, one guided model call per timestep.

The loop knows nothing of prompts or U-Nets: it takes a `predict(x, t)` function (the guided U-Net, or any toy
denoiser in the tests) and a `Schedule`. Randomness is passed in: image i of a batch draws its initial noise and
any per-step noise from its own CPU generator, so a batch gives exactly the images its members give alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel

from sdcli.text.conditioning import Conditioning
from sdcli.guidance.cfg import Denoiser
from sdcli.sampling.schedule import Schedule

# (x_t scaled for the model (B, C, h, w), t) -> the model's prediction, eps or v (B, C, h, w).
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (timesteps done, timesteps in all) after each step.
StepCallback = Callable[[int, int], None]


def unet_denoiser(unet: UNet2DConditionModel) -> Denoiser:
    """A diffusers U-Net as a plain (x, t, conditioning) -> prediction function."""

    def denoiser(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return unet(
            x, t, encoder_hidden_states=cond.context, added_cond_kwargs=cond.added_cond_kwargs, return_dict=False
        )[0]

    return denoiser


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
    noise: torch.Tensor,
    generators: list[torch.Generator],
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Run the sampler from `noise` (B, C, h, w) to clean latents x_0 (B, C, h, w)."""
    x_t = noise * schedule.init_noise_sigma
    total = len(schedule.timesteps)
    for i, t in enumerate(schedule.timesteps):
        pred = predict(schedule.scale_input(x_t, t), t)
        x_t = schedule.step(pred, t, x_t, generators)
        if on_step is not None:
            on_step(i + 1, total)
    return x_t
