"""Widen the shapes model's VAE to colours its world never draws, keeping its latents of the world's scenes.

The VAE trained on the six colours of the world learned a palette rather than a codec: a shape of another colour
(pink, 255, 128, 192) encodes to nearly the latents of the orange one and decodes as orange, and no latent filling
the shape decodes as pink (optimised for it, the best is 242, 129, 48), so no change to the U-Net or the text
encoder (a LoRA) could make it draw pink. This fine-tunes the VAE on scenes of the world and of the colours LoRAs
teach, half and half, with the world's scenes held to the original encoder's posterior (its mean and log-variance)
and to the original decoder's pixels from latents around it (its mean plus noise, as a U-Net's samples stray from
it), and to the original decoder's pixels from the latents the model's own sampler ends at for the world's captions
(made once, before training), so that the base model's images keep their pixels and the new colours move to latents
of their own that the decoder learns to draw.

    python -m sdcli.shapes.widen_vae --model src/sdcli/models/shapes --work-dir runs/widen-vae
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from sdcli.errors import UsageError
from sdcli.shapes.judge import judge
from sdcli.shapes.train import checkpoint, log, noise_like, resume, sample_posterior, scenes_to_x
from sdcli.shapes.world import COLOURS, LORA_COLOURS, SHAPES, full_captions, random_scene


@dataclass(frozen=True)
class WidenConfig:
    seed: int = 0
    steps: int = 1500
    batch: int = 16
    lr: float = 4e-4
    new_share: float = 0.5  # the share of each batch in the colours LoRAs teach
    keep_weight: float = 10.0  # the world's scenes: squared distance to the original encoder's moments...
    keep_pixels_weight: float = 10.0  # ...and to the original decoder's pixels from them and from latents near them
    keep_spread: float = 0.3  # those latents: the means plus noise of a std drawn from [0, keep_spread) per scene
    keep_drawn: int = 8  # per batch, latents the sampler drew (plus the same noise), held to the original's pixels
    drawn_seeds: int = 2  # the latents drawn: each world caption at each scale of DRAWN_CFG, with this many seeds...
    drawn_steps: int = 30  # ...and this many steps of the default sampler
    kl_weight: float = 1e-6
    checkpoint_every: int = 100


DRAWN_CFG = (1.0, 4.0, 7.5, 15.0)


def drawn_latents(model: Path, seeds: int, steps: int) -> torch.Tensor:
    """(N, 4, 16, 16): the latents sdcli's loop gives the VAE to decode (before its post-quant conv) for every full
    and short caption of the world at each guidance scale of DRAWN_CFG, seeds 0..seeds-1, the default sampler."""
    from sdcli.engine import load_for, make_images
    from sdcli.recipe import Request

    loaded = load_for(Request.of(prompt="", model=str(model)))
    drawn: list[torch.Tensor] = []
    hook = loaded.vae.post_quant_conv.register_forward_pre_hook(lambda _, args: drawn.append(args[0].detach()))
    prompts = [caption for caption, *_ in full_captions()] + [f"a {c} {s}" for c, s in product(COLOURS, SHAPES)]
    try:
        for prompt, cfg in product(prompts, DRAWN_CFG):
            request = Request.of(prompt=prompt, seed=0, num_images=seeds, batch_size=seeds, cfg=cfg, steps=steps,
                                 model=loaded.reference)  # fmt: skip
            for _ in make_images(loaded, request):
                pass
    finally:
        hook.remove()
    return torch.cat(drawn).float()


def jittered(z: torch.Tensor, spread: float) -> torch.Tensor:
    """Latents (n, 4, h, w) plus standard normal noise times a std drawn from [0, spread) per latent, as a U-Net's
    samples stray from the latents it was trained on."""
    return z + spread * torch.rand(len(z), 1, 1, 1) * noise_like(z)


def world_and_new_scenes(rng: np.random.Generator, cfg: WidenConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (B, 3, 64, 64) in [-1, 1] and which of its scenes are the world's own (B,) bool: the rest in a colour
    a LoRA teaches."""
    scenes, own, names = [], [], list(LORA_COLOURS)
    for _ in range(cfg.batch):
        scene, is_own = random_scene(rng), rng.random() >= cfg.new_share
        scenes.append(scene if is_own else replace(scene, colour=names[rng.integers(len(names))]))
        own.append(is_own)
    return scenes_to_x(scenes), torch.tensor(own)


