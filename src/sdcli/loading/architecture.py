"""What a checkpoint in the original CompVis/Stability layout is, read from its tensors' names and shapes alone.

Stable Diffusion's checkpoints carry no config. Widths, depths and layer counts are in the shapes; what the shapes
do not show is fixed by the family, as Stability's configs fix it (`v1-inference.yaml`, `v2-inference-v.yaml`):

| family | text encoder (prefix)                        | U-Net attention heads           | sizes                 |
| ------ | -------------------------------------------- | ------------------------------- | --------------------- |
| sd1    | OpenAI CLIP (`cond_stage_model.transformer.`) | 8 per block, conv projections   | 512, epsilon          |
| sd2    | OpenCLIP, penultimate layer (`cond_stage_model.model.`) | 64 channels each, linear | 768 v, 512 epsilon |
| sdxl   | CLIP and OpenCLIP with projection (`conditioner.embedders.0/1.`) | 64 channels each, linear | 1024 |

SD 2.x 768-v and 512-base checkpoints share every shape. Like ComfyUI, a `v_pred` tensor or the spread of one
late LayerNorm bias (wide in the v-prediction weights) tells them apart; an SDXL checkpoint is v-prediction only
with a `v_pred` tensor; a prediction type given to `detect` (the user's, see `sdcli.loading.prediction`) replaces that
guess. SDXL's U-Net also takes the pooled text embedding and six size numbers (`label_emb.*`, diffusers'
`addition_embed_type="text_time"`), and its VAE scales latents by 0.13025. No torch here: the tensors may be a
safetensors header's (`sdcli.loading.headers`), so that `sdcli info` stays fast.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdcli.errors import UsageError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer.text_model."  # SD 1.x
OPEN_CLIP = "cond_stage_model.model."  # SD 2.x
SDXL_CLIP = "conditioner.embedders.0.transformer.text_model."  # SDXL's first encoder, CLIP ViT-L
SDXL_OPEN_CLIP = "conditioner.embedders.1.model."  # SDXL's second, OpenCLIP ViT-bigG with its projection
SDXL_MARKERS = ("conditioner.embedders.", UNET + "label_emb.")
V_PRED_MARKER = "v_pred"
V_PRED_BIAS_SPREAD = 0.09  # std of the probe bias above which SD 2.x weights are v-prediction (ComfyUI's threshold)
HEAD_CHANNELS = 64  # CLIP text encoders and SD 2.x U-Nets: attention heads of 64 channels
SD1_UNET_HEADS = 8
VAE_SCALING_FACTOR = 0.18215  # Stability's `scale_factor` for SD 1.x and 2.x latents
SDXL_VAE_SCALING_FACTOR = 0.13025  # and for SDXL's


@dataclass(frozen=True)
class Family:
    name: str  # "sd1", "sd2", "sdxl": also the folder of its bundled files under sdcli/configs/
    title: str
    text_prefix: str  # where its text encoder's tensors live
    text_prefix_2: str | None = None  # where its second text encoder's live (SDXL)
    vae_scaling_factor: float = VAE_SCALING_FACTOR


SD1 = Family("sd1", "Stable Diffusion 1.x", CLIP)
SD2 = Family("sd2", "Stable Diffusion 2.x", OPEN_CLIP)
SDXL = Family("sdxl", "Stable Diffusion XL", SDXL_CLIP, SDXL_OPEN_CLIP, SDXL_VAE_SCALING_FACTOR)


@dataclass(frozen=True)
class Architecture:
    """A checkpoint's family and the diffusers configs that rebuild its components."""

    family: Family
    prediction_type: str  # "epsilon" or "v_prediction"
    native_size: int  # pixels per side it was trained at
    unet: Mapping[str, Any]  # UNet2DConditionModel config
    vae: Mapping[str, Any] | None  # AutoencoderKL config; None when the file holds no VAE
    text_encoder: Mapping[str, Any]  # CLIPTextConfig arguments
    text_encoder_2: Mapping[str, Any] | None = None  # SDXL: its second encoder's CLIPTextConfig arguments


# Tensors by name: torch's, or a header's `StoredTensor`s. Their shapes are read, and one small tensor's values
# (`.float()`, as an array).
Shapes = Mapping[str, Any]


def _indices(tensors: Shapes, pattern: str) -> list[int]:
    """The distinct numbers that fill `{}` in `pattern` (a key prefix) across the tensors' names, sorted."""
    found = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)"))
    return sorted({int(m.group(1)) for key in tensors if (m := found.match(key))})


def describe(tensors: Shapes) -> str:
    """What a file holds, in a few words: its tensor count and most common name prefixes."""
    prefixes = Counter(".".join(key.split(".")[:2]) for key in tensors)
    common = ", ".join(f"{prefix}.* ({count})" for prefix, count in prefixes.most_common(3))
    return f"{len(tensors)} tensors: {common}"


