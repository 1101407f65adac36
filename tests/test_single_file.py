"""Single-file checkpoints in the original layout: built from tiny diffusers models, loaded back offline, and
compared pixel for pixel with the folder they came from; every way a file can be wrong is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from ldm_layout import (
    build_family_sd,
    build_family_sdxl,
    clip_to_ldm,
    open_clip_to_ldm,
    pipeline_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from PIL import Image
from safetensors.torch import save_file
from test_bad_input import refused
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.loading.architecture import SD1, SD2, SDXL, SDXL_CLIP, SDXL_OPEN_CLIP, detect

ARGS = ["a photo of a cat", "--width", "16", "--height", "16", "--steps", "2", "--seed", "7", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def sd1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(folder, the same model as one original-layout .safetensors file)"""
    folder = build_family_sd(tmp_path_factory.mktemp("sd1") / "folder", SD1)
    file = folder.parent / "model.safetensors"
    save_file(pipeline_to_ldm(folder, SD1), file)
    return folder, file


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def pixels(model: Path | str, out: Path, *extra: str) -> np.ndarray:
    result = run("generate", *ARGS, "-m", str(model), "-o", str(out), *extra)
    assert result.exit_code == 0, result.stderr
    return np.asarray(Image.open(out))


def test_an_sd1_file_makes_the_pixels_of_its_folder(sd1, tmp_path: Path):
    folder, file = sd1
    np.testing.assert_array_equal(pixels(file, tmp_path / "file.png"), pixels(folder, tmp_path / "folder.png"))


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_an_sd2_file_makes_the_pixels_of_its_folder(prediction_type: str, tmp_path: Path):
    folder = build_family_sd(tmp_path / "folder", SD2, prediction_type, seed=3)
    file = tmp_path / "sd2.safetensors"
    save_file(pipeline_to_ldm(folder, SD2), file)
    arch = detect(pipeline_to_ldm(folder, SD2), "sd2")
    assert (arch.family, arch.prediction_type) == (SD2, prediction_type)
    assert arch.native_size == (768 if prediction_type == "v_prediction" else 512)
    np.testing.assert_array_equal(pixels(file, tmp_path / "file.png"), pixels(folder, tmp_path / "folder.png"))


def test_info_names_family_prediction_size_dtype_and_parameters(sd1):
    folder, file = sd1
    result = run("info", str(file), "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["family"] == "sd1" and info["prediction_type"] == "epsilon"
    assert (info["width"], info["height"], info["dtype"]) == (512, 512, "fp32")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    assert info["parameters"]["unet"] == sum(p.numel() for p in unet.parameters())
    assert info["parameters"]["vae"] == sum(p.numel() for p in vae.parameters())
    from_folder = json.loads(run("info", str(folder), "--json").stdout)
    assert from_folder["parameters"] == info["parameters"]
    text = run("info", str(file))
    assert "Stable Diffusion 1.x" in text.stdout and "512x512" in text.stdout


def test_vae_from_a_file_or_a_folder_replaces_the_checkpoints(sd1, tmp_path: Path):
    folder, file = sd1
    without_vae = tmp_path / "no-vae.safetensors"
    full = pipeline_to_ldm(folder, SD1)
    save_file({k: v for k, v in full.items() if not k.startswith("first_stage_model.")}, without_vae)
    refused(run("generate", *ARGS, "-m", str(without_vae), "-o", str(tmp_path / "x.png")), 2, "no VAE", "--vae")
    vae_file = tmp_path / "vae.safetensors"
    save_file(vae_to_ldm(AutoencoderKL.from_pretrained(folder, subfolder="vae"), into=""), vae_file)
    expected = pixels(file, tmp_path / "full.png")
    np.testing.assert_array_equal(pixels(without_vae, tmp_path / "a.png", "--vae", str(vae_file)), expected)
    np.testing.assert_array_equal(pixels(file, tmp_path / "b.png", "--vae", str(folder / "vae")), expected)
    result = run("inspect", str(tmp_path / "b.png"), "--json")
    assert json.loads(result.stdout)["vae"] == str((folder / "vae").resolve())


def test_pickles_are_refused_unless_allowed_and_then_load_tensors_only(sd1, tmp_path: Path):
    folder, file = sd1
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": pipeline_to_ldm(folder, SD1)}, ckpt)
    out = tmp_path / "x.png"
    refused(run("generate", *ARGS, "-m", str(ckpt), "-o", str(out)), 2, "pickle", "--allow-pickle", "safetensors")
    assert not out.exists()
    np.testing.assert_array_equal(pixels(ckpt, out, "--allow-pickle"), pixels(file, tmp_path / "y.png"))


def test_a_pickle_with_code_is_refused_even_when_allowed(tmp_path: Path):
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "thing": Path("x")}, ckpt)  # an object besides tensors
    refused(run("info", str(ckpt), "--allow-pickle"), 1, "weights_only=True")


def _write(path: Path, tensors: dict) -> Path:
    save_file(tensors, path)
    return path