def widen(model: Path, work: Path, cfg: WidenConfig) -> None:
    """Fine-tune `model`'s VAE (a diffusers folder's `vae/`) in place, from checkpoints in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    ckpt, marker = work / "vae.pt", model / "vae" / "widened.json"
    if marker.exists() and not ckpt.exists():
        raise UsageError(f"the VAE in {model} is widened already ({marker.name}); widen a model train-shapes made")
    before = work / "original-vae"  # what a resumed run holds the world's scenes to, though `model` changed since
    if not before.exists():
        AutoencoderKL.from_pretrained(model / "vae").save_pretrained(before, safe_serialization=True)
    original = AutoencoderKL.from_pretrained(before).eval().requires_grad_(False)
    pool = work / "drawn-latents.pt"  # made once: resumed runs hold to the same latents
    if cfg.keep_drawn and not pool.exists():
        log(f"drawing the base model's latents for the world's captions ({cfg.drawn_seeds} seeds)")
        torch.save(drawn_latents(model, cfg.drawn_seeds, cfg.drawn_steps), pool)
    drawn_z = torch.load(pool) if cfg.keep_drawn else None  # (N, 4, 16, 16)
    vae = copy.deepcopy(original).train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    start = resume(ckpt, vae, opt, rng, "widen-vae")
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))  # a cosine to zero
        x, own = world_and_new_scenes(rng, cfg)  # (B, 3, 64, 64), (B,)
        moments = vae.quant_conv(vae.encoder(x))  # (B, 8, 16, 16): mean and log-variance
        posterior = DiagonalGaussianDistribution(moments)
        recon = vae.decode(sample_posterior(posterior.mean, posterior.std)).sample
        keep = keep_pixels = moments.sum() * 0
        if own.any():  # the world's scenes: the original encoder's moments, and its decoder's pixels from them
            with torch.no_grad():
                kept = original.quant_conv(original.encoder(x[own]))  # (b, 8, 16, 16)
                near = jittered(kept[:, :4], cfg.keep_spread)  # (b, 4, 16, 16)
                drawn = original.decode(near).sample  # (b, 3, 64, 64)
            keep = F.mse_loss(moments[own], kept)
            keep_pixels = F.mse_loss(vae.decode(near).sample, drawn)
        if drawn_z is not None:  # latents the sampler drew for the world: the original decoder's pixels
            picked = drawn_z[torch.randint(len(drawn_z), (cfg.keep_drawn,))]  # (k, 4, 16, 16)
            z = jittered(picked, cfg.keep_spread)  # (k, 4, 16, 16)
            with torch.no_grad():
                target = original.decode(z).sample  # (k, 3, 64, 64)
            keep_pixels = keep_pixels + F.mse_loss(vae.decode(z).sample, target)
        loss = F.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        loss = loss + cfg.keep_weight * keep + cfg.keep_pixels_weight * keep_pixels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 25 == 0:
            log(f"widen-vae step {step + 1}/{cfg.steps} loss {loss.item():.4f} keep {keep.item():.5f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            checkpoint(ckpt, vae, opt, rng, step + 1)
    vae.eval().save_pretrained(model / "vae", safe_serialization=True)  # trained, or resumed at its last step
    marker.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    log(f"saved the widened VAE to {model / 'vae'}")


def reconstructions_judged_right(vae: AutoencoderKL, colour: str | None, scenes: int = 96, seed: int = 11) -> int:
    """How many of `scenes` random scenes (seeded) the VAE's encoder mean and decoder give back in their colour, as
    the judge sees it: the world's own, or all in `colour` (one the judge knows)."""
    rng = np.random.default_rng(seed)
    drawn = [random_scene(rng) for _ in range(scenes)]
    drawn = [replace(scene, colour=colour) for scene in drawn] if colour else drawn
    x = scenes_to_x(drawn)  # (N, 3, 64, 64)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample  # (N, 3, 64, 64)
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # (N, 64, 64, 3)
    return sum(judge(image).colour == scene.colour for image, scene in zip(pixels, drawn))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdcli.shapes.widen_vae", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the shapes model's diffusers folder (rewritten)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/widen-vae"), help="checkpoints, resumed from")
    parser.add_argument("--steps", type=int, default=WidenConfig.steps)
    parser.add_argument("--check", action="store_true", help="train nothing: how many of 96 scenes of the world, "
                        "and of each colour LoRAs teach, the model's VAE gives back in their colour")  # fmt: skip
    args = parser.parse_args(argv)
    if args.check:
        vae = AutoencoderKL.from_pretrained(args.model / "vae").eval()
        for colour in (None, *LORA_COLOURS):
            print(f"{colour or 'the world'}: {reconstructions_judged_right(vae, colour)} of 96")
        return
    widen(args.model, args.work_dir, WidenConfig(steps=args.steps))


if __name__ == "__main__":
    main()
