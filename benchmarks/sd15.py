"""Stable Diffusion 1.5's architecture with random weights, built in memory without the network (speed does not
depend on the values): U-Net, VAE and CLIP ViT-L/14 text encoder at their released sizes, CLIP's real tokenizer."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdcli.loading.architecture import SD1
from sdcli.loading.components import Model
from sdcli.loading.single_file import clip_tokenizer, scheduler_config

UNET = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            layers_per_block=2, sample_size=64)  # fmt: skip
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip
TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            max_position_embeddings=77, vocab_size=49408)  # fmt: skip


def sd15_random(device: torch.device, dtype: torch.dtype) -> Model:
    with torch.device(device):
        unet = UNet2DConditionModel(**UNET).to(dtype)
        vae = AutoencoderKL(**VAE).to(torch.float32 if dtype == torch.float16 else dtype)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT)).to(dtype)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return Model("sd15-random", clip_tokenizer(SD1), text_encoder, unet, vae, scheduler_config(SD1, "epsilon"),
                 device, dtype)  # fmt: skip
