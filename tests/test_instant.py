"""Commands that need no model start at once: `--help`, `samplers`, `models`, `inspect`, `info` and a usage error
import none of torch, diffusers, transformers or huggingface_hub (seconds to import). `info` reads safetensors
headers itself (`sdcli.loading.headers`), which give what torch would: shapes, dtypes and values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ldm_layout import build_family_sd, pipeline_to_ldm
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file

from sdcli.loading.architecture import SD2
from sdcli.loading.headers import read_header

HEAVY = ("torch", "diffusers", "transformers", "huggingface_hub")
# Runs the command line as `sdcli` would, then prints its exit code and the heavy modules it imported.
RUN_AND_REPORT = f"""
import json, sys
from sdcli.cli import app
try:
    app(sys.argv[1:], prog_name="sdcli")
except SystemExit as done:
    code = done.code
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def run_reporting(*args: str, cwd: Path) -> tuple[int, list[str], str]:
    """(exit code, heavy modules imported, what the command printed) of `sdcli ARGS` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", RUN_AND_REPORT, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False)  # fmt: skip
    *printed, report = done.stdout.splitlines() or [""]
    assert report.startswith("{"), done.stderr
    found = json.loads(report)
    return found["code"], found["heavy"], "\n".join(printed)


@pytest.fixture(scope="module")
def sd2_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 2.x v-prediction model as one original-layout file: `info` reads one tensor's values for it."""
    folder = build_family_sd(tmp_path_factory.mktemp("sd2") / "folder", SD2, "v_prediction", seed=3)
    file = folder.parent / "sd2.safetensors"
    save_file(pipeline_to_ldm(folder, SD2), file)
    return file


@pytest.fixture
def png(tmp_path: Path) -> Path:
    info = PngInfo()
    info.add_text("parameters", "a red circle\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 16x16")
    Image.new("RGB", (16, 16)).save(tmp_path / "made.png", pnginfo=info)
    return tmp_path / "made.png"


@pytest.mark.parametrize(
    "command",
    [["--help"], ["generate", "--help"], ["samplers"], ["models"], ["inspect", "{png}"], ["info", "{folder}"],
     ["info", "{file}"], ["info", "{file}", "--json"]],
    ids=" ".join,
)  # fmt: skip
def test_a_command_without_a_model_imports_no_model_library(command, png, tiny_model: Path, sd2_file: Path, tmp_path):
    args = [arg.format(png=png, folder=tiny_model, file=sd2_file) for arg in command]
    code, heavy, printed = run_reporting(*args, cwd=tmp_path)
    assert code in (0, None), printed
    assert heavy == []
    if command[-1] == "--json":  # and it says what loading would: SD 2.x v-prediction, from one tensor's values
        assert json.loads(printed)["prediction_type"] == "v_prediction"


def test_a_usage_error_is_reported_before_the_model_stack_loads(tmp_path: Path):
    code, heavy, _ = run_reporting("generate", "x", "-o", "a.png", "-n", "2", cwd=tmp_path)  # one file, two images
    assert code == 2
    assert heavy == []
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_header_gives_torchs_names_shapes_dtypes_and_values(tmp_path: Path, dtype: torch.dtype):
    tensors = {"w": torch.randn(3, 5).to(dtype), "b": torch.randn(7).to(dtype), "step": torch.zeros((), dtype=dtype)}
    save_file(tensors, tmp_path / "t.safetensors")
    stored = read_header(tmp_path / "t.safetensors")
    assert set(stored) == set(tensors)
    for name, tensor in tensors.items():
        assert (stored[name].shape, stored[name].ndim) == (tensor.shape, tensor.ndim)
        assert stored[name].numel() == tensor.numel()
        assert stored[name].dtype == {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
        np.testing.assert_array_equal(stored[name].float(), tensor.float().numpy())
