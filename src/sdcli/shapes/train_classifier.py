"""Train the shapes model's noise-aware classifier, for classifier guidance (Dhariwal & Nichol 2021, section 4).

The data are the shapes model's own: the scenes its training encoded once with its VAE (`latents.pt` in the work
folder that `sdcli train-shapes` fills), noised to a random timestep of the same schedule, x_t = sqrt(alphabar_t)
x_0 + sqrt(1 - alphabar_t) eps. The classifier learns colour, shape and background from x_t and t with a
cross-entropy per head. Held-out scenes measure its accuracy per band of timesteps.

    python -m sdcli.shapes.train_classifier --work-dir runs/shapes --out src/sdcli/models/shapes/classifier
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from sdcli.guidance.classifier import NoisyClassifier
from sdcli.shapes.train import (
    checkpoint,
    load_latents,
    log,
    noise_like,
    noise_scheduler,
    resume,
    sample_posterior,
    training_device,
)
from sdcli.shapes.world import BACKGROUNDS, COLOURS, SHAPES

HEADS = {"color": list(COLOURS), "shape": list(SHAPES), "background": list(BACKGROUNDS)}
ATTRIBUTES = {"color": "colour", "shape": "shape", "background": "background"}  # head -> Scene field
BANDS = ((0, 250), (250, 500), (500, 750), (750, 1000))  # timestep bands of the held-out accuracy


@dataclass(frozen=True)
class ClassifierConfig:
    seed: int = 0
    channels: tuple[int, ...] = (32, 64, 64)
    steps: int = 2000
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    held_out: int = 2048  # the last scenes of latents.pt, never trained on
    checkpoint_every: int = 500


def labels(scenes: list) -> dict[str, torch.Tensor]:
    """Each head's class index per scene, (N,) each."""
    return {
        head: torch.tensor([names.index(getattr(s, ATTRIBUTES[head])) for s in scenes]) for head, names in HEADS.items()
    }


def noisy_latents(data: dict, idx: torch.Tensor, t: torch.Tensor, scheduler: DDPMScheduler) -> torch.Tensor:
    """x_t for scenes idx at timesteps t, (B, 4, h, w), from the encoder's posteriors (a fresh sample each time)."""
    x0 = sample_posterior(data["mean"][idx], data["std"][idx]) * data["scaling_factor"]
    return scheduler.add_noise(x0, noise_like(x0), t)


@torch.no_grad()
def held_out_accuracy(classifier: NoisyClassifier, data: dict, y: dict, scheduler, cfg: ClassifierConfig) -> dict:
    """Accuracy per head and timestep band on the held-out scenes (fixed noise, so runs compare)."""
    torch.manual_seed(cfg.seed + 7)
    device = data["mean"].device
    idx = torch.arange(len(data["scenes"]) - cfg.held_out, len(data["scenes"]), device=device)
    result = {}
    for lo, hi in BANDS:
        t = torch.randint(lo, hi, (len(idx),)).to(device)
        logits = classifier(noisy_latents(data, idx, t, scheduler), t)
        result[f"t{lo}-{hi}"] = {
            head: round((logits[head].argmax(-1) == y[head][idx]).float().mean().item(), 3) for head in HEADS
        }
    return result


def train_classifier(
    work: Path, out: Path, cfg: ClassifierConfig = ClassifierConfig(), device: torch.device | None = None
) -> dict:
    """Train (or resume) the classifier from `work`/latents.pt; save it to `out`; return its held-out accuracy."""
    device = device or training_device()
    data = load_latents(work / "latents.pt")
    data["mean"], data["std"] = data["mean"].to(device), data["std"].to(device)  # (N, 4, 16, 16) each
    y = {head: classes.to(device) for head, classes in labels(data["scenes"]).items()}
    scheduler = noise_scheduler()
    torch.manual_seed(cfg.seed)
    classifier = NoisyClassifier(heads=HEADS, block_out_channels=cfg.channels).to(device)
    opt = torch.optim.AdamW(classifier.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 1)
    ckpt = work / "classifier.pt"
    start = resume(ckpt, classifier, opt, rng, "classifier")
    log(f"classifier: {sum(p.numel() for p in classifier.parameters()) / 1e6:.2f}M parameters")
    n_train = len(data["scenes"]) - cfg.held_out
    t0 = time.time()
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        idx = torch.from_numpy(rng.integers(n_train, size=cfg.batch)).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch,)).to(device)
        logits = classifier(noisy_latents(data, idx, t, scheduler), t)
        loss = sum(F.cross_entropy(logits[head], y[head][idx]) for head in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            log(f"classifier step {step + 1}/{cfg.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            checkpoint(ckpt, classifier, opt, rng, step + 1)
    classifier.eval()
    accuracy = held_out_accuracy(classifier, data, y, scheduler, cfg)
    log(f"held-out accuracy: {accuracy}")
    classifier.to("cpu").save_pretrained(out, safe_serialization=True)
    log(f"saved the classifier to {out}")
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/shapes"), help="the shapes model's work folder")
    parser.add_argument("--out", type=Path, required=True, help="where to save the classifier")
    parser.add_argument("--steps", type=int, default=ClassifierConfig.steps)
    args = parser.parse_args()
    if not (args.work_dir / "latents.pt").is_file():
        parser.error(f"{args.work_dir}/latents.pt not found: run `sdcli train-shapes --work-dir {args.work_dir}` first")
    train_classifier(args.work_dir, args.out, ClassifierConfig(steps=args.steps))


if __name__ == "__main__":
    main()
