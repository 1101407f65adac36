"""The hires fix: a first pass at the size asked for, upscaled (in pixels or latents), denoised again at the larger
size, in one command with one seed; recorded and replayed; its bad input refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_bad_input import refused
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.loading.components import Model
from sdcli.modes.hires import hires_size
from sdcli.output.metadata import settings_from_png

FAST = {"steps": 4, "sampler": "euler", "seed": 3}


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_the_second_pass_size_is_the_first_times_the_scale_on_the_latent_grid():
    assert hires_size(64, 64, 2, 8) == (128, 128)
    assert hires_size(24, 16, 1.5, 2) == (36, 24)
    assert hires_size(24, 16, 1.3, 8) == (24, 16)  # 31.2 and 20.8, rounded down to multiples of 8


@pytest.mark.parametrize("upscaler", ["lanczos", "latent"])
def test_an_image_twice_the_size_with_the_steps_of_both_passes(loaded: Model, upscaler: str):
    request = make_request("a red circle", width=16, height=24, hires_scale=2, hires_upscaler=upscaler, **FAST)
    (made,) = make_images(loaded, request)
    assert made.image.size == (32, 48)
    assert (made.record.width, made.record.height) == (16, 24)  # the first pass's, as AUTOMATIC1111 records it
    assert (made.record.hires_strength, made.record.hires_steps, made.record.hires_upscaler) == (0.5, 4, upscaler)
    assert made.unet_evaluations == (4 + 2) * 2  # 4 steps, then int(4 x 0.5): conditional and unconditional


def test_the_upscalers_and_strengths_make_other_images(loaded: Model):
    def image(**hires) -> np.ndarray:
        (made,) = make_images(loaded, make_request("a red circle", hires_scale=2, **FAST, **hires))
        return np.asarray(made.image).astype(int)

    lanczos, latent, strong = image(), image(hires_upscaler="latent"), image(hires_strength=0.9)
    assert np.abs(lanczos - latent).max() > 2 and np.abs(lanczos - strong).max() > 2
    assert np.array_equal(image(), lanczos)  # and each is reproducible


def test_the_command_line_records_the_pass_and_replays_it(tiny_model: Path, tmp_path: Path):
    out, again = tmp_path / "out.png", tmp_path / "again.png"
    result = run("generate", "a red circle", "-m", str(tiny_model), "--steps", "4", "--seed", "5", "--hires-scale",
                 "1.5", "--hires-steps", "6", "--hires-upscaler", "latent", "-o", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert (row["hires_scale"], row["hires_steps"], row["hires_strength"]) == (1.5, 6, 0.5)
    assert row["unet_evaluations"] == (4 + 3) * 2
    with Image.open(out) as image:
        assert image.size == (24, 24)
        infotext = image.text["parameters"]
    for field in ("Hires upscale: 1.5", "Hires steps: 6", "Hires upscaler: Latent", "Denoising strength: 0.5"):
        assert field in infotext
    replay = run("generate", "--from", str(out), "-o", str(again))
    assert replay.exit_code == 0, replay.stderr
    assert again.read_bytes() == out.read_bytes()
    assert settings_from_png(again)["hires_upscaler"] == "latent"


def test_an_automatic1111_hires_infotext_reads_as_the_hires_pass():
    from sdcli.output.metadata import settings_from_infotext

    text = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.7, " \
           "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent"  # fmt: skip
    settings = settings_from_infotext(text)
    assert (settings["hires_scale"], settings["hires_strength"], settings["hires_steps"]) == (2.0, 0.7, 10)
    assert settings["hires_upscaler"] == "latent" and "strength" not in settings


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--hires-scale", "0.5"], ["--hires-scale", "from 1 to 4"]),
        (["--hires-scale", "nan"], ["--hires-scale"]),
        (["--hires-strength", "0.5"], ["--hires-strength", "--hires-scale"]),
        (["--hires-steps", "10"], ["--hires-steps", "--hires-scale"]),
        (["--hires-upscaler", "latent"], ["--hires-upscaler", "--hires-scale"]),
        (["--hires-scale", "2", "--hires-upscaler", "esrgan"], ["--hires-upscaler", "esrgan"]),
        (["--hires-scale", "4", "--width", "8192"], ["32768x", "over 16384 pixels", "--hires-scale"]),
        (["--hires-scale", "2", "--hires-strength", "0.1", "--hires-steps", "4"], ["runs no step"]),
        (["--hires-scale", "2", "-i", "in.png", "--mask", "in.png"], ["--mask", "--hires-scale"]),
    ],
)
def test_bad_hires_settings(tiny_model: Path, tmp_path: Path, args: list[str], words: list[str]):
    out = tmp_path / "out"
    refused(run("generate", "x", "-m", str(tiny_model), *args, "--out-dir", str(out)), 2, *words)
    assert not out.exists()


def test_a_result_over_the_devices_memory_is_refused_before_any_work(tiny_model: Path, tmp_path: Path, monkeypatch):
    """The decode's memory (about 3 KB a pixel in fp32, whole) against the device's, with the size and the fix."""
    import sdcli.engine

    monkeypatch.setattr(sdcli.engine, "memory_of", lambda device: 2**30)  # a 1 GiB device
    out = tmp_path / "out"
    args = ["generate", "x", "-m", str(tiny_model), "--steps", "2", "--out-dir", str(out)]
    refused(run(*args, "--width", "512", "--height", "512", "--hires-scale", "2"), 2, "1024x1024", "3 GiB",
            "1 GiB", "--vae-tiling")  # fmt: skip
    assert not out.exists()
    fits = run(*args, "--width", "64", "--height", "64", "--hires-scale", "2")
    assert fits.exit_code == 0, fits.stderr