# SDXL's refiner: a U-Net and one OpenCLIP encoder (conditioner.embedders.0.model.*), for image-to-image.
REFINER = {
    "conditioner.embedders.0.model.ln_final.weight": torch.zeros(1),
    "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
}


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: d.joinpath("notes.safetensors").write_text("hello, not tensors") and d / "notes.safetensors",
         ["not a safetensors file"]),
        (lambda d: d / "empty.safetensors" if d.joinpath("empty.safetensors").write_bytes(b"") == 0 else None,
         ["is empty"]),
        (lambda d: _write(d / "vae.safetensors", {"encoder.down.0.block.0.conv1.weight": torch.zeros(1)}),
         ["VAE alone", "--vae", "1 tensors"]),
        (lambda d: _write(d / "refiner.safetensors", REFINER), ["SDXL", "refiner", "XL checkpoint"]),
        (lambda d: _write(d / "lora.safetensors", {"lora_unet_down.alpha": torch.zeros(1)}), ["LoRA"]),
        (lambda d: _write(d / "other.safetensors", {"layers.0.weight": torch.zeros(2)}),
         ["no Stable Diffusion U-Net", "layers.0.* (1)"]),
        (lambda d: d.joinpath("model.onnx").write_text("x") and d / "model.onnx", ["not a checkpoint"]),
    ],
)  # fmt: skip
def test_a_file_that_is_not_an_sd_checkpoint_is_one_line(make, words, tmp_path: Path):
    path = make(tmp_path)
    out = tmp_path / "x.png"
    refused(run("generate", *ARGS, "-m", str(path), "-o", str(out)), 2, *words)
    assert not out.exists()


def test_a_truncated_file_says_so(sd1, tmp_path: Path):
    _, file = sd1
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    refused(run("info", str(cut)), 2, "truncated")


def test_an_inpainting_unet_is_named(sd1):
    folder, _ = sd1
    tensors = pipeline_to_ldm(folder, SD1)
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    with pytest.raises(Exception, match="inpainting"):
        detect(tensors, "x")


# Stability's released architectures, as diffusers' configs give them (runwayml/stable-diffusion-v1-5 and
# stabilityai/stable-diffusion-2-1): built on the meta device, so only names and shapes exist.
SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 layers_per_block=2, sample_size=64)  # fmt: skip
SD21_UNET = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                 attention_head_dim=[5, 10, 20, 20], use_linear_projection=True, layers_per_block=2,
                 sample_size=96)  # fmt: skip
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip


def test_an_sdxl_file_makes_the_pixels_of_its_folder_and_info_says_sdxl(tmp_path: Path):
    folder = build_family_sdxl(tmp_path / "folder")
    file = tmp_path / "sdxl.safetensors"
    save_file(pipeline_to_ldm(folder, SDXL), file)
    np.testing.assert_array_equal(pixels(file, tmp_path / "file.png"), pixels(folder, tmp_path / "folder.png"))
    info = json.loads(run("info", str(file), "--json").stdout)
    assert (info["family"], info["prediction_type"], info["width"]) == ("sdxl", "epsilon", 1024)
    assert info["parameters"] == json.loads(run("info", str(folder), "--json").stdout)["parameters"]


# SDXL base as diffusers' configs give it (stabilityai/stable-diffusion-xl-base-1.0), on the meta device.
SDXL_UNET = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128, cross_attention_dim=2048,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)  # fmt: skip


def test_the_full_size_sdxl_architecture_is_recognised_from_shapes():
    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SD_VAE)
        clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12))
        big_g_config = CLIPTextConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_attention_heads=20,
            num_hidden_layers=32,
            projection_dim=1280,
            hidden_act="gelu",
        )
        big_g = CLIPTextModelWithProjection(big_g_config)
    with torch.device("meta"):
        tensors = unet_to_ldm(unet) | vae_to_ldm(vae) | clip_to_ldm(clip_l, SDXL_CLIP)
        tensors |= open_clip_to_ldm(big_g, SDXL_OPEN_CLIP)
    arch = detect(tensors, "x")
    assert (arch.family, arch.prediction_type, arch.native_size) == (SDXL, "epsilon", 1024)
    for key, value in arch.unet.items():
        assert getattr(unet.config, key) == value or list(getattr(unet.config, key)) == list(value), key
    assert arch.vae["scaling_factor"] == 0.13025
    assert (arch.text_encoder["num_hidden_layers"], arch.text_encoder["hidden_act"]) == (12, "quick_gelu")
    assert arch.text_encoder_2["num_hidden_layers"] == 32  # all of them: SDXL reads the penultimate hidden states
    assert (arch.text_encoder_2["num_attention_heads"], arch.text_encoder_2["projection_dim"]) == (20, 1280)


@pytest.mark.parametrize("family", [SD1, SD2])
def test_full_size_architectures_are_recognised_from_shapes(family):
    with init_empty_weights():
        unet = UNet2DConditionModel(**(SD15_UNET if family is SD1 else SD21_UNET))
        vae = AutoencoderKL(**SD_VAE)
        width = 768 if family is SD1 else 1024
        text = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=width,
                intermediate_size=4 * width,
                num_attention_heads=width // 64,
                num_hidden_layers=12 if family is SD1 else 23,
            )
        )
    tensors = unet_to_ldm(unet) | vae_to_ldm(vae)
    if family is SD1:
        tensors |= clip_to_ldm(text)
    else:
        with torch.device("meta"):
            tensors |= open_clip_to_ldm(text)
        tensors["v_pred"] = torch.zeros(())
    arch = detect(tensors, "x")
    assert arch.family is family
    for key, value in arch.unet.items():
        if key != "upcast_attention":
            assert getattr(unet.config, key) == value or list(getattr(unet.config, key)) == list(value), key
    assert arch.native_size == (512 if family is SD1 else 768)
    assert arch.unet["down_block_types"][-1] == "DownBlock2D"
    assert arch.vae["block_out_channels"] == [128, 256, 512, 512]
    assert arch.text_encoder["num_hidden_layers"] == (12 if family is SD1 else 23)
    assert arch.text_encoder["num_attention_heads"] == width // 64
    assert arch.prediction_type == ("epsilon" if family is SD1 else "v_prediction")
