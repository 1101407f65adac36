"""ControlNets in sdcli's own loop, as diffusers' `StableDiffusionControlNetPipeline` runs them (guess mode off; several
as its `MultiControlNetModel`):

- Control images: RGB, resized to the output size with Lanczos and kept in [0, 1] (the pipeline's
  `control_image_processor`, a `VaeImageProcessor(do_convert_rgb=True, do_normalize=False)`), each the same for
  every row of the batched call: every image and every guidance branch.
- Each model call: each ControlNet sees the U-Net's input (x_t after the sampler's input scaling, C channels: an
  inpainting U-Net's mask channels are not its), the timestep, each branch's own text context and its own image; its
  residuals, times its scale, are summed over the ControlNets (net 0's first, as `MultiControlNetModel` sums them) and
  added to the U-Net's skip connections and middle block in the same call (`down_block_additional_residuals`,
  `mid_block_additional_residual`). A wrapper of the denoiser, so CFG, APG, PAG and separate negatives all get them
  on each of their branches.
- Steps: call i of the N the schedule makes runs a ControlNet iff i/N >= its start and (i+1)/N <= its end (the
  pipeline's `controlnet_keep`); one that does not run adds nothing (the pipeline adds its residuals times 0, the
  same sums), and where none runs the U-Net runs alone.
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
    """Step 1 for ControlNets: each image readable and, in a replay, the file recorded; the ControlNets loaded."""
    recorded = recipe.control_images_sha256
    if len(recorded) != len(recipe.control_images):  # not a replay (or not the record's images)
        recorded = (None,) * len(recipe.control_images)
    for image, sha256 in zip(recipe.control_images, recorded, strict=True):
        check_recorded(Path(image), sha256, IMAGE_OPTION)
    if tuple(c.reference for c in model.controlnets) != recipe.control_nets:  # a caller's mistake
        raise ValueError("the recipe asks for ControlNets the model was loaded without; load it with load_for")


def keeps(n: int, start: float, end: float) -> list[bool]:
    """Whether each of n calls runs the ControlNet: diffusers' `controlnet_keep`, 1 - (i/n < start or (i+1)/n > end)."""
    return [not (i / n < start or (i + 1) / n > end) for i in range(n)]


def control_pixels(path: Path, width: int, height: int) -> torch.Tensor:
    """The control image at `path` as the ControlNet takes it: RGB, Lanczos-resized to width x height, in [0, 1]:
    (1, 3, H, W) float32."""
    processor = VaeImageProcessor(do_convert_rgb=True, do_normalize=False)
    return processor.preprocess(read_picture(path, IMAGE_OPTION).image, height=height, width=width).float()


@dataclass(frozen=True)
class Unit:
    """One ControlNet of a batch: the network, its image, its scale and the calls it runs at."""

    controlnet: ControlNetModel
    image: torch.Tensor  # (1, 3, H, W) in [0, 1], on the model's device and dtype
    scale: float
    start: float
    end: float

    def residuals(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning):
        """Its residuals for the U-Net's input `x` (k B, C, h, w), times its scale: (down blocks' list, mid block)."""
        return self.controlnet(
            x,
            t,
            encoder_hidden_states=cond.context,
            controlnet_cond=self.image.repeat(x.shape[0], 1, 1, 1),  # (k B, 3, H, W): every row the same
            conditioning_scale=self.scale,
            added_cond_kwargs=cond.added_cond_kwargs,
            return_dict=False,
        )


@dataclass(frozen=True)
class Control:
    """One batch's ControlNets, in the order given."""

    units: tuple[Unit, ...]

    def denoiser(self, unet: Denoiser, timesteps: torch.Tensor, channels: int) -> Denoiser:
        """`unet` (a denoiser that takes the U-Net's residual keywords) with the ControlNets' summed residuals added
        at the calls they run at: call i is the schedule's timesteps[i] (one model call per entry, in order)."""
        runs = [keeps(len(timesteps), unit.start, unit.end) for unit in self.units]
        calls = iter(range(len(timesteps)))

        def controlled(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
            i = next(calls)
            if timesteps[i] != t:
                raise RuntimeError(f"the ControlNets' call {i} is at t={t}, not their schedule's {timesteps[i]}")
            active = [unit for unit, run in zip(self.units, runs, strict=True) if run[i]]
            if not active:
                return unet(x, t, cond)
            latents = x[:, :channels]  # (k B, C, h, w): an inpainting U-Net's extra channels are not a ControlNet's
            down, mid = active[0].residuals(latents, t, cond)
            for unit in active[1:]:  # summed as MultiControlNetModel sums them
                more_down, more_mid = unit.residuals(latents, t, cond)
                down = [a + b for a, b in zip(down, more_down, strict=True)]
                mid = mid + more_mid
            return unet(x, t, cond, down_block_additional_residuals=down, mid_block_additional_residual=mid)

        return controlled


def prepare_control(model: Model, recipe: Recipe, width: int, height: int) -> Control | None:
    """The recipe's ControlNets for images of width x height, None without any."""
    if not recipe.control_nets:
        return None
    units = []
    for loaded, unit in zip(model.controlnets, recipe.controls, strict=True):
        pixels = control_pixels(Path(unit.image), width, height)
        image = pixels.to(model.device, loaded.network.dtype)
        units.append(Unit(loaded.network, image, unit.scale, unit.start, unit.end))
    return Control(tuple(units))
