"""The hires fix (AUTOMATIC1111's two-pass "Hires. fix"): an image made at the size asked for, upscaled by a factor,
then denoised again at the larger size as img2img, in one command with one seed.

Two upscalers, as AUTOMATIC1111 names them:
- `lanczos`: in pixel space, the decoded image resized with Pillow's Lanczos filter, then encoded by the VAE (each
  image's posterior sample drawn from its own generator, as img2img's)
- `latent`: in latent space, the latents resized bilinearly (AUTOMATIC1111's "Latent"); sharper detail needs a
  strength of about 0.5 or more, as there
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from sdcli.modes.img2img import encode_pixels, sample_x0
from sdcli.output.images import decode, to_pil


def hires_size(width: int, height: int, scale: float, latent_scale: int) -> tuple[int, int]:
    """(width, height) of the second pass: the first's times `scale`, rounded down to the latent scale."""
    return tuple(int(side * scale) // latent_scale * latent_scale for side in (width, height))  # type: ignore[return-value]


def upscale(
    vae: AutoencoderKL,
    latents: torch.Tensor,
    upscaler: str,
    width: int,
    height: int,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """The first pass's clean latents (B, C, h, w) as x_0 (B, C, h', w') of the second pass at height x width."""
    if upscaler == "latent":
        latent_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        size = (height // latent_scale, width // latent_scale)
        return F.interpolate(latents, size=size, mode="bilinear", align_corners=False)  # (B, C, h', w')
    pictures = [picture.resize((width, height), resample=3) for picture in to_pil(decode(vae, latents))]  # Lanczos
    rows = [
        sample_x0(encode_pixels(vae, picture, height, width), [generator], vae.config.scaling_factor)
        for picture, generator in zip(pictures, generators, strict=True)
    ]  # B x (1, C, h', w'): each image's posterior sample from its own generator
    return torch.cat(rows).to(latents.dtype)
