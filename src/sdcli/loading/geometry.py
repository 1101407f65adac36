"""A model's pixel geometry, read from its U-Net and VAE configs (plain mappings: loaded configs or JSON files)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdcli.errors import UsageError


def latent_scale(vae_config: Mapping[str, Any]) -> int:
    """Pixels per latent along each side: 2 ** (VAE blocks - 1), 8 for SD, 2 for a VAE with 2 blocks."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def native_size(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) in pixels that the U-Net was built for: its sample size times the latent scale."""
    size = unet_config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    scale = latent_scale(vae_config)
    return width * scale, height * scale


def check_size(width: int, height: int, scale: int) -> None:
    """A usage error unless both sides are whole multiples of the latent scale."""
    for name, value in (("width", width), ("height", height)):
        if value % scale:
            lower = max(scale, value // scale * scale)
            raise UsageError(
                f"--{name} {value} is not a multiple of {scale}, this model's latent scale; "
                f"use --{name} {lower} or {lower + scale}"
            )
