"""Diffusers-format weights back to the original CompVis/Stability single-file layout, for the single-file tests.

The inverse of the key mapping that diffusers' converters (`diffusers.loaders.single_file_utils`) apply, for any
number of levels and layers, as diffusers' own `convert_diffusers_to_original_stable_diffusion.py` script does for
SD's sizes (and SDXL's: `label_emb.*`, `conditioner.embedders.0/1.*`). Also tiny SD 1.x/2.x/XL models in diffusers
format whose hyperparameters follow their family's rules (CLIP vocabulary and tokenizer, 64-channel heads), so that
their single files load back to the same model.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from tiny_sd import build_tiny_sdxl, save_sd_folder
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdcli.loading.architecture import CLIP, OPEN_CLIP, SD1, SD2, SDXL, SDXL_CLIP, SDXL_OPEN_CLIP, Family
from sdcli.loading.single_file import clip_tokenizer, scheduler_config

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}  # fmt: skip
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    c = unet.config
    n, layers = len(c.block_out_channels), c.layers_per_block
    p = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
         "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
         "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
         "mid_block.resnets.1.": "middle_block.2.",
         "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}  # fmt: skip
    for i in range(n):
        for j in range(layers):
            p[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(layers + 1) * i + j + 1}.0."
            p[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(layers + 1) * i + j + 1}.1."
        for j in range(layers + 1):
            p[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(layers + 1) * i + j}.0."
            p[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(layers + 1) * i + j}.1."
        if i < n - 1:
            p[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(layers + 1) * (i + 1)}.0.op."
            slot = 2 if c.up_block_types[i].startswith("CrossAttn") else 1
            p[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(layers + 1) * i + layers}.{slot}."
    state = unet.state_dict()
    out = {}
    for key, value in state.items():
        match = max((q for q in p if key.startswith(q)), key=len)
        rest = key[len(match) :]
        if ".resnets." in match or match.startswith("mid_block.resnets"):
            head, _, tail = rest.partition(".")
            rest = f"{_RESNET.get(head, head)}.{tail}"
        out["model.diffusion_model." + p[match] + rest] = value
    return out


def vae_to_ldm(vae: AutoencoderKL, into: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    p = {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for side in ("encoder", "decoder"):
        p |= {f"{side}.conv_in.": f"{side}.conv_in.", f"{side}.conv_norm_out.": f"{side}.norm_out.",
              f"{side}.conv_out.": f"{side}.conv_out.", f"{side}.mid_block.attentions.0.": f"{side}.mid.attn_1.",
              f"{side}.mid_block.resnets.0.": f"{side}.mid.block_1.",
              f"{side}.mid_block.resnets.1.": f"{side}.mid.block_2."}  # fmt: skip
    for i in range(n):
        for j in range(vae.config.layers_per_block + 1):
            p[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            p[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        p[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        p[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{n - 1 - i}.upsample.conv."
    out = {}
    for key, value in vae.state_dict().items():
        match = max((q for q in p if key.startswith(q)), key=len)
        rest = key[len(match) :]
        if ".resnets." in match and rest.startswith("conv_shortcut."):
            rest = "nin_shortcut." + rest.removeprefix("conv_shortcut.")
        if ".attentions." in match:
            head = next(h for h in _VAE_ATTENTION if rest.startswith(h + "."))
            rest = _VAE_ATTENTION[head] + rest[len(head) :]
            if value.ndim == 2:
                value = value[:, :, None, None]  # the original's 1x1 convolutions
        out[into + p[match] + rest] = value
    return out


def clip_to_ldm(text_encoder: CLIPTextModel, prefix: str = CLIP) -> dict[str, torch.Tensor]:
    return {
        prefix + k.removeprefix("text_model."): v
        for k, v in text_encoder.state_dict().items()
        if "position_ids" not in k
    }


def open_clip_to_ldm(text_encoder: CLIPTextModel | CLIPTextModelWithProjection, prefix: str = OPEN_CLIP):
    """OpenCLIP's layout. SD 2.x's (a `CLIPTextModel`) gets one more (random) layer at the end, which it does not
    use, and a random projection; SDXL's second encoder has its own projection and uses every layer."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items() if "position_ids" not in k}
    width = text_encoder.config.hidden_size
    layers = text_encoder.config.num_hidden_layers
    projection = state.pop("text_projection.weight", None)  # (P, width) in transformers, (width, P) in OpenCLIP
    if projection is None:
        for name in [k for k in state if k.startswith("encoder.layers.0.")]:  # the unused last layer
            state[name.replace("layers.0.", f"layers.{layers}.")] = torch.randn_like(state[name])
        layers += 1
    out = {"token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": state.pop("final_layer_norm.weight"), "ln_final.bias": state.pop("final_layer_norm.bias"),
           "text_projection": torch.randn(width, width) if projection is None else projection.T}  # fmt: skip
    for i in range(layers):
        a, b = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[b + f"attn.in_proj_{kind}"] = torch.cat([state.pop(a + f"self_attn.{x}_proj.{kind}") for x in "qkv"])
            out[b + f"attn.out_proj.{kind}"] = state.pop(a + f"self_attn.out_proj.{kind}")
            out[b + f"ln_1.{kind}"] = state.pop(a + f"layer_norm1.{kind}")
            out[b + f"ln_2.{kind}"] = state.pop(a + f"layer_norm2.{kind}")
            out[b + f"mlp.c_fc.{kind}"] = state.pop(a + f"mlp.fc1.{kind}")
            out[b + f"mlp.c_proj.{kind}"] = state.pop(a + f"mlp.fc2.{kind}")
    assert not state, sorted(state)
    return {prefix + k: v for k, v in out.items()}


