"""Tiny random Stable Diffusion models in diffusers format, built offline for the tests and the benchmark.

The architecture is Stable Diffusion's (diffusers `UNet2DConditionModel`, `AutoencoderKL`, transformers
`CLIPTextModel` and `CLIPTokenizer`, an SD scheduler config); only the widths are small and the weights random.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdcli.shapes.tokenizer import write_word_tokenizer

WORDS = "a an the red green blue yellow circle square triangle on white black gray background photo of cat dog".split()


def build_tiny_sd(
    folder: str | Path,
    *,
    prediction_type: str = "epsilon",
    unet_channels: tuple[int, ...] = (32, 64),
    vae_channels: tuple[int, ...] = (32, 64),
    text_width: int = 32,
    sample_size: int = 8,
    seed: int = 0,
) -> Path:
    """Save a random SD model with `len(vae_channels)` VAE blocks (latent scale 2 ** (blocks - 1)) to `folder`."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = write_word_tokenizer(WORDS, folder / "_tokenizer")
    n = len(unet_channels)
    unet = UNet2DConditionModel(
        block_out_channels=unet_channels,
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=vae_channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size * 2 ** (len(vae_channels) - 1),
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=text_width,
            intermediate_size=2 * text_width,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return save_sd_folder(folder, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                          scheduler=scheduler)


def save_sd_folder(folder: Path, **components) -> Path:
    """Save SD components (vae, text_encoder, tokenizer, unet, scheduler) as a diffusers folder, no safety checker."""
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
