"""Distribution-level measurements of generated images against a model's own world, on feature arrays.

- `frechet_distance`: FID's distance (Heusel et al. 2017) between Gaussians fitted to two sets of features, the
  closed form of Dowson & Landau (1982): |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).
- `precision_recall`: improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of
  balls around its points reaching their k-th nearest neighbour; precision is the fraction of generated points
  inside the reference manifold (fidelity), recall the fraction of reference points inside the generated one
  (diversity; Dhariwal & Nichol 2021, Table 4, report both beside FID).
- `coverage`: 1 - the mean total variation distance between the generated and the world's distribution of each
  attribute the prompt leaves free (not the k-NN "coverage" of Naeem et al. 2020).
- `World`: what a model's own world offers (the built-in shapes model's is `sdcli.shapes.reference.ShapesWorld`):
  draws of it for a prompt, a feature extractor, and a read-out of the attributes a prompt leaves free.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
from PIL import Image
from scipy import linalg

K_NEAREST = 3  # Kynkaanniemi et al.'s k
REFERENCE_IMAGES = 512  # the world's draw per prompt: FID's and coverage's reference (more when the sweep has more)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), means (D,) and covariances (D, D), as FID's
    reference code computes it: scipy's sqrtm of S_1 S_2, kept where finite even when the product is singular (fewer
    images than dimensions, or identical images, make it so; scipy's warning is silenced, as the reference code's
    disp=False does), else again with a small offset on the diagonals, and the real part of a root that rounding
    made complex."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)  # (D, D)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2  # (D,)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def fid(features: np.ndarray, reference: np.ndarray) -> float:
    """FID between two sets of features, (N, D) and (M, D): the Frechet distance of their sample Gaussians."""
    a, b = features.astype(np.float64), reference.astype(np.float64)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) Euclidean distances between the rows of a (N, D) and b (M, D)."""
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0))


def _inside(points: np.ndarray, support: np.ndarray, k: int) -> np.ndarray:
    """(N,) bools: whether each of points (N, D) lies in the k-NN manifold of support (M, D), the union of the balls
    around each support point reaching its k-th nearest neighbour in support."""
    radii = np.sort(_distances(support, support), axis=1)[:, k]  # (M,): column 0 is the point itself
    return (_distances(points, support) <= radii[None, :]).any(axis=1)


def precision_recall(features: np.ndarray, reference: np.ndarray, k: int = K_NEAREST) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of generated features (N, D) against reference
    features (M, D), k-NN manifolds with k neighbours; each set needs more than k points."""
    a, b = features.astype(np.float64), reference.astype(np.float64)
    return float(_inside(a, b, k).mean()), float(_inside(b, a, k).mean())


def total_variation(labels: list[str], reference: list[str]) -> float:
    """Total variation distance, half the L1 distance, between the empirical distributions of two label lists."""
    p, q = Counter(labels), Counter(reference)
    return 0.5 * sum(abs(p[v] / len(labels) - q[v] / len(reference)) for v in p.keys() | q.keys())


def coverage(attributes: list[dict[str, str]], reference: list[dict[str, str]]) -> float | None:
    """1 - the mean over attributes of the total variation distance between their generated and reference
    distributions (each image's attributes as {name: value}); 1 is the world's spread, 0 disjoint. None when the
    prompt leaves nothing free."""
    names = sorted(reference[0]) if reference else []
    if not names:
        return None
    gaps = [total_variation([a[n] for a in attributes], [r[n] for r in reference]) for n in names]
    return 1 - float(np.mean(gaps))


class World(Protocol):
    """A model's own world (the built-in shapes model's is `sdcli.shapes.reference.ShapesWorld`): the images it
    draws for a prompt (the attributes the prompt names fixed, the others free as the world draws them), features
    of images, and the attributes a prompt leaves free as read from an image."""

    def draw(self, prompt: str, count: int, seed: int) -> list[Image.Image]: ...

    def features(self, images: list[Image.Image]) -> np.ndarray: ...  # (N, D)

    def free_attributes(self, images: list[Image.Image], prompt: str) -> list[dict[str, str]]: ...


@dataclass(frozen=True)
class Reference:
    """The world's draw for one prompt, measured once: its features (M, D) and free attributes."""

    features: np.ndarray
    attributes: list[dict[str, str]]


def reference_for(world: World, prompt: str, count: int, seed: int = 0) -> Reference:
    images = world.draw(prompt, count, seed)
    return Reference(world.features(images), world.free_attributes(images, prompt))


def sweep_reference(world: World, prompt: str, images: int) -> Reference:
    """The reference a sweep with `images` seeds a scale measures against: REFERENCE_IMAGES (or `images`, when more)
    scenes of the world's draw with seed 0."""
    return reference_for(world, prompt, max(REFERENCE_IMAGES, images))


@dataclass(frozen=True)
class DistributionScores:
    """A set of generated images against the world's draw for its prompt; None where too few images to measure."""

    fid: float | None  # against the whole reference draw; needs 2 images
    precision: float | None  # against the reference draw's first N, as many as the images; needs more than k
    recall: float | None
    coverage: float | None  # None when the prompt leaves no attribute free


def distribution_scores(
    world: World, reference: Reference, images: list[Image.Image], prompt: str, k: int = K_NEAREST
) -> DistributionScores:
    """FID, precision and recall in the world's feature space, and coverage of what `prompt` leaves free."""
    features = world.features(images)  # (N, D)
    n = len(images)
    precision, recall = precision_recall(features, reference.features[:n], k) if n > k else (None, None)
    return DistributionScores(
        fid=fid(features, reference.features) if n > 1 else None,
        precision=precision,
        recall=recall,
        coverage=coverage(world.free_attributes(images, prompt), reference.attributes),
    )


def world_floor(world: World, prompt: str, images: int, draws: int) -> dict[str, tuple[float, float]]:
    """What a model that draws exactly as its world does would score at `images` seeds: the mean and standard
    deviation of each score over `draws` draws of the world (seeds 1 ..), each against the reference a sweep uses.
    Scores of generated images within about a deviation of these are at the floor."""
    reference = sweep_reference(world, prompt, images)
    runs = [asdict(distribution_scores(world, reference, world.draw(prompt, images, seed), prompt))
            for seed in range(1, draws + 1)]  # fmt: skip
    return {name: (float(np.mean([r[name] for r in runs])), float(np.std([r[name] for r in runs])))
            for name in runs[0] if runs[0][name] is not None}  # fmt: skip
