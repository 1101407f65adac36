"""A model folder to components on a device: U-Net, VAE, CLIP text encoder and tokenizer, and the scheduler config.

Components load with diffusers' and transformers' own classes, from safetensors weights only (no pickles).
Everything the loop needs to know about the model is read from its configs here, never from constants.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from sdcli.errors import Failure, reason
from sdcli.geometry import latent_scale, native_size
from sdcli.references import ModelFolder


@dataclass
class Model:
    """A loaded Stable Diffusion model, ready for inference on one device."""

    reference: str  # what loads it again (see ModelFolder)
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL  # in fp32 when the weights are fp16 and its config asks for `force_upcast`
    scheduler_config: Mapping[str, Any]  # the model's own: betas, timestep spacing, prediction_type
    device: torch.device
    dtype: torch.dtype  # of the U-Net and text encoder, and so of the latents

    @property
    def latent_scale(self) -> int:
        return latent_scale(self.vae.config)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def native_size(self) -> tuple[int, int]:
        return native_size(self.unet.config, self.vae.config)


def _load(what: str, model: ModelFolder, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except Exception as error:  # noqa: BLE001 - a broken or partial model folder, in any of many ways
        raise Failure(
            f"could not load the {what} of model {model.reference} ({reason(error)}); "
            "is it a complete Stable Diffusion model in diffusers format with safetensors weights?"
        ) from None


def load_model(model: ModelFolder, device: torch.device, dtype: torch.dtype) -> Model:
    """Load the five components of `model` onto `device`."""
    folder = model.folder
    tokenizer = _load("tokenizer", model, lambda: CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"))
    text_encoder = _load(
        "text encoder",
        model,
        lambda: CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype, use_safetensors=True),
    )
    unet = _load(
        "U-Net",
        model,
        lambda: UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, use_safetensors=True),
    )
    vae_config = _load("VAE config", model, lambda: AutoencoderKL.load_config(folder, subfolder="vae"))
    vae_dtype = torch.float32 if dtype == torch.float16 and vae_config.get("force_upcast", False) else dtype
    vae = _load(
        "VAE",
        model,
        lambda: AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=vae_dtype, use_safetensors=True),
    )
    # Through the model's own scheduler class, so its defaults fill the config as in diffusers' pipelines.
    scheduler_class = json.loads((folder / "model_index.json").read_text())["scheduler"][1]
    scheduler_config = _load(
        "scheduler",
        model,
        lambda: getattr(diffusers, scheduler_class).from_pretrained(folder, subfolder="scheduler").config,
    )
    for module in (text_encoder, unet, vae):
        module.to(device).eval().requires_grad_(False)
    return Model(model.reference, tokenizer, text_encoder, unet, vae, scheduler_config, device, dtype)
