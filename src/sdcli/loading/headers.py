"""A safetensors file's tensors as its header describes them (names, dtypes, shapes), read without torch.

The format: 8 bytes, the little-endian length N of a JSON header; N bytes of JSON that give each tensor's dtype,
shape and byte range in the data after it. `sdcli info` and the recognition of a checkpoint's architecture need no
more than that, and the values of one small tensor, which numpy reads. Importing torch would take seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from sdcli.errors import UsageError

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit; a larger "length" means the file is something else
_FLOATS = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}  # numpy's names; bf16 has none (see StoredTensor.float)


def refuse(path: Path, what: str) -> NoReturn:
    """The one line for a file that is no readable safetensors checkpoint; `what` says what it is instead."""
    raise UsageError(f"{path} {what}; download it again or pass a complete .safetensors checkpoint")


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file: what its header says, and its values read on demand. Has what
    `sdcli.loading.architecture` reads of a torch tensor: shape, ndim, numel() and float()."""

    path: Path
    dtype: str  # safetensors' name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    offset: int  # of its first byte in the file
    size: int  # in bytes

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def float(self) -> np.ndarray:
        """Its values in fp32, read from the file; bf16 widens bit for bit (its 16 bits are fp32's upper half)."""
        with self.path.open("rb") as file:
            file.seek(self.offset)
            raw = file.read(self.size)
        if self.dtype == "BF16":
            values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(raw, _FLOATS[self.dtype]).astype(np.float32)
        return values.reshape(self.shape)


def read_header(path: Path) -> dict[str, StoredTensor]:
    """Every tensor of the safetensors file at `path`, as its header gives it; a one-line usage error for a file
    that is empty, truncated, or not safetensors."""
    size = path.stat().st_size
    truncated = f"is truncated ({size} bytes, fewer than its header promises)"
    if size == 0:
        refuse(path, "is empty")
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        if size < 8 or length > MAX_HEADER_BYTES:
            refuse(path, "is not a safetensors file (no header length in its first 8 bytes)")
        if 8 + length > size:
            refuse(path, truncated)
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        refuse(path, "is not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    data = 8 + length  # where the tensors' bytes start
    try:
        tensors = {}
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            tensors[name] = StoredTensor(path, entry["dtype"], tuple(entry["shape"]), data + begin, end - begin)
    except (KeyError, TypeError, ValueError):
        refuse(path, "is not a safetensors file (its header does not describe tensors)")
    if max((t.offset + t.size for t in tensors.values()), default=data) > size:
        refuse(path, truncated)
    return tensors
