"""Images of different lines that differ only in their prompts and seeds share U-Net calls: which lines group, how
many U-Net calls a batch makes, and that an image made in a mixed batch is the image made alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import make_request
from typer.testing import CliRunner

import sdcli.engine
from sdcli.cli import app
from sdcli.engine import make_batched
from sdcli.loading.components import Model
from sdcli.workflows.batch import Line, plan, share_batches

FAST = {"steps": 2, "sampler": "euler", "cfg": 7.5}
# Latents of |x| up to ~6: a batch of another size rounds float32 differently (~1e-5 seen), as --batch-size always
# has; so pixels may differ by one level where a value lies on a rounding edge.
ATOL = 1e-4
LONG = " ".join(["a red circle on a white background"] * 12)  # 84 words: two chunks of 75 tokens


@pytest.fixture
def unet_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size (rows, all branches) of every U-Net call the generate loop makes."""
    sizes: list[int] = []
    make_denoiser = sdcli.engine.unet_denoiser

    def counted(unet):
        denoiser = make_denoiser(unet)

        def call(x, t, cond):
            sizes.append(x.shape[0])
            return denoiser(x, t, cond)

        return call

    monkeypatch.setattr(sdcli.engine, "unet_denoiser", counted)
    return sizes


@pytest.fixture
def latents(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The clean latents (B, C, h, w) of every batch the generate loop denoises."""
    made: list[torch.Tensor] = []
    denoise = sdcli.engine.denoise

    def recorded(*args, **kwargs) -> torch.Tensor:
        made.append(denoise(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(sdcli.engine, "denoise", recorded)
    return made


def close_pixels(a: Image.Image, b: Image.Image) -> bool:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()) <= 1


def images_of(batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    for batch in batches:
        yield from batch


def test_lines_differing_only_in_prompts_and_seeds_share_batches(tmp_path: Path):
    lines = [
        Line(1, make_request("a red circle", seed=0, num_images=2, **FAST)),
        Line(2, make_request("a blue square", seed=7, negative_prompt="red", **FAST)),
        Line(3, make_request("a red circle", seed=0, **{**FAST, "cfg": 3.0})),
        Line(4, make_request("a cat", seed=1, negative_prompt="dog", **FAST)),
        Line(5, make_request("a dog", seed=2, **{**FAST, "steps": 3})),
        Line(6, make_request("a black square", seed=3, **FAST)),
    ]
    batches = share_batches(plan(lines, tmp_path), 4)
    assert [[(p.line.number, p.index) for p in batch] for batch in batches] == [
        [(1, 0), (1, 1), (2, 0), (4, 0)], [(6, 0)], [(3, 0)], [(5, 0)],
    ]  # fmt: skip


def test_separate_negatives_group_by_how_many_branches_they_run(tmp_path: Path):
    separate = {**FAST, "neg_mode": "separate"}
    lines = [
        Line(1, make_request("a", seed=0, negative_prompt="red", **separate)),
        Line(2, make_request("b", seed=0, negative_prompt="blue", **separate)),  # one negative branch, as line 1
        Line(3, make_request("c", seed=0, **separate)),  # an empty negative runs no branch
        Line(4, make_request("d", seed=0, negative_prompt="red", extra_negative_prompts=("blue",), **separate)),
    ]
    batches = share_batches(plan(lines, tmp_path), 8)
    assert [[p.line.number for p in batch] for batch in batches] == [[1, 2], [3], [4]]


def test_a_mixed_batch_makes_each_image_as_alone(loaded: Model, unet_calls: list[int], latents: list[torch.Tensor]):
    requests = [
        make_request("a red circle", seed=3, negative_prompt="blue", **FAST).recipe,
        make_request("a green square on a black background", seed=11, **FAST).recipe,
        make_request("a red circle", seed=4, negative_prompt="blue", **FAST).recipe,
        make_request("a cat", seed=3, negative_prompt="white background", **FAST).recipe,
    ]
    mixed = list(make_batched(loaded, requests, 4))
    assert unet_calls == [4 * 2] * 2  # one call per step: 4 images x (negative, prompt)
    alone = []
    for request in requests:
        (made,) = make_batched(loaded, [request])
        alone.append(made)
    assert all(close_pixels(m.image, a.image) for m, a in zip(mixed, alone, strict=True))
    assert [(m.record.prompt, m.record.negative_prompt, m.record.seed) for m in mixed] == [
        (r.prompt, r.negative_prompt, r.seed) for r in requests
    ]
    assert [m.record for m in mixed] == [a.record for a in alone]
    assert [m.unet_evaluations for m in mixed] == [2 * 2] * 4


def test_separate_negatives_of_other_texts_batch_too(loaded: Model, unet_calls: list[int], latents: list[torch.Tensor]):
    separate = {**FAST, "neg_mode": "separate"}
    requests = [
        make_request("a red circle", seed=1, negative_prompt="blue", extra_negative_prompts=("square",), **separate),
        make_request("a blue square", seed=2, negative_prompt="red", extra_negative_prompts=("circle",), **separate),
    ]
    requests = [r.recipe for r in requests]
    mixed = list(make_batched(loaded, requests, 2))
    assert unet_calls == [2 * 4] * 2  # 2 images x (empty, prompt, 2 negatives)
    together = list(images_of(latents))
    for request, row, made in zip(requests, together, mixed, strict=True):
        latents.clear()
        list(make_batched(loaded, [request]))
        assert torch.allclose(latents[0][0], row, rtol=0, atol=ATOL)
        assert made.record.extra_negative_prompts == request.extra_negative_prompts


def test_contexts_of_other_lengths_are_not_batched(loaded: Model, unet_calls: list[int]):
    """A long prompt's context (two chunks) cannot stack with a short one's, and padding would change the image."""
    recipes = [make_request(prompt, seed=i, **FAST).recipe for i, prompt in enumerate(["a", LONG, LONG, "b"])]
    made = list(make_batched(loaded, recipes, 4))
    assert unet_calls == [2] * 2 + [4] * 2 + [2] * 2  # runs of equal length: [a], [LONG, LONG], [b]
    assert [m.record.prompt for m in made] == ["a", LONG, LONG, "b"]


def test_requests_that_differ_in_other_settings_are_refused(loaded: Model):
    with pytest.raises(ValueError, match="differ only in prompts and seed"):
        recipes = [make_request("a", seed=0, **FAST).recipe, make_request("b", seed=0, **{**FAST, "cfg": 2.0}).recipe]
        list(make_batched(loaded, recipes))


def test_batch_files_match_one_image_per_call(tiny_model: Path, tmp_path: Path, unet_calls: list[int]):
    """Six lines at --batch-size 4: the five images that share settings in two batches, the others alone; the
    files and the manifest are those of a run one image per U-Net call."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "a red circle", "n": 2}\n{"prompt": "a blue square", "neg": "red", "seed": 5}\n'
        '{"prompt": "a cat", "cfg": 3}\n{"prompt": "a dog", "seed": 9}\n{"prompt": "a gray triangle", "steps": 3}\n'
        '{"prompt": "a black circle", "neg": "white"}\n'
    )
    common = ["batch", str(prompts), "-m", str(tiny_model), "--steps", "2", "--sampler", "euler", "--seed", "0"]
    batched = CliRunner().invoke(app, [*common, "--batch-size", "4", "--out-dir", str(tmp_path / "b")])
    assert batched.exit_code == 0, batched.stderr
    assert unet_calls == [8, 8, 2, 2, 2, 2, 2, 2, 2]  # 4 images, the group's fifth, the cfg 3 line, the steps 3 line
    unet_calls.clear()
    single = CliRunner().invoke(app, [*common, "--out-dir", str(tmp_path / "s")])
    assert single.exit_code == 0, single.stderr
    assert len(unet_calls) == 7 * 2 + 1
    names = sorted(p.name for p in (tmp_path / "b").glob("*.png"))
    assert names == sorted(p.name for p in (tmp_path / "s").glob("*.png")) and len(names) == 7
    assert all(close_pixels(Image.open(tmp_path / "b" / n), Image.open(tmp_path / "s" / n)) for n in names)

    def manifest(folder: Path) -> list[dict]:
        return [
            {k: v for k, v in json.loads(line).items() if k not in ("path", "seconds")}
            for line in (folder / "manifest.jsonl").read_text().splitlines()
        ]

    made = manifest(tmp_path / "b")
    assert made == manifest(tmp_path / "s")
    assert [(r["prompt"], r["negative_prompt"], r["seed"]) for r in made[:3]] == [
        ("a red circle", "", 0), ("a red circle", "", 1), ("a blue square", "red", 5),
    ]  # fmt: skip
