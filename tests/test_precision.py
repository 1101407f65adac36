"""Precision: what `--dtype auto` picks, and a VAE decode that overflows is redone in fp32, never saved black."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_bad_input import refused
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.errors import Failure, UsageError
from sdcli.loading import devices
from sdcli.loading.components import Model
from sdcli.output.images import decode


@pytest.mark.parametrize("amx, expected", [("1", torch.bfloat16), ("0", torch.float32)])
def test_auto_on_the_cpu_is_bf16_only_with_bf16_matrix_units(monkeypatch: pytest.MonkeyPatch, amx, expected):
    monkeypatch.setenv(devices.CPU_BF16_ENV, amx)  # whatever this machine's CPU has
    assert devices.resolve_dtype("auto", torch.device("cpu")) == expected
    assert devices.resolve_dtype("fp32", torch.device("cpu")) == torch.float32
    assert devices.resolve_dtype("auto", torch.device("cuda")) == torch.float16


@pytest.mark.parametrize(
    "capability, flags, amx",
    [("AVX512", "fpu avx512f amx_bf16 amx_tile", True), ("AVX512", "fpu avx512f avx512_bf16", False),
     ("AMX", "", True), ("AVX2", None, False)],
)  # fmt: skip
def test_bf16_matrix_units_are_asked_of_torch_and_cpuinfo_when_not_pinned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capability: str, flags: str | None, amx: bool
):
    monkeypatch.delenv(devices.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cpuinfo = tmp_path / "cpuinfo"  # None: not there, as on macOS
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(devices, "CPUINFO", cpuinfo)
    assert devices.cpu_has_bf16_matrix_units() is amx


def test_a_bf16_pin_other_than_0_or_1_is_a_usage_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "yes")
    with pytest.raises(UsageError, match="SDCLI_CPU_BF16='yes' is neither 1 nor 0; set it to 1"):
        devices.resolve_dtype("auto", torch.device("cpu"))


def test_an_overflowing_half_precision_decode_is_redone_in_fp32(loaded: Model, caplog: pytest.LogCaptureFixture):
    vae = copy.deepcopy(loaded.vae)
    with torch.no_grad():
        vae.post_quant_conv.weight.mul_(3000)  # fine in fp32; past fp16's 65504 once multiplied by the latents
    latents = torch.full((2, 4, 4, 4), 30.0)
    half = vae.half()
    want = decode(copy.deepcopy(half).float(), latents)  # the same (fp16-rounded) weights in fp32
    assert torch.isfinite(want).all()
    with caplog.at_level(logging.WARNING):
        got = decode(half, latents.half())
    assert "decoding again in fp32" in caplog.text
    assert half.dtype == torch.float32  # kept in fp32 for the rest of the run
    torch.testing.assert_close(got, want)


def test_latents_that_are_already_nan_fail_with_the_fix(loaded: Model):
    with pytest.raises(Failure, match="lower --cfg"):  # fp32 latents: --dtype fp32 would change nothing
        decode(loaded.vae, torch.full((1, 4, 4, 4), float("nan")))


def test_offload_needs_a_gpu(tiny_model: Path, tmp_path: Path):
    args = ["generate", "a cat", "-m", str(tiny_model), "--device", "cpu", "--offload", "-o", str(tmp_path / "x.png")]
    refused(CliRunner().invoke(app, args), 2, "--offload", "cuda")
    assert not (tmp_path / "x.png").exists()


def test_vae_tiling_runs(tiny_model: Path, tmp_path: Path):
    args = ["generate", "a cat", "-m", str(tiny_model), "--steps", "2", "--vae-tiling", "-o", str(tmp_path / "x.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr


@pytest.mark.slow
def test_compile_gives_the_eager_pixels(tiny_model: Path, tmp_path: Path):
    base = ["generate", "a cat", "-m", str(tiny_model), "--steps", "2", "--seed", "3", "--dtype", "fp32"]
    assert CliRunner().invoke(app, [*base, "-o", str(tmp_path / "a.png")]).exit_code == 0
    result = CliRunner().invoke(app, [*base, "--compile", "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.stderr
    a, b = (np.asarray(Image.open(tmp_path / n), dtype=int) for n in ("a.png", "b.png"))
    assert np.abs(a - b).max() <= 2


@pytest.mark.slow
def test_the_gpu_benchmark_runs_on_the_cpu_at_a_small_size():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    args = ["--device", "cpu", "--size", "64", "--steps", "2", "--rounds", "1", "--batches", "1", "--no-compile"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "ratio ours / diffusers" in done.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_channels_last_offload_and_fp16_give_a_finite_image(tiny_model: Path, tmp_path: Path):
    from sdcli.engine import make_images
    from sdcli.loading.components import LoadOptions, load_model
    from sdcli.loading.references import resolve_model

    device = devices.resolve_device("cuda")
    for options in (LoadOptions(), LoadOptions(offload=True, vae_tiling=True)):
        model = load_model(resolve_model(str(tiny_model)), device, torch.float16, options)
        (made,) = make_images(model, make_request("a red circle", seed=3, steps=4))
        assert np.isfinite(np.asarray(made.image, dtype=float)).all()
        if not options.offload:
            assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
