"""GPU benchmark: our loop against diffusers' StableDiffusionPipeline on SD 1.5's architecture (random weights),
512x512, 30 steps, CFG, fp16, batch 1 and 4; eager, then both with the U-Net compiled; alternating in one process.

Prints seconds per image, U-Net steps per second, the ratio ours / diffusers (target: at most 1.00) and effective
TFLOP/s against the GPU's dense fp16 peak, counting 1.61 TFLOP per guided step per image at 512x512 (the U-Net with
attention, batch 2); the target, compiled, is 20% of peak end to end. One command:

    python benchmarks/bench_gpu.py            # on CUDA
    python benchmarks/bench_gpu.py --device cpu --size 64 --steps 2 --rounds 1 --batches 1 --no-compile   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import diffusers
import torch
from diffusers import StableDiffusionPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15 import sd15_random

from sdcli.engine import make_images
from sdcli.recipe import Request
from sdcli.sampling.samplers import get_sampler

PROMPT = "a photograph of an astronaut riding a horse"
TFLOP_PER_GUIDED_STEP_512 = 1.61  # per image: the U-Net at 512x512 on the conditional and unconditional batch
PEAK_FP16_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "RTX 4090": 165.0, "A10": 125.0}  # dense, fp16 in, fp32 accumulate  # fmt: skip


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FP16_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each, alternating")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sampler", default="dpm++2m-karras")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense fp16 peak, if not in the table")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = True
    model = sd15_random(device, dtype)
    if device.type == "cuda":
        model.unet.to(memory_format=torch.channels_last)
        model.vae.to(memory_format=torch.channels_last)
    sampler = get_sampler(args.sampler)
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=getattr(diffusers, sampler.scheduler).from_config(model.scheduler_config, **sampler.settings),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    peak = args.peak_tflops or peak_tflops(device)
    flop_per_step = TFLOP_PER_GUIDED_STEP_512 * (args.size / 512) ** 2  # per image; attention cost grows faster

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name} ({dtype}), {args.size}x{args.size}, {args.steps} steps, cfg 7.5, {args.sampler}, "
          f"peak {peak or '?'} TFLOP/s")  # fmt: skip
    modes = ["eager"] if args.no_compile else ["eager", "compiled"]
    for mode in modes:
        if mode == "compiled":
            model.unet.compile(dynamic=False)  # the same module in both loops: the same optimization
        for batch in args.batches:
            request = Request.of(prompt=PROMPT, seed=0, steps=args.steps, sampler=args.sampler, width=args.size,
                                      height=args.size, num_images=batch, batch_size=batch)  # fmt: skip

            def ours(request: Request = request) -> None:
                list(make_images(model, request))

            def theirs(request: Request = request, batch: int = batch) -> None:
                generators = [torch.Generator("cpu").manual_seed(s) for s in request.seeds]
                pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, width=args.size, height=args.size,
                     num_images_per_prompt=batch, generator=generators)  # fmt: skip

            ours(), theirs()  # warm-up (and compilation)
            times: dict[str, list[float]] = {"ours": [], "diffusers": []}
            for round_index in range(args.rounds):
                pair = [("ours", ours), ("diffusers", theirs)]
                for name, run in pair if round_index % 2 == 0 else pair[::-1]:
                    sync()
                    start = time.perf_counter()
                    run()
                    sync()
                    times[name].append(time.perf_counter() - start)
            for name in ("ours", "diffusers"):
                seconds = statistics.median(times[name])
                tflops = flop_per_step * args.steps * batch / seconds
                share = f", {100 * tflops / peak:.1f}% of peak" if peak else ""
                print(f"{mode:8} batch {batch}  {name:9} {seconds / batch:7.3f} s/image  "
                      f"{args.steps / seconds:6.2f} U-Net steps/s  {tflops:7.1f} TFLOP/s{share}")  # fmt: skip
            ratio = statistics.median(times["ours"]) / statistics.median(times["diffusers"])
            print(f"{mode:8} batch {batch}  ratio ours / diffusers: {ratio:.3f}")


if __name__ == "__main__":
    main()
