"""Tiny random Stable Diffusion models in diffusers format, built offline for the tests and the benchmark.

The architecture is Stable Diffusion's (diffusers `UNet2DConditionModel`, `AutoencoderKL`, transformers
`CLIPTextModel` and `CLIPTokenizer`, an SD scheduler config), or SDXL's (a second tokenizer padding with "!", a
second encoder with a projection, a U-Net with size conditioning); only the widths are small and the weights random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdcli.recipe import Request
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
    in_channels: int = 4,
    seed: int = 0,
) -> Path:
    """Save a random SD model with `len(vae_channels)` VAE blocks (latent scale 2 ** (blocks - 1)) to `folder`;
    `in_channels=9` makes an inpainting model (the U-Net also takes the mask and the masked image's latents)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = write_word_tokenizer(WORDS, folder / "_tokenizer")
    n = len(unet_channels)
    unet = UNet2DConditionModel(
        block_out_channels=unet_channels,
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = _tiny_vae(vae_channels, sample_size)
    text_encoder = CLIPTextModel(_clip_config(tokenizer, text_width))
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
    return save_sd_folder(
        folder, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
    )


def _tiny_vae(channels: tuple[int, ...], sample_size: int, **config) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size * 2 ** (len(channels) - 1),
        **config,
    )


def _clip_config(tokenizer: CLIPTokenizer, width: int, heads: int = 4, **config) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_attention_heads=heads,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )


def build_tiny_sdxl(
    folder: str | Path,
    *,
    force_zeros_for_empty_prompt: bool = True,
    tokenizers: tuple[CLIPTokenizer, CLIPTokenizer] | None = None,
    projection_dim: int = 32,
    time_embed_dim: int = 8,
    sample_size: int = 8,
    seed: int = 0,
) -> Path:
    """Save a random SDXL model (latent scale 2, native size 2 * sample_size) to `folder`: two text encoders whose
    hidden states the U-Net attends to side by side, the second's pooled projection and six size numbers added to
    its timestep embedding (`addition_embed_type="text_time"`), SDXL's Euler scheduler config. Attention heads are
    of 64 channels, as in SDXL (so its single file loads back); the tokenizers are word tokenizers unless given."""
    folder = Path(folder)
    torch.manual_seed(seed)
    if tokenizers is None:
        word_tokenizer = write_word_tokenizer(WORDS, folder / "_tokenizer")
        pads_with_bang = CLIPTokenizer.from_pretrained(folder / "_tokenizer", pad_token="!")  # OpenCLIP's padding
        tokenizers = word_tokenizer, pads_with_bang
    tokenizer, tokenizer_2 = tokenizers
    text_widths = (64, 128)
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=sum(text_widths),
        attention_head_dim=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=projection_dim + 6 * time_embed_dim,
        norm_num_groups=32,
    )
    vae = _tiny_vae((32, 64), sample_size, scaling_factor=0.13025)
    text_encoder = CLIPTextModel(_clip_config(tokenizer, text_widths[0], heads=1, hidden_act="quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(
        _clip_config(tokenizer_2, text_widths[1], heads=2, projection_dim=projection_dim, hidden_act="gelu")
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def save_sd_folder(folder: Path, **components) -> Path:
    """Save SD components (vae, text_encoder, tokenizer, unet, scheduler) as a diffusers folder, no safety checker."""
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder)
    return folder


def make_request(prompt: str, **settings: Any) -> Request:
    """A request from settings by name, as the command line gives them: `make_request("a cat", seed=1, steps=2)`."""
    return Request.of({"prompt": prompt, **settings})
