"""ControlNet in sdcli's own loop, as diffusers' `StableDiffusionControlNetPipeline` runs it (guess mode off):

- Control image: RGB, resized to the output size with Lanczos and kept in [0, 1] (the pipeline's
  `control_image_processor`, a `VaeImageProcessor(do_convert_rgb=True, do_normalize=False)`), the same image for
  every row of the batched call: every image and every guidance branch.
- Each model call: the ControlNet sees the U-Net's input (x_t after the sampler's input scaling, C channels: an
  inpainting U-Net's mask channels are not its), the timestep and each branch's own text context, and its residuals,
  times --control-scale, are added to the U-Net's skip connections and middle block in the same call
  (`down_block_additional_residuals`, `mid_block_additional_residual`). A wrapper of the denoiser, so CFG, APG, PAG
  and separate negatives all get it on each of their branches.
- Steps: call i of the N the schedule makes runs the ControlNet iff i/N >= start and (i+1)/N <= end (the pipeline's
  `controlnet_keep`); the others run the U-Net alone (the pipeline adds residuals times 0, the same sums).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ControlNetModel
from diffusers.image_processor import VaeImageProcessor

from sdcli.loading.components import Model
from sdcli.modes.img2img import check_recorded, read_picture
from sdcli.recipe import Recipe
from sdcli.sampling.loop import Denoiser
from sdcli.text.conditioning import Conditioning

IMAGE_OPTION = "--control-image"


def check_control(model: Model, recipe: Recipe) -> None:
    """Step 1 for a ControlNet: its image readable and, in a replay, the file recorded; the ControlNet loaded."""
    if recipe.control_image is None:
        return
    check_recorded(Path(recipe.control_image), recipe.control_image_sha256, IMAGE_OPTION)
    if model.controlnet is None:  # a model loaded without the recipe's --control-net (a caller's mistake)
        raise ValueError("the recipe asks for a ControlNet the model was loaded without; load it with load_for")


def keeps(n: int, start: float, end: float) -> list[bool]:
    """Whether each of n calls runs the ControlNet: diffusers' `controlnet_keep`, 1 - (i/n < start or (i+1)/n > end)."""
    return [not (i / n < start or (i + 1) / n > end) for i in range(n)]


def control_pixels(path: Path, width: int, height: int) -> torch.Tensor:
    """The control image at `path` as the ControlNet takes it: RGB, Lanczos-resized to width x height, in [0, 1]:
    (1, 3, H, W) float32."""
    processor = VaeImageProcessor(do_convert_rgb=True, do_normalize=False)
    return processor.preprocess(read_picture(path, IMAGE_OPTION).image, height=height, width=width).float()


@dataclass(frozen=True)
class Control:
    """One batch's ControlNet: the network, its image, its scale and the calls it runs at."""

    controlnet: ControlNetModel
    image: torch.Tensor  # (1, 3, H, W) in [0, 1], on the model's device and dtype
    scale: float
    start: float
    end: float

    def denoiser(self, unet: Denoiser, timesteps: torch.Tensor, channels: int) -> Denoiser:
        """`unet` (a denoiser that takes the U-Net's residual keywords) with the ControlNet's residuals added at
        the calls it runs at: call i is the schedule's timesteps[i] (one model call per entry, in order)."""
        runs = keeps(len(timesteps), self.start, self.end)
        calls = iter(range(len(timesteps)))

        def controlled(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
            i = next(calls)
            if timesteps[i] != t:
                raise RuntimeError(f"the ControlNet's call {i} is at t={t}, not its schedule's {timesteps[i]}")
            if not runs[i]:
                return unet(x, t, cond)
            down, mid = self.controlnet(
                x[:, :channels],  # (k B, C, h, w): an inpainting U-Net's extra channels are not the ControlNet's
                t,
                encoder_hidden_states=cond.context,
                controlnet_cond=self.image.repeat(x.shape[0], 1, 1, 1),  # (k B, 3, H, W): every row the same
                conditioning_scale=self.scale,
                added_cond_kwargs=cond.added_cond_kwargs,
                return_dict=False,
            )
            return unet(x, t, cond, down_block_additional_residuals=down, mid_block_additional_residual=mid)

        return controlled


def prepare_control(model: Model, recipe: Recipe, width: int, height: int) -> Control | None:
    """The recipe's ControlNet for images of width x height, None without one."""
    if recipe.control_image is None or model.controlnet is None:
        return None
    pixels = control_pixels(Path(recipe.control_image), width, height)
    image = pixels.to(model.device, model.controlnet.dtype)
    return Control(model.controlnet, image, recipe.control_scale, recipe.control_start, recipe.control_end)
