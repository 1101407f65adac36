"""What a model predicts, when its user says so: `load_model(prediction_type=...)` over the AUTOMATIC1111 config
beside a single file (`model.yaml`, `parameterization: "v"`), over what the weights suggest; `sdcli info` reports
what loading would use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ldm_layout import build_family_sd, pipeline_to_ldm
from safetensors.torch import save_file

from sdcli.errors import UsageError
from sdcli.loading.architecture import SD2
from sdcli.loading.components import Model, load_model
from sdcli.loading.info import model_info
from sdcli.loading.prediction import configured_prediction_type
from sdcli.loading.references import resolve_model

# As in Stability's v2-inference-v.yaml: the setting sits under model.params.
V_CONFIG = """model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"  # v-prediction
    linear_start: 0.00085
"""


def sd2_file(folder: Path, looks: str, dtype: torch.dtype = torch.float32) -> Path:
    """A tiny SD 2.x model as one original-layout file whose weights look like `looks` ("epsilon", "v_prediction")."""
    built = build_family_sd(folder / "folder", SD2, looks, seed=3)
    file = folder / "model.safetensors"
    save_file({k: v.to(dtype) for k, v in pipeline_to_ldm(built, SD2).items()}, file)
    return file


@pytest.fixture(scope="module")
def eps_looking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sd2_file(tmp_path_factory.mktemp("eps"), "epsilon")


@pytest.fixture
def beside(eps_looking: Path):
    """Writes the AUTOMATIC1111 config beside `eps_looking` for one test."""
    config = eps_looking.with_suffix(".yaml")
    yield config.write_text
    config.unlink(missing_ok=True)


def load(reference: Path, prediction_type: str | None = None) -> Model:
    cpu = torch.device("cpu")
    return load_model(resolve_model(str(reference)), cpu, torch.float32, prediction_type=prediction_type)


def test_a_file_runs_as_its_weights_suggest_unless_told(eps_looking: Path):
    assert load(eps_looking).scheduler_config["prediction_type"] == "epsilon"
    told = load(eps_looking, "v_prediction")
    assert told.scheduler_config["prediction_type"] == "v_prediction"
    assert told.native_size == (768, 768)  # what SD 2.x v-prediction is trained at, as if its weights had said so
    assert told.unet.config.upcast_attention
    assert model_info(resolve_model(str(eps_looking))).prediction_type == "epsilon"


def test_the_config_beside_a_file_declares_v_and_an_explicit_choice_wins(eps_looking: Path, beside):
    beside(V_CONFIG)
    assert load(eps_looking).scheduler_config["prediction_type"] == "v_prediction"
    assert model_info(resolve_model(str(eps_looking))).prediction_type == "v_prediction"  # `sdcli info` says so
    assert load(eps_looking, "epsilon").scheduler_config["prediction_type"] == "epsilon"


def test_the_config_beside_a_file_wins_over_its_weights(tmp_path: Path):
    file = sd2_file(tmp_path, "v_prediction", torch.bfloat16)  # the probe's values read from a bf16 header too
    assert model_info(resolve_model(str(file))).prediction_type == "v_prediction"
    file.with_suffix(".yaml").write_text(V_CONFIG.replace('"v"', '"eps"'))
    assert model_info(resolve_model(str(file))).prediction_type == "epsilon"
    assert load(file).scheduler_config["prediction_type"] == "epsilon"


def test_an_override_replaces_a_folders_scheduler_config(tiny_model: Path):
    model = load(tiny_model, "v_prediction")
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.scheduler_config["beta_schedule"] == load(tiny_model).scheduler_config["beta_schedule"]


@pytest.mark.parametrize(
    "text, found",
    [(V_CONFIG, "v_prediction"), ("parameterization: eps\n", "epsilon"), ("parameterization: 'v'\n", "v_prediction"),
     ('model:\n  params:\n    # parameterization: "v"\n', None), ("model:\n  params: {}\n", None)],
)  # fmt: skip
def test_the_parameterization_is_read_from_the_config(tmp_path: Path, text: str, found: str | None):
    (tmp_path / "model.yaml").write_text(text)
    assert configured_prediction_type(tmp_path / "model.safetensors") == found
    assert configured_prediction_type(tmp_path / "other.safetensors") is None  # only the same stem counts


def test_unknown_prediction_types_are_usage_errors(eps_looking: Path, beside):
    with pytest.raises(UsageError, match="use epsilon or v_prediction"):
        load(eps_looking, "v")
    beside('parameterization: "x0"\n')
    with pytest.raises(UsageError, match=r"model\.yaml sets parameterization 'x0'"):
        load(eps_looking)


def test_the_option_runs_the_file_as_told_and_is_recorded_and_replayed(eps_looking: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from sdcli.cli import app
    from sdcli.output.metadata import settings_from_png

    def generate(*args: str):
        return CliRunner().invoke(app, ["generate", "a cat", "-m", str(eps_looking), "--steps", "2", "--seed", "1",
                                        "--sampler", "euler", "--width", "64", "--height", "64", *args])  # fmt: skip

    as_v, as_eps, replayed = (tmp_path / name for name in ("v.png", "eps.png", "replayed.png"))
    assert generate("--prediction-type", "v_prediction", "-o", str(as_v)).exit_code == 0
    assert generate("-o", str(as_eps)).exit_code == 0
    assert settings_from_png(as_v)["prediction_type"] == "v_prediction"
    assert settings_from_png(as_eps)["prediction_type"] is None  # as detected
    assert as_v.read_bytes() != as_eps.read_bytes()  # the same weights read as v make another image
    replay = CliRunner().invoke(app, ["generate", "--from", str(as_v), "-o", str(replayed)])
    assert replay.exit_code == 0, replay.stderr
    assert replayed.read_bytes() == as_v.read_bytes()
    refused = generate("--prediction-type", "x0", "-o", str(tmp_path / "x.png"))
    assert refused.exit_code == 2 and "--prediction-type" in refused.stderr
