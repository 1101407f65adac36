"""Distribution-level measurements (`sdcli.workflows.distribution`) with known answers: the Frechet distance of
Gaussians in closed form, k-NN precision and recall on points placed by hand, total variation; then in the shapes
world's feature space (`sdcli.shapes.reference`): two draws of the world agree, a generator that repeats one image
or shifts a colour does not; and the judge's read-out of size and position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdcli.shapes.judge import layout, read_out
from sdcli.shapes.reference import ShapesWorld, world_for
from sdcli.shapes.world import COLOURS, Scene, random_scene_given, render
from sdcli.workflows.distribution import (
    coverage,
    distribution_scores,
    fid,
    frechet_distance,
    precision_recall,
    reference_for,
    total_variation,
)

SHAPES = Path(__file__).resolve().parents[1] / "src" / "sdcli" / "models" / "shapes"
needs_shapes = pytest.mark.skipif(
    not (SHAPES / "classifier" / "config.json").exists(), reason="the built-in shapes model is not built"
)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


# The Frechet distance.


def test_frechet_distance_of_gaussians_with_a_shared_basis_is_the_closed_form():
    """Covariances R diag(a) R^T and R diag(b) R^T commute: the distance is |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    r = _rotation(5, 0)
    a, b = np.array([1.0, 2.0, 0.5, 4.0, 0.1]), np.array([3.0, 1.0, 0.5, 1.0, 2.0])
    mu1, mu2 = np.arange(5.0), np.arange(5.0)[::-1]
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, r @ np.diag(a) @ r.T, mu2, r @ np.diag(b) @ r.T) == pytest.approx(expected)


def test_frechet_distance_to_a_standard_gaussian_is_the_closed_form():
    """S_1 = I: tr(I + S - 2 S^(1/2)) = sum over S's eigenvalues l of (1 - sqrt l)^2, for any S."""
    m = np.random.default_rng(1).normal(size=(4, 4))
    sigma = m @ m.T + 0.1 * np.eye(4)
    expected = ((1 - np.sqrt(np.linalg.eigvalsh(sigma))) ** 2).sum() + 4.0  # means 0 and (1, 1, 1, 1)
    assert frechet_distance(np.zeros(4), np.eye(4), np.ones(4), sigma) == pytest.approx(expected)


def test_frechet_distance_of_a_point_mass_is_the_mean_gap_plus_the_spread():
    """Identical images (S_1 = 0, a singular product): |mu1 - mu2|^2 + tr(S_2)."""
    sigma = np.diag([1.0, 2.0, 3.0])
    assert frechet_distance(np.zeros(3), np.zeros((3, 3)), np.ones(3), sigma) == pytest.approx(3.0 + 6.0)


def test_fid_of_samples_approaches_the_distance_of_their_gaussians():
    rng = np.random.default_rng(2)
    r = _rotation(3, 3)
    a, b = np.array([1.0, 0.25, 2.0]), np.array([0.5, 1.0, 1.0])
    x = rng.normal(size=(40000, 3)) * np.sqrt(a) @ r.T  # (N, 3) ~ N(0, R diag(a) R^T)
    y = rng.normal(size=(40000, 3)) * np.sqrt(b) @ r.T + 1.0
    expected = 3.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid(x, y) == pytest.approx(expected, abs=0.05)
    assert fid(x[:20000], x[20000:]) < 0.01


# Precision, recall, total variation.


def test_precision_and_recall_by_hand():
    """Reference 0, 1, ..., 9 on a line: with k = 1 each ball reaches its neighbour, radius 1. Of the generated
    points 0.5 and 100, one is inside (precision 1/2); their own k = 1 radius is 99.5, so the ball around 0.5 holds
    every reference point (recall 1)."""
    reference = np.arange(10.0)[:, None]
    generated = np.array([[0.5], [100.0]])
    assert precision_recall(generated, reference, k=1) == (0.5, 1.0)
    assert precision_recall(reference, reference, k=3) == (1.0, 1.0)
    far = reference + 1000.0
    assert precision_recall(far, reference, k=3) == (0.0, 0.0)


