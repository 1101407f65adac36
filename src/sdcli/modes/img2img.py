"""Images in: an init image as a file (checked, hashed, read once), as the VAE's latents, and as the start of the loop.

img2img (the forward process made visible): the image is encoded by the VAE, noised along q(x_t | x_0) to the first
timestep of the schedule truncated by the strength S, and denoised from there, as diffusers'
`StableDiffusionImg2ImgPipeline` does:

- steps: `init = min(int(N * S), N)` of the N (a float product, floored); the loop starts at index
  `(N - init) * order` of the scheduler's timesteps (Heun and DPM2 make two calls a step), `set_begin_index` alike
- start: x_t = `scheduler.add_noise(x_0, noise, t_first)` (x_0 + sigma noise for the sigma samplers: no
  `init_noise_sigma` factor)
- draws from each image's own generator, each latent-shaped: the VAE posterior's sample of the init image
  (x_0 = scaling_factor (mean + std eps)), then the noise, then the sampler's own draws
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, UnidentifiedImageError

from sdcli.errors import UsageError, reason
from sdcli.loading.checkpoints import check_sha256, sha256_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Picture:
    """An image file, read and checked."""

    path: Path
    image: Image.Image  # RGB
    sha256: str


def read_picture(path: Path, option: str = "--init-image") -> Picture:
    """The image at `path` in RGB, fully decoded (a truncated file is an error here, not halfway through a run);
    read once while the file stays as it is."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UsageError(f"{option} {path} {what}; give an image file (PNG, JPEG, WebP...)")
    stat = path.stat()
    if stat.st_size == 0:
        raise UsageError(f"{option} {path} is empty (0 bytes); give an image file")
    return _decode(path, option, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _decode(path: Path, option: str, mtime_ns: int, size: int) -> Picture:
    """`read_picture`'s work, remembered per file version (its modification time and size)."""
    try:
        with warnings.catch_warnings(), Image.open(path) as opened:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = opened.convert("RGB")  # decodes every pixel: a truncated file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError, Warning) as error:
        raise UsageError(
            f"{option} {path} is not a readable image ({reason(error)}); give a PNG, JPEG or WebP"
        ) from None
    return Picture(path, image, sha256_of(path))


def image_size(path: Path, scale: int) -> tuple[int, int]:
    """(width, height) an init image makes when no size is given: its own, rounded down to the latent scale (as
    diffusers' image processor does), with a warning when that changes it."""
    picture = read_picture(path)
    width, height = (side - side % scale for side in picture.image.size)
    if min(width, height) < scale:
        raise UsageError(f"--init-image {path} is smaller than {scale} pixels a side; give a larger image")
    if (width, height) != picture.image.size:
        log.warning(
            "%s is %dx%d: made at %dx%d, the nearest multiple of the latent scale %d below",
            path, *picture.image.size, width, height, scale,
        )  # fmt: skip
    return width, height


def schedule_steps(steps: int, strength: float) -> int:
    """The steps img2img runs of `steps` at `strength`: diffusers' `min(int(steps * strength), steps)`."""
    return min(int(steps * strength), steps)


def check_runs_a_step(steps: int, strength: float, strength_flag: str, steps_flag: str) -> None:
    """A usage error unless a pass of `steps` at `strength` runs at least one step."""
    if schedule_steps(steps, strength) < 1:
        raise UsageError(
            f"{strength_flag} {strength:g} of {steps_flag} {steps} runs no step (int(steps x strength) is 0); raise "
            f"{strength_flag} or {steps_flag}"
        )


def check_recorded(path: Path, recorded_sha256: str | None, option: str) -> None:
    """The image at `path` is readable and, where a replay recorded its sha256, the same file."""
    check_sha256(path, option, recorded_sha256, read_picture(path, option).sha256)


def vae_pixels(vae: AutoencoderKL, image: Image.Image, height: int, width: int) -> torch.Tensor:
    """An image resized to height x width (Lanczos, as diffusers' `VaeImageProcessor`), in [-1, 1]: (1, 3, H, W)."""
    processor = VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1))
    return processor.preprocess(image, height=height, width=width)


@torch.inference_mode()
def posterior_of(vae: AutoencoderKL, pixels: torch.Tensor):
    """Pixels (1, 3, H, W) in [-1, 1] through the VAE's encoder in its own dtype: its posterior (a diagonal
    Gaussian over latents (1, C, h, w)), to sample per image."""
    return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist


def encode_pixels(vae: AutoencoderKL, image: Image.Image, height: int, width: int):
    """An image resized to height x width through the VAE's encoder: its posterior (`vae_pixels`, `posterior_of`)."""
    return posterior_of(vae, vae_pixels(vae, image, height, width))


def encode_image(vae: AutoencoderKL, path: Path, height: int, width: int):
    """The init image at `path` through the VAE's encoder (see `encode_pixels`)."""
    return encode_pixels(vae, read_picture(path).image, height, width)


def sample_x0(posterior, generators: list[torch.Generator], scaling_factor: float) -> torch.Tensor:
    """x_0 (B, C, h, w): image i's posterior sample drawn from generators[i], times the VAE's scaling factor, as
    diffusers' `retrieve_latents(..., sample_mode="sample")` per image."""
    return scaling_factor * torch.cat([posterior.sample(generator=g) for g in generators])