def pipeline_to_ldm(folder: Path, family: Family) -> dict[str, torch.Tensor]:
    """A diffusers folder's U-Net, VAE and text encoder(s) as one original-layout state dict."""
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    if family is SDXL:
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
        text = clip_to_ldm(text_encoder, SDXL_CLIP) | open_clip_to_ldm(text_encoder_2, SDXL_OPEN_CLIP)
    else:
        text = clip_to_ldm(text_encoder) if family is SD1 else open_clip_to_ldm(text_encoder)
    return {k: v.contiguous() for k, v in (unet_to_ldm(unet) | vae_to_ldm(vae) | text).items()}


def build_family_sdxl(folder: Path, seed: int = 0) -> Path:
    """A tiny random SDXL model in diffusers format with SDXL's real tokenizers (CLIP's vocabulary)."""
    return build_tiny_sdxl(folder, tokenizers=(clip_tokenizer(SDXL), clip_tokenizer(SDXL, "tokenizer_2")), seed=seed)


def build_family_sd(folder: Path, family: Family, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A tiny random model in diffusers format that follows `family`'s rules, with CLIP's real tokenizer."""
    torch.manual_seed(seed)
    sd2 = family is SD2
    channels = (64, 128) if sd2 else (32, 64)
    unet = UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=1,
        sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=[c // 64 for c in channels] if sd2 else 8,
        use_linear_projection=sd2,
        upcast_attention=sd2 and prediction_type == "v_prediction",
        norm_num_groups=32,
    )
    if sd2 and prediction_type == "v_prediction":  # the spread that marks SD 2.x v-prediction weights
        with torch.no_grad():
            unet.up_blocks[0].attentions[-1].transformer_blocks[0].norm1.bias.normal_(0, 0.2)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
    )
    tokenizer = clip_tokenizer(family)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=1,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            hidden_act="gelu" if sd2 else "quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    config = dict(scheduler_config(family, prediction_type))
    scheduler = getattr(diffusers, "DDIMScheduler" if sd2 else "PNDMScheduler").from_config(config)
    return save_sd_folder(
        folder, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
    )