def test_total_variation_and_coverage():
    assert total_variation(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.25)
    assert total_variation(["a"], ["b"]) == 1.0
    generated = [{"size": "small", "x": "left"}, {"size": "small", "x": "right"}]
    reference = [{"size": "small", "x": "left"}, {"size": "large", "x": "right"}]
    assert coverage(generated, reference) == pytest.approx(1 - (0.5 + 0.0) / 2)
    assert coverage([{}, {}], [{}, {}]) is None  # the prompt leaves nothing free


# The judge's read-out of what the world draws freely.


def test_read_out_finds_the_size_and_position_the_scene_was_drawn_with():
    for scene in (Scene("square", "red", "white", 20, 44, 24), Scene("triangle", "blue", "black", 40, 30, 40),
                  Scene("circle", "green", "gray", 32, 32, 44)):  # fmt: skip
        cx, cy, size = layout(render(scene))
        assert (cx, cy) == pytest.approx((scene.cx, scene.cy), abs=2.0)  # a triangle's box misses its apex's tip
        assert size == pytest.approx(scene.size, rel=0.1)
    assert read_out(render(Scene("square", "red", "white", 12, 52, 23))) == {
        "shape": "square", "colour": "red", "background": "white", "size": "small", "x": "left", "y": "bottom"
    }  # fmt: skip
    assert read_out(np.full((64, 64, 3), 20, dtype=np.uint8))["size"] == "none"


def test_a_draw_given_attributes_fixes_those_and_leaves_the_rest_free():
    rng = np.random.default_rng(0)
    scenes = [random_scene_given(rng, {"colour": "blue", "shape": "square"}) for _ in range(200)]
    assert {(s.colour, s.shape) for s in scenes} == {("blue", "square")}
    assert {s.background for s in scenes} == {"white", "black", "gray"}
    assert len({round(s.size) for s in scenes}) > 10


# In the shapes world's feature space.


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return world_for(SHAPES)


def _recoloured(image: Image.Image, old: tuple[int, int, int], new: tuple[int, int, int]) -> Image.Image:
    pixels = np.asarray(image).copy()  # (64, 64, 3)
    pixels[(pixels == old).all(axis=-1)] = new
    return Image.fromarray(pixels)


@needs_shapes
def test_two_draws_of_the_world_agree_and_a_collapsed_or_shifted_generator_does_not(world: ShapesWorld):
    prompt = "a blue square"
    reference = reference_for(world, prompt, 200, seed=1)
    draw = world.draw(prompt, 200, seed=2)
    same = distribution_scores(world, reference, draw, prompt)
    assert same.fid < 0.5 and same.recall > 0.85 and same.precision > 0.85 and same.coverage > 0.9
    repeated = distribution_scores(world, reference, [draw[1]] * 200, prompt)
    assert repeated.fid > 10 and repeated.recall < 0.05 and repeated.coverage < 0.5
    blue = COLOURS["blue"]
    shifts = [distribution_scores(world, reference, [_recoloured(im, blue, (blue[0] + d, blue[1], blue[2]))
                                                     for im in draw], prompt).fid for d in (40, 120)]  # fmt: skip
    assert same.fid * 5 < shifts[0] < shifts[1]


@needs_shapes
def test_the_classifier_features_separate_the_world_s_attributes(world: ShapesWorld):
    """Nearest class mean in feature space, fitted on 300 scenes of the world, names colour, shape and background of
    150 others right."""
    rng = np.random.default_rng(3)
    scenes = [random_scene_given(rng, {}) for _ in range(450)]
    features = world.features([Image.fromarray(render(s)) for s in scenes])  # (450, 64)
    for name in ("colour", "shape", "background"):
        labels = np.array([getattr(s, name) for s in scenes])
        classes = sorted(set(labels))
        means = np.stack([features[:300][labels[:300] == c].mean(0) for c in classes])  # (classes, 64)
        nearest = ((features[300:, None] - means[None]) ** 2).sum(-1).argmin(1)  # (150,)
        assert (np.array(classes)[nearest] == labels[300:]).mean() > 0.97, name
