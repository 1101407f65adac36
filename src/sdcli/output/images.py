"""Latents to pixels, exactly as diffusers decodes and post-processes them."""

from __future__ import annotations

import logging

import torch
from diffusers import AutoencoderKL
from PIL import Image

from sdcli.errors import Failure, UsageError

log = logging.getLogger(__name__)


# What to do when the denoising overflowed, by the dtype it ran in.
OVERFLOW_FIXES = {
    torch.float16: "rerun with --dtype fp32 (or bf16), or lower --cfg if it is large",
    torch.bfloat16: "lower --cfg if it is large, or rerun with --dtype fp32",
    torch.float32: "lower --cfg (or --classifier-scale, --neg-scale): the guidance is too strong for fp32's range",
}

DECODER_BYTES_PER_PIXEL = 128 * 4 * 6  # SD's decoder at full size: 128 channels, fp32, a few live activations


def check_decode_fits(vae: AutoencoderKL, width: int, height: int, memory: int) -> None:
    """A usage error, before any work, when decoding a width x height image whole would need more than `memory`
    bytes (the device's): tiling decodes it in tiles instead."""
    needed = width * height * DECODER_BYTES_PER_PIXEL
    if needed > memory and not vae.use_tiling:
        raise UsageError(
            f"a {width}x{height} image needs about {needed / 2**30:.0f} GiB to decode whole, and this device has "
            f"{memory / 2**30:.0f} GiB; make it smaller, or add --vae-tiling to decode it in tiles"
        )


def _fits(vae: AutoencoderKL, z: torch.Tensor) -> bool:
    """Whether one image's decode fits in the GPU's free memory (on the CPU: always, as far as we can tell)."""
    if z.device.type != "cuda" or vae.use_tiling:
        return True
    pixels = z.shape[-2] * z.shape[-1] * 2 ** (2 * (len(vae.config.block_out_channels) - 1))
    return pixels * DECODER_BYTES_PER_PIXEL < torch.cuda.mem_get_info(z.device)[0]


@torch.inference_mode()
def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) to images (B, 3, H, W) in about [-1, 1], undoing the VAE's `scaling_factor`.

    One image at a time (a batch's peak memory is one image's; the pixels are those of a batch of one). A decode
    that overflows to NaN or inf in half precision (SD's VAEs do in fp16) is redone in fp32, with a warning; the
    VAE stays in fp32 for the rest of the run. Tiled when the GPU would not hold the whole decode."""
    images = []
    for one in latents.split(1):  # (1, C, h, w)
        z = one.to(vae.dtype) / vae.config.scaling_factor
        if not _fits(vae, z):
            log.warning("decoding a %dx%d-latent image in tiles: the whole would not fit in GPU memory", *z.shape[-2:])
            vae.enable_tiling()
        image = vae.decode(z, return_dict=False)[0]  # (1, 3, H, W)
        if not torch.isfinite(image).all() and vae.dtype != torch.float32:
            log.warning(
                "the VAE decode in %s gave NaN or inf; decoding again in fp32", str(vae.dtype).removeprefix("torch.")
            )
            vae.to(torch.float32)
            image = vae.decode(one.float() / vae.config.scaling_factor, return_dict=False)[0]
        if not torch.isfinite(image).all():
            raise _overflowed(latents.dtype)
        images.append(image)
    return torch.cat(images)  # (B, 3, H, W)


def _overflowed(dtype: torch.dtype) -> Failure:
    """The failure for an image NaN or inf even when decoded in fp32: the denoising that made the latents, in
    `dtype`, overflowed. Its fix depends on that dtype: fp16's range is small, bf16's is fp32's, and in fp32 only
    weaker guidance helps."""
    fix = OVERFLOW_FIXES.get(dtype, OVERFLOW_FIXES[torch.float32])
    return Failure(f"the image came out NaN or inf even with an fp32 VAE decode: the denoising overflowed in "
                   f"{str(dtype).removeprefix('torch.')}; {fix}")  # fmt: skip


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images (B, 3, H, W) in [-1, 1] to 8-bit RGB, rounded like diffusers' VaeImageProcessor.postprocess."""
    pixels = (images * 0.5 + 0.5).clamp(0, 1)  # (B, 3, H, W) in [0, 1]
    arrays = pixels.cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, 3)
    return [Image.fromarray(a) for a in (arrays * 255).round().astype("uint8")]
