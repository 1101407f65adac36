"""`python -m sdcli.shapes.train_lora` on a few steps: a kohya-format file that diffusers' own `load_lora_weights`
loads and that gives the same image in diffusers' pipeline as in sdcli; resumed runs give the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.loading.references import builtin_root
from sdcli.shapes.train_lora import main

SHAPES = builtin_root() / "shapes"
ARGS = ["--colour", "pink=255,128,192", "--batch", "2", "--rank", "2"]


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lora")
    main([*ARGS, "--steps", "3", "--out", str(folder / "pink.safetensors"), "--work-dir", str(folder / "work")])
    return folder / "pink.safetensors"


def test_the_file_is_in_kohyas_layout(lora: Path):
    tensors = load_file(lora)
    stems = {key.rsplit(".", 2)[0] if "lora_" in key.rsplit(".", 2)[-2] else key.rsplit(".", 1)[0] for key in tensors}
    assert any(s.startswith("lora_unet_") for s in stems) and any(s.startswith("lora_te_text_model_") for s in stems)
    for stem in stems:
        down, up = tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"]
        assert down.shape[0] == up.shape[1] == 2 and float(tensors[f"{stem}.alpha"]) == 2.0


def test_a_resumed_run_writes_the_same_file(lora: Path, tmp_path: Path):
    out, work = tmp_path / "pink.safetensors", tmp_path / "work"
    main([*ARGS, "--steps", "2", "--out", str(out), "--work-dir", str(work)])
    main([*ARGS, "--steps", "3", "--out", str(out), "--work-dir", str(work)])  # continues at step 2
    ours, straight = load_file(out), load_file(lora)
    assert ours.keys() == straight.keys()
    assert all(torch.equal(ours[k], straight[k]) for k in ours)


def test_a_run_with_other_settings_is_refused(lora: Path):
    work = lora.parent / "work"
    with pytest.raises(Exception, match=r"holds a run of another recipe \(rgb "):
        main(["--colour", "pink=255,0,0", "--steps", "3", "--out", str(lora), "--work-dir", str(work)])


def test_diffusers_loads_it_and_draws_what_sdcli_draws(lora: Path, tmp_path: Path):
    # trained 3 steps from peft's zero-initialised up matrices: scale it up so that the LoRA visibly changes the image
    tensors = {k: v * 50 if "lora_up" in k else v for k, v in load_file(lora).items()}
    from safetensors.torch import save_file

    strong = tmp_path / "strong.safetensors"
    save_file(tensors, strong)
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(strong), adapter_name="strong")

    def theirs() -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(3)
        out = pipe("a pink circle", num_inference_steps=4, guidance_scale=5.0, generator=generator, output_type="np")
        return (out.images[0] * 255).round()

    with_lora = theirs()
    pipe.set_adapters(["strong"], [0.0])
    without = theirs()
    result = CliRunner().invoke(
        app,
        ["generate", "a pink circle", "--model", "shapes", "--lora", str(strong), "--sampler", "pndm", "--steps", "4",
         "--cfg", "5", "--seed", "3", "--output", str(tmp_path / "ours.png"), "--dtype", "fp32", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from PIL import Image

    ours = np.asarray(Image.open(tmp_path / "ours.png").convert("RGB"), dtype=np.float64)
    assert np.abs(with_lora - without).max() > 10  # the LoRA changes the image...
    assert np.abs(ours - with_lora).max() <= 2  # ...and sdcli draws diffusers' image
