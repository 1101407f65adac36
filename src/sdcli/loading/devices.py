"""Device and dtype choice: `auto` means CUDA in fp16 when there is a CUDA device, else the CPU, in bf16 when the
processor has bf16 matrix units (Intel AMX: a U-Net step about 3x faster than fp32) and in fp32 otherwise.

`SDCLI_CPU_BF16=1` (or `0`) says whether the CPU has them instead of asking it: the same `auto` on every machine
(the tests pin it to 0, so that no result depends on the host's processor).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import is_cuda_available, is_mps_available

from sdcli.errors import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
CPU_BF16_ENV = "SDCLI_CPU_BF16"
CPUINFO = Path("/proc/cpuinfo")  # Linux's list of the processor's features


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
    """Whether this CPU multiplies bf16 matrices in hardware (AMX): as $SDCLI_CPU_BF16 says where set, else as
    torch's own dispatch or /proc/cpuinfo says."""
    declared = os.environ.get(CPU_BF16_ENV)
    if declared is not None:
        if declared not in ("0", "1"):
            raise UsageError(
                f"{CPU_BF16_ENV}={declared!r} is neither 1 nor 0; set it to 1 (the CPU has AMX) or 0, or unset it"
            )
        return declared == "1"
    if "AMX" in torch.backends.cpu.get_cpu_capability().upper():
        return True
    try:
        return "amx_bf16" in CPUINFO.read_text()
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


def memory_of(device: torch.device) -> int:
    """Bytes of memory the device has: a CUDA device's own, else the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
