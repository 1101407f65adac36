"""The shapes world as a `sdcli.workflows.distribution.World`: what sweeps of the built-in model measure FID,
precision, recall and coverage against.

- draws: scenes from `world.py` with the attributes the prompt names fixed and the rest (the other attributes, the
  size, the position) drawn as the world draws them, rendered;
- features: the model's own noise-aware classifier (`classifier/`) at t = 0 on the VAE's latents of an image (the
  posterior mean times the scaling factor, as the classifier was trained on), pooled before its heads: 64 numbers
  per image. On 400 held-out rendered scenes, nearest-centroid classification in this space gets colour, shape and
  background 100% right; a linear read-out explains size with R^2 0.57 and the position with 0.2-0.3 (the pooling
  is nearly translation invariant), so position diversity shows in `coverage` rather than in FID or recall;
- free attributes: the judge's read-out (`judge.read_out`) of what the prompt does not name.

`python -m sdcli.shapes.reference "a blue square" --images 24` prints the floor of the scores at that many seeds:
what draws of the world itself score against the reference a sweep uses (`world_floor`).
"""

from __future__ import annotations

import argparse
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from sdcli.guidance.classifier import SUBFOLDER, NoisyClassifier, load_classifier
from sdcli.output.console import setup_logging
from sdcli.shapes.judge import named_attributes, read_out
from sdcli.shapes.world import IMAGE_SIZE, random_scene_given, render
from sdcli.workflows.distribution import world_floor

BATCH = 256  # images per VAE and classifier call


def _pixels(image: Image.Image) -> np.ndarray:
    """(64, 64, 3) uint8: the image at the world's size (the judge's bins and the features are the world's)."""
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(image)


class ShapesWorld:
    """The world of a shapes model folder (the built-in one, or a copy): its VAE and classifier load on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @cached_property
    def _encoders(self) -> tuple[AutoencoderKL, NoisyClassifier]:
        vae = AutoencoderKL.from_pretrained(self.folder, subfolder="vae", use_safetensors=True).eval()
        return vae.requires_grad_(False), load_classifier(self.folder, str(self.folder), torch.device("cpu"))

    def draw(self, prompt: str, count: int, seed: int) -> list[Image.Image]:
        """`count` scenes of the world for `prompt`, rendered: its named attributes fixed, the rest drawn freely."""
        rng = np.random.default_rng(seed)
        fixed = named_attributes(prompt)
        return [Image.fromarray(render(random_scene_given(rng, fixed))) for _ in range(count)]

    def features(self, images: list[Image.Image]) -> np.ndarray:
        """(N, 64) float64: the classifier's pooled features at t = 0 of each image's latents."""
        vae, classifier = self._encoders
        chunks = []
        for start in range(0, len(images), BATCH):
            pixels = np.stack([_pixels(im) for im in images[start : start + BATCH]])  # (B, 64, 64, 3)
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, 64, 64) in [-1, 1]
            with torch.inference_mode():
                latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor  # (B, 4, 16, 16)
                chunks.append(classifier.features(latents, torch.zeros(len(x))).double().numpy())  # (B, 64)
        return np.concatenate(chunks)

    def free_attributes(self, images: list[Image.Image], prompt: str) -> list[dict[str, str]]:
        """Per image, the judge's read-out of every attribute `prompt` does not name (size and position always)."""
        named = named_attributes(prompt)
        return [{k: v for k, v in read_out(_pixels(im)).items() if k not in named} for im in images]


def world_for(folder: Path) -> ShapesWorld | None:
    """The world of a shapes model folder that ships its classifier (the feature space); None for one without."""
    return ShapesWorld(folder) if (folder / SUBFOLDER / "config.json").is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description="The floor of a sweep's distribution scores for a prompt.")
    parser.add_argument("prompt")
    parser.add_argument("--images", type=int, default=24, help="images per scale (the sweep's seeds)")
    parser.add_argument("--draws", type=int, default=20, help="draws of the world to average over")
    parser.add_argument("--model", type=Path, default=Path(__file__).parents[1] / "models" / "shapes")
    args = parser.parse_args()
    setup_logging(verbose=False)
    for name, (mean, sd) in world_floor(ShapesWorld(args.model), args.prompt, args.images, args.draws).items():
        print(f"{name:<10} {mean:.3f} +- {sd:.3f}")


if __name__ == "__main__":
    main()
