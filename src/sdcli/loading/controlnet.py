"""A ControlNet (Zhang et al. 2023) beside the model: a diffusers `ControlNetModel` folder (config.json and
safetensors weights), checked against the model's U-Net and loaded once per run onto its device and dtype.

A ControlNet is a trained copy of its base model's encoder: its residuals are added to the U-Net's skip connections
and middle block, so it must have the U-Net's cross-attention width (the text encoder's: 768 for SD 1.x, 1024 for
2.x, 2048 for XL) and its down blocks' channels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from sdcli.errors import Failure, UsageError, reason

OPTION = "--control-net"
_KIND = "a diffusers ControlNet folder (config.json with _class_name ControlNetModel, safetensors weights)"


def check_controlnet_folder(reference: str) -> Path:
    """The folder `reference` names, a usage error unless it holds a diffusers ControlNet's config."""
    path = Path(reference).expanduser().resolve()
    if path.is_file():
        raise UsageError(f"{OPTION} {reference} is a file; pass {_KIND}")
    if not path.is_dir():
        raise UsageError(f"{OPTION} {reference} does not exist; pass {_KIND}")
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{OPTION} {reference} has no readable config.json; pass {_KIND}") from None
    kind = config.get("_class_name") if isinstance(config, dict) else None
    if kind != "ControlNetModel":
        what = kind or "model of no known class"
        raise UsageError(f"{OPTION} {reference} holds a {what}, not a ControlNet; pass {_KIND}")
    return path


def check_fits(controlnet: ControlNetModel, unet: UNet2DConditionModel, reference: str) -> None:
    """A usage error unless the ControlNet's residuals fit the U-Net: the same cross-attention width (model
    family), the same down blocks' channels and layers, the same extra embedding (SDXL's)."""
    mine, theirs = controlnet.config, unet.config
    for key, what in (
        ("cross_attention_dim", "cross-attention width"),
        ("block_out_channels", "block channels"),
        ("layers_per_block", "layers per block"),
        ("addition_embed_type", "extra embedding"),
    ):
        if mine.get(key) != theirs.get(key):
            raise UsageError(
                f"{OPTION} {reference} is a ControlNet for another model family (its {what} {mine.get(key)!r}, the "
                f"model's {theirs.get(key)!r}); pass a ControlNet trained for this model"
            )


def load_controlnet(
    reference: str, unet: UNet2DConditionModel, device: torch.device, dtype: torch.dtype
) -> ControlNetModel:
    """The ControlNet folder `reference` (checked), fitting `unet`, on `device` in `dtype`, ready for inference."""
    path = check_controlnet_folder(reference)
    try:
        controlnet = ControlNetModel.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
    except Exception as error:  # noqa: BLE001 - a broken or partial folder, in any of many ways
        raise Failure(f"could not load the ControlNet {reference} ({reason(error)}); is it {_KIND}?") from None
    check_fits(controlnet, unet, reference)
    return controlnet.eval().requires_grad_(False).to(device)
