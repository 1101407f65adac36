"""Our loop against diffusers' StableDiffusionPipeline (with `--strength`: img2img against
StableDiffusionImg2ImgPipeline, from a picture drawn here): same model, same settings, alternating runs in one process.

Prints the ratio of wall times (ours / diffusers; target: at most 1.00), the largest pixel difference, and our
overhead per step outside the U-Net (everything the loop does around its U-Net calls: scheduler, guidance,
bookkeeping). By default on a random model with SD's architecture at a small width, built here offline; `--model`
times any diffusers folder instead.

    python benchmarks/bench_loop.py [--model FOLDER] [--steps 20] [--rounds 7] [--sampler dpm++2m-karras] [--threads N]
                                    [--strength S]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

import sdcli.engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_sd import build_tiny_sd

from sdcli.engine import make_images
from sdcli.loading.components import load_model
from sdcli.loading.devices import resolve_device, resolve_dtype
from sdcli.loading.references import resolve_model
from sdcli.recipe import Request
from sdcli.sampling.samplers import get_sampler

PROMPT = "a red circle on a white background"


def draw_picture(width: int, height: int) -> Image.Image:
    """An init image: a gradient per channel (across, down, out from the centre)."""
    across = Image.linear_gradient("L").rotate(90).resize((width, height))
    down = Image.linear_gradient("L").resize((width, height))
    centre = Image.radial_gradient("L").resize((width, height))
    return Image.merge("RGB", (across, down, centre))


class Clock:
    """Wraps a function to add up the time spent inside it (synchronizing CUDA, so the time is the device's)."""

    def __init__(self, function, device: torch.device):
        self.function = function
        self.device = device
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.function(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a diffusers folder (default: a random SD-shaped model built here)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7, help="timed runs of each, alternating")
    parser.add_argument("--sampler", default="dpm++2m-karras")
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--strength", type=float, help="img2img at this strength (default: text to image)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.model or str(
            build_tiny_sd(
                Path(scratch) / "bench",
                unet_channels=(64, 128),
                vae_channels=(32, 64, 64),
                text_width=64,
                sample_size=16,
            )
        )
        device = resolve_device(args.device)
        dtype = resolve_dtype("auto", device)
        model = load_model(resolve_model(folder), device, dtype)
        sampler = get_sampler(args.sampler)
        pipeline = StableDiffusionPipeline if args.strength is None else StableDiffusionImg2ImgPipeline
        pipe = pipeline(
            vae=model.vae,
            text_encoder=model.text_encoder,
            tokenizer=model.tokenizer,
            unet=model.unet,  # the very same modules: only the loops differ
            scheduler=getattr(diffusers, sampler.scheduler).from_config(model.scheduler_config, **sampler.settings),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        width, height = model.native_size
        img2img, from_image = {}, {}  # img2img: our settings, and the pipeline's arguments
        if args.strength is not None:
            picture = draw_picture(width, height)
            picture.save(Path(scratch) / "init.png")
            img2img = {"init_image": str(Path(scratch) / "init.png"), "strength": args.strength}
            from_image = {"image": picture, "strength": args.strength}
        request = Request.of(prompt=PROMPT, seed=0, cfg=args.cfg, steps=args.steps, sampler=args.sampler, **img2img)

        def ours() -> np.ndarray:
            (made,) = make_images(model, request)
            return np.asarray(made.image)

        def theirs() -> np.ndarray:
            generator = torch.Generator("cpu").manual_seed(0)
            image = pipe(
                PROMPT, num_inference_steps=args.steps, guidance_scale=args.cfg, generator=generator, **from_image
            ).images[0]
            return np.asarray(image)

        difference = int(np.abs(ours().astype(int) - theirs().astype(int)).max())  # also the warm-up
        unet_clock = model.unet.forward = Clock(model.unet.forward, device)
        loop_clock = sdcli.engine.denoise = Clock(sdcli.engine.denoise, device)
        times: dict[str, list[float]] = {"ours": [], "diffusers": []}
        overheads = []  # our loop's seconds outside the U-Net, per step
        for round_index in range(args.rounds):
            pair = [("ours", ours), ("diffusers", theirs)]
            for name, run in pair if round_index % 2 == 0 else pair[::-1]:  # alternate who goes first
                unet_clock.reset()
                loop_clock.reset()
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
                if name == "ours":
                    overheads.append((loop_clock.seconds - unet_clock.seconds) / unet_clock.calls)

    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    print(f"model: {args.model or 'random, SD-shaped (U-Net channels 64, 128; VAE 3 blocks; 16x16x4 latents)'}")
    print(f"device: {device} ({str(dtype).removeprefix('torch.')}), threads: {torch.get_num_threads()}")
    mode = "text to image" if args.strength is None else f"img2img, strength {args.strength:g}"
    print(f"settings: {mode}, {width}x{height}, {args.sampler}, {args.steps} steps, cfg {args.cfg}, "
          f"{args.rounds} rounds")  # fmt: skip
    print(f"max pixel difference ours vs diffusers: {difference}/255")
    print(f"median seconds per image: ours {ours_s:.3f}, diffusers {theirs_s:.3f}")
    print(f"ratio ours / diffusers: {ours_s / theirs_s:.3f}")
    print(f"our loop's time outside the U-Net: {statistics.median(overheads) * 1000:.2f} ms per step")


if __name__ == "__main__":
    main()
