"""CPU benchmark: sdcli with its defaults (`--dtype auto`: bf16 on a CPU with AMX, else fp32) against diffusers'
StableDiffusionPipeline with its fp32 default, on SD 1.5's architecture (random weights), the whole run of one image,
alternating in one process. Prints the ratio of wall times ours / diffusers (targets: at most 0.45 where auto picks
bf16; at most 1.00 in fp32).

    python benchmarks/bench_cpu.py [--size 256] [--steps 10] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
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
from sdcli.loading.devices import DTYPE_NAMES, cpu_has_bf16_matrix_units, resolve_dtype
from sdcli.recipe import Request
from sdcli.sampling.samplers import get_sampler

PROMPT = "a photograph of an astronaut riding a horse"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    theirs_model = sd15_random(cpu, torch.float32)
    dtype = resolve_dtype("auto", cpu)
    ours_model = copy.copy(theirs_model)
    if dtype != torch.float32:  # sdcli's own components in its default dtype (the VAE stays fp32 only for fp16)
        ours_model.unet = copy.deepcopy(theirs_model.unet).to(dtype)
        ours_model.text_encoder = copy.deepcopy(theirs_model.text_encoder).to(dtype)
        ours_model.vae = copy.deepcopy(theirs_model.vae).to(dtype)
        ours_model.dtype = dtype
    request = Request.of(prompt=PROMPT, seed=0, steps=args.steps, width=args.size, height=args.size)
    sampler = get_sampler(request.sampler)
    pipe = StableDiffusionPipeline(
        vae=theirs_model.vae, text_encoder=theirs_model.text_encoder, tokenizer=theirs_model.tokenizer,
        unet=theirs_model.unet,
        scheduler=getattr(diffusers, sampler.scheduler).from_config(theirs_model.scheduler_config, **sampler.settings),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)

    def ours() -> None:
        list(make_images(ours_model, request))

    def theirs() -> None:
        pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=request.cfg, width=args.size, height=args.size,
             generator=torch.Generator("cpu").manual_seed(0))  # fmt: skip

    ours(), theirs()  # warm-up: one-time costs (allocator, kernels' first calls) hit neither timed run
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for round_index in range(args.rounds):
        pair = [("ours", ours), ("diffusers", theirs)]
        for name, run in pair if round_index % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    print(f"cpu: {torch.backends.cpu.get_cpu_capability()}, AMX bf16: {cpu_has_bf16_matrix_units()}, "
          f"threads: {torch.get_num_threads()}")  # fmt: skip
    print(f"SD 1.5 architecture, {args.size}x{args.size}, {args.steps} steps, {request.sampler}, {args.rounds} rounds")
    print(
        f"median seconds per image: sdcli defaults ({DTYPE_NAMES[dtype]}) {ours_s:.2f}, diffusers fp32 {theirs_s:.2f}"
    )
    print(f"ratio sdcli defaults / diffusers fp32: {ours_s / theirs_s:.3f}")


if __name__ == "__main__":
    main()
