"""Model references, components and their configs, devices."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tiny_sd import make_request

from sdcli.engine import make_images
from sdcli.errors import UsageError
from sdcli.loading import references
from sdcli.loading.components import Model, load_model
from sdcli.loading.devices import resolve_device, resolve_dtype
from sdcli.loading.geometry import check_size, latent_scale, native_size
from sdcli.loading.references import resolve_model


def test_latent_geometry_comes_from_the_configs(loaded: Model):
    assert loaded.latent_scale == 2  # a VAE with 2 blocks, not SD's 8
    assert loaded.latent_channels == 4
    assert loaded.native_size == (16, 16)
    assert loaded.scheduler_config["prediction_type"] == "epsilon"
    assert loaded.unet.dtype == loaded.text_encoder.dtype == loaded.vae.dtype == torch.float32


@pytest.mark.parametrize("dtype, vae_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_half_precision_keeps_the_vae_in_fp32_when_its_config_asks(tiny_model: Path, dtype, vae_dtype):
    model = load_model(resolve_model(str(tiny_model)), torch.device("cpu"), dtype)
    assert model.vae.config.force_upcast  # diffusers' default, as in SD's VAEs
    assert model.unet.dtype == model.text_encoder.dtype == dtype
    assert model.vae.dtype == vae_dtype
    (made,) = make_images(model, make_request("a red circle", seed=1, steps=2))
    assert made.record.dtype == {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    assert made.image.size == (16, 16)


def test_check_size_suggests_valid_sizes():
    check_size(16, 24, 2)
    with pytest.raises(UsageError, match="use --width 16 or 18"):
        check_size(17, 24, 2)
    with pytest.raises(UsageError, match="use --height 8 or 16"):
        check_size(512, 3, 8)


def test_geometry_from_plain_configs():
    sd = {"sample_size": 64}, {"block_out_channels": [128, 256, 512, 512]}
    assert latent_scale(sd[1]) == 8 and native_size(*sd) == (512, 512)
    assert native_size({"sample_size": [96, 128]}, {"block_out_channels": [1, 2]}) == (256, 192)


def test_a_folder_reference_is_recorded_as_its_absolute_path(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tiny_model.parent)
    found = resolve_model(tiny_model.name)
    assert found.reference == str(tiny_model.resolve()) and found.folder == tiny_model.resolve()


def test_a_repo_id_is_found_in_the_hugging_face_cache_offline(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The cache's own layout: models--owner--name/{refs/main, snapshots/<commit>/...}.
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    found = resolve_model("someone/tiny-sd")
    assert found.reference == "someone/tiny-sd"
    assert found.folder == repo / "snapshots" / commit


def test_a_built_in_name_resolves_inside_the_package(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shutil.copytree(tiny_model, tmp_path / "shapes")
    monkeypatch.setattr(references, "builtin_root", lambda: tmp_path)
    found = resolve_model("shapes")
    assert (found.reference, found.folder) == ("shapes", tmp_path / "shapes")
    with pytest.raises(UsageError, match="built-in: shapes"):
        resolve_model("circles")


def test_the_built_in_root_is_the_packages_models_folder():
    import sdcli

    assert references.builtin_root() == Path(sdcli.__file__).parent / "models"


def test_cpu_is_always_there():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # conftest: a CPU without bf16 units
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_auto_without_cuda_is_the_cpu_and_cuda_is_refused():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match="--device cpu"):
        resolve_device("cuda")