def _unet_config(tensors: Shapes, family: Family, native_size: int, latent_scale: int, v: bool) -> dict[str, Any]:
    levels: list[list[int]] = [[]]  # per resolution level: the input blocks holding a ResBlock
    for i in _indices(tensors, UNET + "input_blocks.{}.")[1:]:
        if UNET + f"input_blocks.{i}.0.op.weight" in tensors:  # a downsampler closes a level
            levels.append([])
        else:
            levels[-1].append(i)
    layers_per_block = len(levels[0])
    widths = [tensors[UNET + f"input_blocks.{level[0]}.0.out_layers.3.weight"].shape[0] for level in levels]
    down_attention = [UNET + f"input_blocks.{level[0]}.1.proj_in.weight" in tensors for level in levels]
    # Output blocks run the levels in reverse, layers_per_block + 1 of them each.
    up_attention = [
        UNET + f"output_blocks.{level * (layers_per_block + 1)}.1.proj_in.weight" in tensors
        for level in range(len(levels))
    ]
    proj_in = next(tensors[k] for k in tensors if k.startswith(UNET) and k.endswith(".proj_in.weight"))
    context = next(tensors[k] for k in tensors if k.startswith(UNET) and k.endswith(".attn2.to_k.weight"))
    # Transformer blocks per attention layer, per level (1 where a level has none); SDXL's grow with depth.
    depths = [
        len(_indices(tensors, UNET + f"input_blocks.{level[0]}.1.transformer_blocks.{{}}.")) or 1 for level in levels
    ]
    linear = proj_in.ndim == 2
    heads: int | list[int] = [w // HEAD_CHANNELS for w in widths] if family is not SD1 else SD1_UNET_HEADS
    config = {
        "sample_size": native_size // latent_scale,
        "in_channels": tensors[UNET + "input_blocks.0.0.weight"].shape[1],
        "out_channels": tensors[UNET + "out.2.weight"].shape[0],
        "block_out_channels": widths,
        "layers_per_block": layers_per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention],
        "cross_attention_dim": context.shape[1],
        "attention_head_dim": heads,  # diffusers' name for the number of heads, as in SD's own configs
        "use_linear_projection": linear,
        "transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else depths,
        "upcast_attention": family is SD2 and v,  # as Stability's 2.1-v config: fp16 attention overflows without it
    }
    if family is SDXL:  # the pooled embedding and Fourier features of the six size numbers, added to the time's
        added = tensors[UNET + "label_emb.0.0.weight"].shape[1]  # pooled width + 6 x time-id features
        pooled = tensors[family.text_prefix_2 + "text_projection"].shape[1]
        config |= {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": (added - pooled) // 6,
            "projection_class_embeddings_input_dim": added,
        }
    return config


def vae_config(
    tensors: Shapes, prefix: str, native_size: int, scaling_factor: float = VAE_SCALING_FACTOR
) -> dict[str, Any]:
    """The AutoencoderKL config of the VAE whose tensors start with `prefix` (LDM layout: encoder.down.{i}...)."""
    levels = _indices(tensors, prefix + "encoder.down.{}.")
    return {
        "sample_size": native_size,
        "in_channels": tensors[prefix + "encoder.conv_in.weight"].shape[1],
        "out_channels": tensors[prefix + "decoder.conv_out.weight"].shape[0],
        "block_out_channels": [tensors[prefix + f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in levels],
        "layers_per_block": len(_indices(tensors, prefix + "encoder.down.0.block.{}.")),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "latent_channels": tensors[prefix + "post_quant_conv.weight"].shape[0],
        "norm_num_groups": 32,
        "scaling_factor": scaling_factor,
    }


def _clip_config(
    vocab: int, width: int, positions: int, layers: int, mlp: int, activation: str, projection: int
) -> dict[str, Any]:
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": width // HEAD_CHANNELS,
        "max_position_embeddings": positions,
        "hidden_act": activation,
        "projection_dim": projection,
        "bos_token_id": vocab - 2,  # <|startoftext|>, <|endoftext|> close CLIP's vocabulary
        "eos_token_id": vocab - 1,
    }


