"""Inpainting: the init image repainted where the mask is white and kept where it is black, in the same loop, as
diffusers' `StableDiffusionInpaintPipeline` does, with AUTOMATIC1111's mask blur and overlay around it.

- Mask: read at its own size as grey, blurred by --mask-blur (Pillow's Gaussian, as AUTOMATIC1111), then prepared by
  diffusers' mask processor: resized to the output size (Lanczos), / 255, binarised (>= 0.5 is repaint). The masked
  image is the init image times (mask < 0.5), its repaint area 0 (grey in [-1, 1]); the latent mask m takes the
  top-left pixel of each latent cell (nearest).
- An inpainting U-Net (9 input channels: 2C + 1) takes [x_t scaled for the model, m, the masked image's latents] at
  every call, every guidance branch in the one batched call (`with_channels`).
- Any other U-Net (C channels) denoises the whole image; after each step i the kept area is put back at the next
  noise level, x = (1 - m) q(x_{t_i+1} | x_0) + m x with the noise of the start, and after the last step as x_0.
- Draws from each image's generator, each latent-shaped: the init image's posterior sample (skipped only for an
  inpainting U-Net at strength exactly 1.0), the noise, the masked image's posterior sample (drawn even for a
  C-channel U-Net, which never uses it), then the sampler's. At strength exactly 1.0 the start is pure noise times
  `init_noise_sigma`, where img2img's is q(x_T | x_0).
- Overlay (AUTOMATIC1111's, unless --no-mask-overlay): after decoding, the init image at the output size composited
  over the picture through the blurred mask doubled and clipped (AUTOMATIC1111's `mask_for_overlay`): where the
  blurred mask is 0 the pixels are the input's exactly, where it is at least half they are the decoded ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageFilter

from sdcli.errors import UsageError
from sdcli.loading.components import Model
from sdcli.modes.img2img import check_recorded, posterior_of, read_picture, sample_x0, vae_pixels
from sdcli.recipe import Recipe
from sdcli.sampling.loop import AfterStep, Denoiser, Schedule, initial_noise, with_channels

log = logging.getLogger(__name__)

MASK_OPTION = "--mask"


def takes_mask(model: Model) -> bool:
    """Whether the model's U-Net is an inpainting one: latents, mask and masked image's latents as input channels."""
    return model.unet.config.in_channels == 2 * model.latent_channels + 1


def check_mask(model: Model, recipe: Recipe) -> None:
    """Step 1 for a mask: readable, the file a replay recorded, a warning where its aspect ratio is not the init
    image's; an inpainting U-Net given none is a usage error."""
    if recipe.mask is None:
        if takes_mask(model):
            raise UsageError(
                f"{model.reference} is an inpainting model (its U-Net takes a mask and a masked image), which needs "
                f"a mask; give --init-image IMAGE and {MASK_OPTION} MASK, or another --model"
            )
        return
    path = Path(recipe.mask)
    check_recorded(path, recipe.mask_sha256, MASK_OPTION)
    mask_width, mask_height = read_picture(path, MASK_OPTION).image.size
    width, height = read_picture(Path(recipe.init_image)).image.size
    if round(mask_width * height / width) != mask_height:
        log.warning(
            "%s %s is %dx%d, not the aspect ratio of the init image (%dx%d): it is stretched to fit",
            MASK_OPTION, path, mask_width, mask_height, width, height,
        )  # fmt: skip


@dataclass(frozen=True)
class Mask:
    """A mask made ready for one output size, W x H."""

    repaint: torch.Tensor  # (1, 1, H, W): 1 repaint, 0 keep, as diffusers' mask processor gives it
    seam: Image.Image  # "L", W x H: the blurred mask doubled and clipped, AUTOMATIC1111's mask_for_overlay


def read_mask(path: Path, blur: int, width: int, height: int, latent_scale: int) -> Mask:
    """The mask at `path` blurred by `blur` pixels at its own size, then at width x height: binarised for the
    model, doubled for the overlay."""
    grey = read_picture(path, MASK_OPTION).image.convert("L")
    if blur > 0:
        grey = grey.filter(ImageFilter.GaussianBlur(blur))
    processor = VaeImageProcessor(  # the inpaint pipeline's mask_processor
        vae_scale_factor=latent_scale, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )
    repaint = processor.preprocess(grey, height=height, width=width)  # (1, 1, H, W)
    seam = processor.resize(grey, height, width).point(lambda level: min(2 * level, 255))
    return Mask(repaint, seam)


