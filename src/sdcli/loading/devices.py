"""Device and dtype choice: `auto` means CUDA in fp16 when there is a CUDA device, else the CPU, in bf16 when the
processor has bf16 matrix units (Intel AMX: a U-Net step about 3x faster than fp32) and in fp32 otherwise."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import is_cuda_available, is_mps_available

from sdcli.errors import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def resolve_device(choice: str) -> torch.device:
    """The torch device for `--device` (auto, cpu, cuda, mps); a usage error if that device is not here."""
    if choice == "auto":
        choice = "cuda" if is_cuda_available() else "cpu"
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" and not is_cuda_available():
        raise UsageError("--device cuda: this machine has no usable CUDA device; use --device cpu (or auto)")
    if choice == "mps" and not is_mps_available():
        raise UsageError("--device mps: this machine has no usable Apple MPS device; use --device cpu (or auto)")
    # accelerate's process state picks this process's accelerator (its local rank's GPU under `accelerate launch`).
    return PartialState().device


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX), as torch's own dispatch or /proc/cpuinfo says."""
    if "AMX" in torch.backends.cpu.get_cpu_capability().upper():
        return True
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for `--dtype` (auto, fp32, fp16, bf16): auto is fp16 on an accelerator, on the CPU bf16
    where it has bf16 matrix units and fp32 elsewhere."""
    if choice == "auto":
        if device.type != "cpu":
            return torch.float16
        return torch.bfloat16 if cpu_has_bf16_matrix_units() else torch.float32
    return DTYPES[choice]
