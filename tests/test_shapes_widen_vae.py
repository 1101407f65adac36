"""`python -m sdcli.shapes.widen_vae` on a few steps: it rewrites a copy of the shapes model's VAE, resumes from its
checkpoint, and holds the world's scenes to the original posterior."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from sdcli.errors import UsageError
from sdcli.loading.references import builtin_root
from sdcli.shapes.widen_vae import (
    DRAWN_CFG,
    WidenConfig,
    drawn_latents,
    reconstructions_judged_right,
    widen,
    world_and_new_scenes,
)
from sdcli.shapes.world import full_captions, render

FEW = {"drawn_seeds": 1, "drawn_steps": 1, "keep_drawn": 2}  # the base model's latents: one seed, one step each


def test_a_batch_mixes_the_world_s_scenes_and_other_colours():
    x, own = world_and_new_scenes(np.random.default_rng(0), WidenConfig(batch=64))
    assert x.shape == (64, 3, 64, 64) and 10 < int(own.sum()) < 54
    assert x.min() >= -1 and x.max() <= 1


def test_the_drawn_latents_are_those_the_loop_decodes():
    model = builtin_root() / "shapes"
    z = drawn_latents(model, seeds=1, steps=2)  # (N, 4, 16, 16)
    assert z.shape == ((len(full_captions()) + 18) * len(DRAWN_CFG), 4, 16, 16)
    from sdcli.engine import load_for, make_images
    from sdcli.recipe import Request

    caption = full_captions()[0][0]
    request = Request.of(prompt=caption, seed=0, cfg=DRAWN_CFG[0], steps=2, model=str(model))
    (made,) = make_images(load_for(request), request)
    vae = AutoencoderKL.from_pretrained(model / "vae").eval()
    with torch.no_grad():
        decoded = vae.decode(z[:1]).sample  # (1, 3, 64, 64): the first caption at the first scale
    pixels = ((decoded[0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    assert np.abs(pixels - np.asarray(made.image, dtype=np.float64)).max() <= 1


def test_widening_rewrites_the_vae_resumes_and_keeps_the_world_s_latents(tmp_path: Path):
    model = tmp_path / "shapes"
    shutil.copytree(builtin_root() / "shapes", model)
    (model / "vae" / "widened.json").unlink(missing_ok=True)  # as train-shapes leaves it
    config = WidenConfig(steps=2, batch=2, **FEW)
    widen(model, tmp_path / "work", config)
    two = AutoencoderKL.from_pretrained(model / "vae")
    widen(model, tmp_path / "work", WidenConfig(steps=3, batch=2, **FEW))  # continues from step 2
    three = AutoencoderKL.from_pretrained(model / "vae")
    original = AutoencoderKL.from_pretrained(builtin_root() / "shapes" / "vae")
    changed = [k for k, v in three.state_dict().items() if not torch.equal(v, original.state_dict()[k])]
    assert changed and any(not torch.equal(v, two.state_dict()[k]) for k, v in three.state_dict().items())
    from sdcli.shapes.world import random_scene

    scene = random_scene(np.random.default_rng(5))
    x = torch.from_numpy(render(scene)[None]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        drift = (three.encode(x).latent_dist.mean - original.encode(x).latent_dist.mean).abs().max()
    assert drift < 0.5  # three steps at a small learning rate stay near the original posterior


def test_a_widened_vae_is_not_widened_again(tmp_path: Path):
    """Done, the model's VAE is marked: widening it again from nothing (another work folder) is refused, as it would
    hold the world to the widened VAE rather than the one its U-Net was trained on; the same work folder resumes."""
    model = tmp_path / "shapes"
    shutil.copytree(builtin_root() / "shapes", model)
    (model / "vae" / "widened.json").unlink(missing_ok=True)
    widen(model, tmp_path / "work", WidenConfig(steps=1, batch=2, **FEW))
    assert json.loads((model / "vae" / "widened.json").read_text())["steps"] == 1
    with pytest.raises(UsageError, match="is widened already"):
        widen(model, tmp_path / "other", WidenConfig(steps=1, batch=2, **FEW))
    widen(model, tmp_path / "work", WidenConfig(steps=1, batch=2, **FEW))  # at its last step: the same VAE again


def test_the_built_in_vae_gives_back_the_world_but_not_pink():
    """Why widening exists: the built-in VAE learned the world's six colours as a palette. Its reconstructions of
    the world's scenes keep their colour; of pink scenes, none do (they come back orange or yellow)."""
    vae = AutoencoderKL.from_pretrained(builtin_root() / "shapes" / "vae").eval()
    assert reconstructions_judged_right(vae, None, scenes=16) >= 15
    assert reconstructions_judged_right(vae, "pink", scenes=16) == 0