@dataclass(frozen=True)
class Inpainting:
    """One batch's inpainting, as the denoise and decode steps use it."""

    m: torch.Tensor  # (1, 1, h, w): the latent mask, 1 repaint
    masked_latents: torch.Tensor  # (B, C, h, w): the masked image's posterior samples, scaled
    x_0: torch.Tensor | None  # (B, C, h, w): the init image's (None: an inpainting U-Net from pure noise)
    noise: torch.Tensor  # (B, C, h, w): the start's
    takes_mask: bool  # an inpainting U-Net
    kept: Image.Image | None  # the init image at the output size, pasted back through `seam` (None: no overlay)
    seam: Image.Image

    def denoiser(self, denoiser: Denoiser) -> Denoiser:
        """An inpainting U-Net's denoiser with m and the masked image's latents as its input's last 1 + C
        channels; any other's as it is."""
        if not self.takes_mask:
            return denoiser
        batch = self.masked_latents.shape[0]
        return with_channels(denoiser, torch.cat([self.m.expand(batch, -1, -1, -1), self.masked_latents], dim=1))

    def after_step(self, schedule: Schedule) -> AfterStep | None:
        """A C-channel U-Net's blend after each step i: the kept area at t_i+1, x_0 after the last step."""
        if self.takes_mask:
            return None
        last = len(schedule.timesteps) - 1

        def keep(i: int, x: torch.Tensor) -> torch.Tensor:
            known = self.x_0 if i == last else schedule.noised(self.x_0, self.noise, i + 1)  # (B, C, h, w)
            return (1 - self.m) * known + self.m * x  # (B, C, h, w)

        return keep

    def overlay(self, pictures: list[Image.Image]) -> list[Image.Image]:
        """The decoded pictures with the kept area pasted back from the init image (unless the overlay is off)."""
        if self.kept is None:
            return pictures
        return [Image.composite(picture, self.kept, self.seam) for picture in pictures]


def prepare_inpainting(
    model: Model, recipe: Recipe, schedule: Schedule, generators: list[torch.Generator], height: int, width: int
) -> tuple[torch.Tensor, Inpainting]:
    """Step 4 for a mask: x (B, C, h, w) at the schedule's first timestep, and the batch's inpainting, each image's
    generator drawing in diffusers' order (the module's docstring)."""
    vae, scale = model.vae, model.vae.config.scaling_factor
    latent_size = (height // model.latent_scale, width // model.latent_scale)  # (h, w)
    picture = read_picture(Path(recipe.init_image))
    pixels = vae_pixels(vae, picture.image, height, width)  # (1, 3, H, W) in [-1, 1]
    mask = read_mask(Path(recipe.mask), recipe.mask_blur, width, height, model.latent_scale)
    pure_noise = recipe.resolved_strength == 1.0
    conditioned = takes_mask(model)
    x_0 = None
    if not (conditioned and pure_noise):
        x_0 = sample_x0(posterior_of(vae, pixels), generators, scale).to(model.dtype)  # (B, C, h, w)
    noise = initial_noise(generators, (model.latent_channels, *latent_size), model.device, model.dtype)
    masked = pixels * (mask.repaint < 0.5)  # (1, 3, H, W): the repaint area 0
    masked_latents = sample_x0(posterior_of(vae, masked), generators, scale).to(model.dtype)  # (B, C, h, w)
    m = F.interpolate(mask.repaint, size=latent_size).to(model.device, model.dtype)  # (1, 1, h, w), nearest
    kept = (
        picture.image.resize((width, height), Image.Resampling.LANCZOS) if recipe.mask_overlay else None
    )  # as `pixels`
    x_start = schedule.start_from_noise(noise) if pure_noise else schedule.start_from(x_0, noise)  # (B, C, h, w)
    return x_start, Inpainting(m, masked_latents, x_0, noise, conditioned, kept, mask.seam)
