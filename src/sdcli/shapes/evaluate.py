"""Measure the built-in model with its judge: prompt adherence and diversity across guidance scales.

Adherence is the fraction of images whose judged colour, shape and background match the caption's; diversity is
the mean pairwise distance between images of one caption made from different seeds (pixel space, RGB in [0, 1],
root mean square per pixel). Images come from sdcli's own loop (`make_images`), with the default sampler and steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from sdcli.metrics import diversity
from sdcli.shapes.judge import judge
from sdcli.shapes.world import full_captions


@dataclass(frozen=True)
class Scores:
    cfg: float
    images: int
    colour: float  # fractions of images judged right
    shape: float
    background: float
    all: float  # colour, shape and background all right
    diversity: float  # mean pairwise RMS pixel distance between seeds of one caption
    seconds: float


def adherence(images: list[Image.Image], expected: list[tuple[str, str, str]]) -> np.ndarray:
    """(N, 3) bools: colour, shape and background judged as expected, per image."""
    rows = []
    for image, (colour, shape, background) in zip(images, expected):
        verdict = judge(np.asarray(image.convert("RGB")))
        rows.append((verdict.colour == colour, verdict.shape == shape, verdict.background == background))
    return np.array(rows, dtype=bool).reshape(-1, 3)


def score(model, cfg: float, seeds: list[int], **settings) -> Scores:
    """Scores over the 54 full captions, each with every seed, at guidance scale `cfg`."""
    from sdcli.generate import make_images
    from sdcli.settings import Request

    start = time.perf_counter()
    right, spreads = [], []
    for caption, colour, shape, background in full_captions():
        request = Request(
            prompt=caption,
            seed=seeds[0],
            num_images=len(seeds),
            batch_size=len(seeds),
            cfg=cfg,
            model=model.reference,
            **settings,
        )
        images = [made.image for made in make_images(model, request)]
        right.append(adherence(images, [(colour, shape, background)] * len(images)))
        spreads.append(diversity(images))
    ok = np.concatenate(right)  # (54 * seeds, 3)
    return Scores(
        cfg=cfg,
        images=len(ok),
        colour=float(ok[:, 0].mean()),
        shape=float(ok[:, 1].mean()),
        background=float(ok[:, 2].mean()),
        all=float(ok.all(axis=1).mean()),
        diversity=float(np.mean(spreads)),
        seconds=time.perf_counter() - start,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--cfg", default="1,3,7.5", help="comma-separated guidance scales")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per caption (0..N-1)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sampler", default="dpm++2m-karras")
    args = parser.parse_args(argv)

    import torch

    from sdcli.loading import load_model
    from sdcli.references import resolve_model

    model = load_model(resolve_model(args.model), torch.device("cpu"), torch.float32)
    for cfg in (float(c) for c in args.cfg.split(",")):
        scores = score(model, cfg, list(range(args.seeds)), steps=args.steps, sampler=args.sampler)
        print(json.dumps(asdict(scores)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
