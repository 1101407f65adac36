"""ControlNets (Zhang et al. 2023) beside the model: a diffusers `ControlNetModel` folder (config.json and
safetensors weights), or one file as people share them (`control_v11p_sd15_canny.safetensors`: the original layout,
`input_blocks.*`, `zero_convs.*`, `input_hint_block.*`, with or without `control_model.`; or diffusers' keys in one
file), checked against the model's U-Net and loaded once per run onto its device and dtype.

A ControlNet is a trained copy of its base model's encoder: its residuals are added to the U-Net's skip connections
and middle block, so it must have the U-Net's cross-attention width (the text encoder's: 768 for SD 1.x, 1024 for
2.x, 2048 for XL) and its down blocks' channels. That is also where a single file's config comes from, without the
network: the model's U-Net's (diffusers' `ControlNetModel.from_unet`), with the hint encoder's channels and the
input channels read from the file's shapes, as `sdcli.loading.single_file` builds a checkpoint's components; the
tensors are renamed by diffusers' own converter (`convert_controlnet_checkpoint`) and filled in strictly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from sdcli.errors import Failure, UsageError, reason
from sdcli.loading.checkpoints import Tensors, check_adapter_file, check_sha256, read_checkpoint, sha256_of
from sdcli.loading.single_file import fill

OPTION = "--control-net"
_KIND = (
    "a diffusers ControlNet folder (config.json with _class_name ControlNetModel, safetensors weights) or a "
    "ControlNet .safetensors file"
)
_ORIGINAL_PREFIX = "control_model."  # some original-layout files keep the training wrapper's prefix
_HINT, _HINT_DIFFUSERS = "input_hint_block.", "controlnet_cond_embedding."


@dataclass(frozen=True)
class LoadedControlNet:
    reference: str  # as the recipe names it: an absolute folder or file path
    sha256: str  # a single file's, or a folder's weights file's ("" for a folder of other weights files)
    network: ControlNetModel


def check_controlnet(reference: str, allow_pickle: bool = False, recorded_sha256: str | None = None) -> str:
    """Before the model loads: `reference` is a diffusers ControlNet folder, or a file sdcli reads (a pickle only
    with --allow-pickle), that a replay recorded; its sha256 (a folder's: its `diffusion_pytorch_model.safetensors`'s,
    "" for a folder of other weights files, which diffusers checks as it loads them)."""
    path = Path(reference).expanduser().resolve()
    if path.is_file():
        return check_adapter_file(path, OPTION, "a ControlNet file", allow_pickle, recorded_sha256)
    if not path.is_dir():
        raise UsageError(f"{OPTION} {reference} does not exist; pass {_KIND}")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{OPTION} {reference} has no readable config.json; pass {_KIND}") from None
    kind = config.get("_class_name") if isinstance(config, dict) else None
    if kind != "ControlNetModel":
        what = kind or "model of no known class"
        raise UsageError(f"{OPTION} {reference} holds a {what}, not a ControlNet; pass {_KIND}")
    weights = path / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        return ""
    sha256 = sha256_of(weights)
    check_sha256(weights, OPTION, recorded_sha256, sha256)
    return sha256


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
        if _value(mine.get(key)) != _value(theirs.get(key)):
            raise UsageError(
                f"{OPTION} {reference} is a ControlNet for another model family (its {what} {mine.get(key)!r}, the "
                f"model's {theirs.get(key)!r}); pass a ControlNet trained for this model"
            )


def _value(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value  # a config read back holds lists


def _hint_convs(tensors: Tensors) -> tuple[dict[int, torch.Tensor], bool]:
    """The hint encoder's convolution weights by their index in the file, and whether the file is in diffusers'
    layout (conv_in, blocks.k, conv_out) rather than the original (input_hint_block.0, 2, ..., 14)."""
    if f"{_HINT_DIFFUSERS}conv_in.weight" in tensors:
        blocks = {
            int(key.split(".")[2]) + 1: tensor
            for key, tensor in tensors.items()
            if key.startswith(f"{_HINT_DIFFUSERS}blocks.") and key.endswith(".weight")
        }
        return {0: tensors[f"{_HINT_DIFFUSERS}conv_in.weight"], **blocks}, True
    convs = {
        int(key.split(".")[1]): tensor
        for key, tensor in tensors.items()
        if key.startswith(_HINT) and key.endswith(".weight") and tensor.ndim == 4
    }
    return {i: convs[i] for i in sorted(convs)[:-1]}, False  # the last is conv_out, to the model's channels


def _config(tensors: Tensors, unet: UNet2DConditionModel, source: str) -> dict:
    """A ControlNet config for `unet`'s family with the file's hint encoder and input channels."""
    hint, diffusers_layout = _hint_convs(tensors)
    if not hint:
        raise UsageError(f"{OPTION} {source} has no hint encoder ({_HINT}*); pass {_KIND}")
    convs = [hint[i] for i in sorted(hint)]
    # conv_in, then pairs (c_j -> c_j, c_j -> c_j+1): the channels are conv_in's and each pair's second's outputs.
    channels = (convs[0].shape[0], *(conv.shape[0] for conv in convs[2::2]))
    conv_in = tensors["conv_in.weight" if diffusers_layout else "input_blocks.0.0.weight"]
    with init_empty_weights():
        template = ControlNetModel.from_unet(
            unet,
            conditioning_embedding_out_channels=channels,
            conditioning_channels=convs[0].shape[1],
            load_weights_from_unet=False,
        )
    return {**template.config, "in_channels": conv_in.shape[1]}


def _cross_attention_width(tensors: Tensors) -> int | None:
    widths = [t.shape[1] for k, t in tensors.items() if "attn2" in k and k.endswith("to_k.weight") and t.ndim == 2]
    return widths[0] if widths else None


def controlnet_from_file(path: Path, unet: UNet2DConditionModel, allow_pickle: bool) -> ControlNetModel:
    """The ControlNet in the single file at `path`, in its stored dtype on the CPU, built for `unet`'s family."""
    tensors = read_checkpoint(path, allow_pickle)
    if not any(k.startswith((_HINT, _HINT_DIFFUSERS)) for k in tensors):
        tensors = {k.removeprefix(_ORIGINAL_PREFIX): v for k, v in tensors.items()}
    if not any(k.startswith((_HINT, _HINT_DIFFUSERS)) for k in tensors):
        keys = ", ".join(sorted(tensors)[:3])
        raise UsageError(f"{OPTION} {path} holds {keys}..., not a ControlNet ({_HINT}* keys); pass {_KIND}")
    width = _cross_attention_width(tensors)
    if width is not None and width != unet.config.cross_attention_dim:
        raise UsageError(
            f"{OPTION} {path} is a ControlNet for another model family (its cross-attention width {width}, the "
            f"model's {unet.config.cross_attention_dim}); pass a ControlNet trained for this model"
        )
    config = _config(tensors, unet, str(path))
    with init_empty_weights():
        controlnet = ControlNetModel.from_config(config)
    try:
        state = convert_controlnet_checkpoint(tensors, dict(controlnet.config))
    except Exception as error:  # noqa: BLE001 - diffusers' converter fails on a partial file in many ways
        raise Failure(f"could not read the ControlNet {path} ({reason(error)}); is it {_KIND}?") from None
    return fill(controlnet, {k: v for k, v in state.items() if v is not None}, "ControlNet", str(path))


