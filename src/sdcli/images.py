"""Latents to pixels, exactly as diffusers decodes and post-processes them."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from PIL import Image


@torch.inference_mode()
def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) to images (B, 3, H, W) in about [-1, 1], undoing the VAE's `scaling_factor`."""
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    return vae.decode(z, return_dict=False)[0]


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images (B, 3, H, W) in [-1, 1] to 8-bit RGB, rounded like diffusers' VaeImageProcessor.postprocess."""
    pixels = (images * 0.5 + 0.5).clamp(0, 1)  # (B, 3, H, W) in [0, 1]
    arrays = pixels.cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, 3)
    return [Image.fromarray(a) for a in (arrays * 255).round().astype("uint8")]
