"""`sdcli train-shapes` end to end on a few steps: it saves a model that sdcli loads and runs, and resumes."""

import json

import numpy as np
import torch
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.loading.components import load_model
from sdcli.loading.references import resolve_model


def test_train_shapes_saves_a_loadable_model_and_resumes(tmp_path):
    out, work = tmp_path / "model", tmp_path / "work"
    args = ["train-shapes", "--out", str(out), "--work-dir", str(work), "--vae-steps", "2"]
    args += ["--scenes", "64"]
    result = CliRunner().invoke(app, [*args, "--unet-steps", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["tokenizer"][1] == "CLIPTokenizer"
    assert 0.1 < json.loads((out / "vae" / "config.json").read_text())["scaling_factor"] < 100

    model = load_model(resolve_model(str(out)), torch.device("cpu"), torch.float32)
    assert model.native_size == (64, 64)
    request = make_request(prompt="a red circle on a white background", seed=0, steps=2, model=str(out))
    (made,) = make_images(model, request)
    assert np.asarray(made.image).shape == (64, 64, 3)

    # a rerun with one more step continues from the checkpoints instead of starting again
    result = CliRunner().invoke(app, [*args, "--unet-steps", "3"], catch_exceptions=False)
    assert result.exit_code == 0
    for stage in ("vae", "denoiser"):
        assert f"{stage}: resuming at step 2" in result.stderr

    # another recipe in the same work folder would mix two runs' checkpoints: refused, nothing written
    before = {f: f.stat().st_mtime_ns for f in work.rglob("*") if f.is_file()}
    result = CliRunner().invoke(app, [*args, "--unet-steps", "3", "--unet-batch", "8"])
    assert result.exit_code == 2
    assert "holds a run of another recipe (unet_batch 64 -> 8)" in result.stderr
    assert {f: f.stat().st_mtime_ns for f in work.rglob("*") if f.is_file()} == before


def test_train_shapes_rejects_a_step_count_below_one(tmp_path):
    result = CliRunner().invoke(app, ["train-shapes", "--out", str(tmp_path / "m"), "--unet-steps", "0"])
    assert result.exit_code == 2
    assert "--unet-steps must be >= 1" in result.stderr
    assert not (tmp_path / "m").exists()


def test_vae_logvar_init_starts_the_posterior_nearly_deterministic():
    from dataclasses import replace

    from sdcli.shapes.train import TrainConfig, build_vae, render_batch

    _, x = render_batch(np.random.default_rng(0), 2)  # (2, 3, 64, 64)
    torch.manual_seed(0)
    with torch.no_grad():
        diffusers_init = build_vae(replace(TrainConfig(), vae_logvar_init=None)).encode(x).latent_dist.std
        torch.manual_seed(0)
        tight = build_vae(replace(TrainConfig(), vae_logvar_init=-6.0)).encode(x).latent_dist.std
    assert diffusers_init.mean() > 0.5
    assert np.exp(-3.0) / 2 < tight.mean() < np.exp(-3.0) * 2  # std exp(logvar / 2), up to the random weights' part