def _openai_clip_config(tensors: Shapes, p: str) -> dict[str, Any]:
    """CLIPTextConfig arguments of OpenAI's CLIP in transformers' layout under prefix p (SD 1.x, SDXL's first)."""
    vocab, width = tensors[p + "embeddings.token_embedding.weight"].shape
    positions = tensors[p + "embeddings.position_embedding.weight"].shape[0]
    layers = len(_indices(tensors, p + "encoder.layers.{}."))
    mlp = tensors[p + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    return _clip_config(vocab, width, positions, layers, mlp, "quick_gelu", width)


def _open_clip_config(tensors: Shapes, p: str, drop_last: bool) -> dict[str, Any]:
    """CLIPTextConfig arguments of an OpenCLIP text tower under prefix p: SD 2.x reads its penultimate layer, so
    `drop_last` leaves the last one out; SDXL's keeps all (its pipeline reads the penultimate hidden states)."""
    vocab, width = tensors[p + "token_embedding.weight"].shape
    positions = tensors[p + "positional_embedding"].shape[0]
    layers = len(_indices(tensors, p + "transformer.resblocks.{}.")) - drop_last
    mlp = tensors[p + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    projection = tensors[p + "text_projection"].shape[1] if p + "text_projection" in tensors else width
    return _clip_config(vocab, width, positions, layers, mlp, "gelu", projection)


def _is_v_prediction(tensors: Shapes, family: Family) -> bool:
    if V_PRED_MARKER in tensors:
        return True
    if family is not SD2:
        return False
    probes = [
        k
        for k in tensors
        if re.fullmatch(re.escape(UNET) + r"output_blocks\.\d+\.1\.transformer_blocks\.0\.norm1\.bias", k)
    ]
    if not probes:
        return False
    last = max(probes, key=lambda k: int(k.split(".")[3]))  # output_blocks.11.1... in SD 2.x
    return float(np.std(np.asarray(tensors[last].float()))) > V_PRED_BIAS_SPREAD  # (width,)


def _refuse(source: str, tensors: Shapes, what: str) -> None:
    raise UsageError(f"{source} {what} ({describe(tensors)}); pass a Stable Diffusion 1.x, 2.x or XL checkpoint")


def detect(tensors: Shapes, source: str, prediction_type: str | None = None) -> Architecture:
    """The architecture of an original-layout checkpoint; a one-line usage error that says what was found if it is
    not SD 1.x/2.x/XL text-to-image. `source` names the file in that line. `prediction_type` ("epsilon" or
    "v_prediction") is what the checkpoint is declared to predict; None: as its weights suggest."""
    keys = list(tensors)
    if UNET + "input_blocks.0.0.weight" not in tensors:
        if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.")) for k in keys):
            _refuse(source, tensors, "is a VAE alone, not a whole model (pass it with --vae)")
        if any("lora" in k.lower() for k in keys):
            _refuse(source, tensors, "is a LoRA, not a whole model")
        if any(k.startswith(("down_blocks.", "unet.", "text_model.")) for k in keys):
            _refuse(source, tensors, "holds diffusers-layout weights, not a whole checkpoint in the original layout")
        _refuse(source, tensors, "has no Stable Diffusion U-Net (model.diffusion_model.*)")
    in_channels = tensors[UNET + "input_blocks.0.0.weight"].shape[1]
    if in_channels != 4:
        kind = {9: "an inpainting model", 5: "a depth-to-image model", 7: "an upscaler"}.get(
            in_channels, f"a U-Net with {in_channels} input channels"
        )
        _refuse(source, tensors, f"is {kind}; sdcli runs text-to-image models (4 latent channels)")
    if any(k.startswith(SDXL_CLIP) for k in keys) and any(k.startswith(SDXL_OPEN_CLIP) for k in keys):
        family = SDXL
    elif any(k.startswith(SDXL_MARKERS) for k in keys):
        _refuse(source, tensors, "is an SDXL model without SDXL base's two text encoders (a refiner: image-to-image)")
    elif any(k.startswith(CLIP) for k in keys):
        family = SD1
    elif any(k.startswith(OPEN_CLIP) for k in keys):
        family = SD2
    else:
        _refuse(source, tensors, "has a U-Net but no CLIP text encoder (cond_stage_model.*)")
    v = prediction_type == "v_prediction" if prediction_type else _is_v_prediction(tensors, family)
    native = 1024 if family is SDXL else 768 if family is SD2 and v else 512
    has_vae = VAE + "encoder.conv_in.weight" in tensors
    vae = vae_config(tensors, VAE, native, family.vae_scaling_factor) if has_vae else None
    latent_scale = 2 ** (len(vae["block_out_channels"]) - 1) if vae else 8
    try:
        unet = _unet_config(tensors, family, native, latent_scale, v)
        if family is SD2:
            text, text_2 = _open_clip_config(tensors, family.text_prefix, drop_last=True), None
        else:
            text = _openai_clip_config(tensors, family.text_prefix)
            text_2 = _open_clip_config(tensors, family.text_prefix_2, drop_last=False) if family.text_prefix_2 else None
    except (KeyError, StopIteration, IndexError):
        _refuse(source, tensors, f"looks like {family.title} but misses tensors its layout has")
    return Architecture(family, "v_prediction" if v else "epsilon", native, unet, vae, text, text_2)


def family_of(unet_config: Mapping[str, Any]) -> Family | None:
    """The family of a diffusers-format U-Net: SDXL from its size conditioning (`addition_embed_type` "text_time"),
    SD 1.x/2.x from its cross-attention width (CLIP-L 768, OpenCLIP-H 1024)."""
    if unet_config.get("addition_embed_type") == "text_time":
        return SDXL
    return {768: SD1, 1024: SD2}.get(unet_config.get("cross_attention_dim"))
