"""`python -m sdcli.shapes.widen_vae` on a few steps: it rewrites a copy of the shapes model's VAE, resumes from its
checkpoint, and holds the world's scenes to the original posterior."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from sdcli.loading.references import builtin_root
from sdcli.shapes.widen_vae import WidenConfig, scenes_of_any_colour, widen
from sdcli.shapes.world import render


def test_a_batch_mixes_the_world_s_scenes_and_other_colours():
    x, own = scenes_of_any_colour(np.random.default_rng(0), WidenConfig(batch=64))
    assert x.shape == (64, 3, 64, 64) and 10 < int(own.sum()) < 54
    assert x.min() >= -1 and x.max() <= 1


def test_widening_rewrites_the_vae_resumes_and_keeps_the_world_s_latents(tmp_path: Path):
    model = tmp_path / "shapes"
    shutil.copytree(builtin_root() / "shapes", model)
    config = WidenConfig(steps=2, batch=2)
    widen(model, tmp_path / "work", config)
    two = AutoencoderKL.from_pretrained(model / "vae")
    widen(model, tmp_path / "work", WidenConfig(steps=3, batch=2))  # continues from step 2
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
