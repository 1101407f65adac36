"""Every bad input of the core issue: one line on stderr naming problem and fix, exit 2 (usage) or 1 (failure),
no traceback, and no file written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.sampling.samplers import NAMES

FAST = ["--steps", "2", "--sampler", "euler"]


def refused(result, code: int, *words: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def generate(*args: str, input: str | None = None):
    return CliRunner().invoke(app, ["generate", *args], input=input)


def test_a_model_path_that_does_not_exist(out: Path):
    refused(generate("a cat", "-m", "./no/such/model", "--out-dir", str(out)), 2, "./no/such/model", "does not exist")
    assert not out.exists()


def test_a_folder_that_is_not_a_model(tmp_path: Path, out: Path):
    (tmp_path / "photos").mkdir()
    refused(generate("a cat", "-m", str(tmp_path / "photos"), "--out-dir", str(out)), 2, "model_index.json")
    assert not out.exists()


def test_a_model_without_a_text_encoder(tmp_path: Path, out: Path):
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    refused(
        generate("a cat", "-m", str(folder), "--out-dir", str(out)), 2, "not a Stable Diffusion model", "text_encoder"
    )


def test_a_transformer_model(tmp_path: Path, out: Path):
    folder = tmp_path / "sd3"
    folder.mkdir()
    index = {name: ["x", "y"] for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler")}
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline", **index}))
    refused(generate("a cat", "-m", str(folder), "--out-dir", str(out)), 2, "StableDiffusion3Pipeline", "1.x")


def test_a_model_whose_weights_are_broken(tiny_model: Path, tmp_path: Path, out: Path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    refused(generate("a cat", "-m", str(folder), "--out-dir", str(out)), 1, "U-Net", str(folder))
    assert not out.exists()


def test_a_repo_id_neither_cached_nor_reachable(tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    refused(
        generate("a cat", "-m", "someone/some-model", "--out-dir", str(out)), 1, "someone/some-model", "HF_HUB_OFFLINE"
    )


@pytest.mark.parametrize("option, value", [("--width", "17"), ("--height", "33")])
def test_a_size_that_is_not_a_multiple_of_the_latent_scale(tiny_model: Path, out: Path, option: str, value: str):
    result = generate("a cat", "-m", str(tiny_model), *FAST, option, value, "--out-dir", str(out))
    refused(result, 2, option, value, "multiple of 2")
    assert not out.exists()


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_steps_below_one(tiny_model: Path, out: Path, steps: str):
    refused(
        generate("a cat", "-m", str(tiny_model), "--steps", steps, "--out-dir", str(out)), 2, "--steps", "from 1 to"
    )


def test_an_unknown_sampler_lists_the_valid_ones(tiny_model: Path, out: Path):
    result = generate("a cat", "-m", str(tiny_model), "--sampler", "k_euler", "--out-dir", str(out))
    refused(result, 2, "k_euler", *NAMES)


def test_an_unknown_sampler_in_a_replayed_image(tmp_path: Path, out: Path):
    info = PngInfo()
    info.add_text("sdcli", json.dumps({"prompt": "a cat", "seed": 1, "sampler": "k_euler"}))
    Image.new("RGB", (4, 4)).save(tmp_path / "old.png", pnginfo=info)
    refused(generate("--from", str(tmp_path / "old.png"), "--out-dir", str(out)), 2, "k_euler", "dpm++2m-karras")


def test_output_file_with_more_than_one_image(tiny_model: Path, tmp_path: Path):
    result = generate("a cat", "-m", str(tiny_model), *FAST, "-n", "2", "-o", str(tmp_path / "a.png"))
    refused(result, 2, "-o", "--out-dir")
    assert not (tmp_path / "a.png").exists()


def test_an_output_folder_that_cannot_be_written(tiny_model: Path, tmp_path: Path):
    (tmp_path / "file").write_text("I am a file")
    result = generate("a cat", "-m", str(tiny_model), *FAST, "--out-dir", str(tmp_path / "file" / "images"))
    refused(result, 1, "cannot write", "is a file")


def test_an_existing_output_file_without_overwrite(tiny_model: Path, tmp_path: Path):
    target = tmp_path / "a.png"
    target.write_bytes(b"precious")
    refused(generate("a cat", "-m", str(tiny_model), *FAST, "-o", str(target)), 2, str(target), "--overwrite")
    assert target.read_bytes() == b"precious"


def test_an_existing_file_in_the_output_folder_stops_the_whole_run(tiny_model: Path, out: Path):
    out.mkdir()
    (out / "2-a-cat.png").write_bytes(b"precious")
    result = generate("a cat", "-m", str(tiny_model), *FAST, "--seed", "1", "-n", "3", "--out-dir", str(out))
    refused(result, 2, "2-a-cat.png", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["2-a-cat.png"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_that_is_not_there(tiny_model: Path, out: Path):
    refused(
        generate("a cat", "-m", str(tiny_model), "--device", "cuda", "--out-dir", str(out)), 2, "cuda", "--device cpu"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["-n", "0"], ["--num-images", "from 1 to"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--seed", "-1"], ["--seed"]),
        (["--cfg", "nan"], ["--cfg", "finite"]),
        (["--dtype", "fp8"], ["--dtype", "fp8"]),
        (["-o", "picture.jpg"], [".png"]),
        (["--from", "no-such.png"], ["no-such.png", "does not exist"]),
    ],
)
def test_other_bad_options(tiny_model: Path, out: Path, args: list[str], words: list[str]):
    refused(generate("a cat", "-m", str(tiny_model), *args, "--out-dir", str(out)), 2, *words)
    assert not out.exists()


def test_no_prompt(out: Path):
    refused(generate("--out-dir", str(out)), 2, "prompt")


def test_an_over_long_prompt_is_a_warning_with_the_number_of_dropped_tokens(tiny_model: Path, tmp_path: Path):
    # Each word is one token; with the start and end tokens, 75 words fill the encoder's 77 exactly.
    fits = tmp_path / "fits.png"
    too_long = tmp_path / "too-long.png"
    ok = generate(" ".join(["red"] * 75), "-m", str(tiny_model), *FAST, "--seed", "1", "-o", str(fits))
    assert ok.exit_code == 0 and "warning" not in ok.stderr
    result = generate(
        " ".join(["red"] * 100), "-m", str(tiny_model), *FAST, "--seed", "1", "--no-long-prompts", "-o", str(too_long)
    )
    assert result.exit_code == 0
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert "25 tokens were dropped" in warning and "77" in warning
    # The encoder saw the same 77 tokens, so the images are the same.
    with Image.open(fits) as a, Image.open(too_long) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
