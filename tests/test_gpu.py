"""On a CUDA device: `auto` means fp16 weights with the VAE kept in fp32 (its config asks for `force_upcast`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_sd import make_request

from sdcli.engine import make_images
from sdcli.loading.components import Model, load_model
from sdcli.loading.devices import resolve_device, resolve_dtype
from sdcli.loading.references import resolve_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_auto_is_cuda_in_fp16_with_an_fp32_vae(tiny_model: Path, loaded: Model):
    device = resolve_device("auto")
    model = load_model(resolve_model(str(tiny_model)), device, resolve_dtype("auto", device))
    assert device.type == "cuda"
    assert model.unet.dtype == model.text_encoder.dtype == torch.float16
    assert model.vae.dtype == torch.float32
    request = make_request("a red circle", seed=3, steps=4, sampler="euler-a")
    (on_gpu,) = make_images(model, request)
    (on_cpu,) = make_images(loaded, request)
    assert (on_gpu.record.device, on_gpu.record.dtype) == ("cuda", "fp16")
    # Same noise (drawn on the CPU), fp16 arithmetic: close to the CPU's fp32 image, not equal.
    difference = np.abs(np.asarray(on_gpu.image, dtype=np.int16) - np.asarray(on_cpu.image, dtype=np.int16))
    assert difference.mean() < 4