def load_controlnet(
    reference: str, unet: UNet2DConditionModel, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False
) -> ControlNetModel:
    """The ControlNet folder or file `reference` (checked), fitting `unet`, on `device` in `dtype`, for inference."""
    path = Path(reference).expanduser().resolve()
    if path.is_file():
        controlnet = controlnet_from_file(path, unet, allow_pickle)
    else:
        check_controlnet(reference)
        try:
            controlnet = ControlNetModel.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
        except Exception as error:  # noqa: BLE001 - a broken or partial folder, in any of many ways
            raise Failure(f"could not load the ControlNet {reference} ({reason(error)}); is it {_KIND}?") from None
    check_fits(controlnet, unet, reference)
    return controlnet.eval().requires_grad_(False).to(device, dtype)


def load_controlnets(
    references: tuple[str, ...],
    sha256s: list[str],
    unet: UNet2DConditionModel,
    device: torch.device,
    dtype: torch.dtype,
    allow_pickle: bool,
) -> tuple[LoadedControlNet, ...]:
    """Each --control-net, in order (one given twice is loaded once)."""
    networks: dict[str, ControlNetModel] = {}
    for reference in references:
        if reference not in networks:
            networks[reference] = load_controlnet(reference, unet, device, dtype, allow_pickle)
    return tuple(
        LoadedControlNet(reference, sha256, networks[reference])
        for reference, sha256 in zip(references, sha256s, strict=True)
    )


def check_controlnets(references: tuple[str, ...], allow_pickle: bool, recorded: tuple[str, ...]) -> list[str]:
    """`check_controlnet` for each --control-net, against the sha256s a replay recorded (when it recorded one
    each): their sha256s."""
    if len(recorded) != len(references):  # not a replay (or not the record's ControlNets)
        recorded = (None,) * len(references)
    return [
        check_controlnet(ref, allow_pickle, sha256 or None) for ref, sha256 in zip(references, recorded, strict=True)
    ]
