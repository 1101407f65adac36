"""Shared fixtures: tiny random Stable Diffusion models saved in diffusers format, built once per session.

Nothing here touches the network: the models are built from random weights and a word tokenizer of our own, and
HF_HUB_OFFLINE is set for the whole session. Nothing depends on the host's processor either: SDCLI_CPU_BF16=0 makes
`--dtype auto` on the CPU fp32 on every machine, in this process and in the sdcli processes tests start (a test that
wants a CPU with bf16 units sets it to 1).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["SDCLI_CPU_BF16"] = "0"
os.environ.pop("SDCLI_MODEL", None)
# Tiny models run fastest on one thread, and this keeps the suite steady on a busy, shared machine.
torch.set_num_threads(1)

from tiny_sd import build_tiny_sd  # noqa: E402

from sdcli.loading.components import Model, load_model  # noqa: E402
from sdcli.loading.references import resolve_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An epsilon-prediction model: VAE with 2 blocks (latent scale 2), U-Net sample size 8, so 16x16 native."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-eps")


@pytest.fixture(scope="session")
def tiny_v_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture trained (randomly) for v-prediction, as SD 2.x 768 models are."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-v", prediction_type="v_prediction", seed=1)


@pytest.fixture(scope="session")
def tiny_inpaint_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inpainting model: the U-Net takes 9 channels (latents, the mask, the masked image's latents)."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-inpaint", in_channels=9, seed=2)


def _load(folder: Path) -> Model:
    return load_model(resolve_model(str(folder)), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def loaded(tiny_model: Path) -> Model:
    return _load(tiny_model)


@pytest.fixture(scope="session")
def loaded_v(tiny_v_model: Path) -> Model:
    return _load(tiny_v_model)


@pytest.fixture(scope="session")
def loaded_inpaint(tiny_inpaint_model: Path) -> Model:
    return _load(tiny_inpaint_model)


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDCLI_MODEL", raising=False)
