"""A single checkpoint file to its tensors: safetensors always, pickles (`.ckpt`, `.pt`, `.pth`, `.bin`) only when
asked, and then through `torch.load(weights_only=True)`, which refuses to run the code a pickle may carry.

Every way a file can fail to be a checkpoint ends in one line that says what was found.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sdcli.errors import Failure, UsageError, reason
from sdcli.loading.headers import read_header, refuse
from sdcli.loading.references import PICKLES, SAFETENSORS, check_checkpoint_file, refuse_pickle

Tensors = dict[str, torch.Tensor]


def _read_safetensors(path: Path) -> Tensors:
    read_header(path)  # an empty, truncated or foreign file: one line that says which
    try:
        return load_file(path, device="cpu")
    except SafetensorError as error:  # a header that passed, but whose tensors safetensors finds inconsistent
        refuse(path, f"is not a safetensors file ({reason(error)})")


def load_pickle(path: Path) -> object:
    """What the pickle at `path` holds, through torch.load(weights_only=True): tensors, and containers of them,
    numbers and strings, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, not a pickle, or a pickle with more than tensors
        raise Failure(
            f"{path} did not load as tensors with torch.load(weights_only=True) ({reason(error)}); "
            "it is not a checkpoint, is truncated, or holds objects besides tensors: convert it with a tool you trust"
        ) from None


def _read_pickle(path: Path) -> Tensors:
    loaded = load_pickle(path)
    for key in ("state_dict", "model"):  # Lightning and some trainers nest the weights one level down
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise UsageError(f"{path} holds a {type(loaded).__name__}, not a dictionary of tensors; pass a checkpoint")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def read_checkpoint(path: Path, allow_pickle: bool = False) -> Tensors:
    """All tensors of the checkpoint at `path`, on the CPU, in the dtype they were saved in."""
    check_checkpoint_file(path, allow_pickle)
    suffix = path.suffix.lower()
    tensors = _read_safetensors(path) if suffix in SAFETENSORS else _read_pickle(path)
    if not tensors:
        raise UsageError(f"{path} holds no tensors; pass a Stable Diffusion checkpoint")
    return tensors


def check_adapter_file(path: Path, option: str, kind: str, allow_pickle: bool, recorded_sha256: str | None) -> str:
    """An adapter file's checks before it is read (a suffix sdcli reads, a pickle only when allowed, the file a replay
    recorded), and its sha256."""
    suffix = path.suffix.lower()
    if suffix not in SAFETENSORS + PICKLES:
        raise UsageError(f"{option} {path} is not {kind} (suffix {suffix or 'none'}); give .safetensors")
    if suffix in PICKLES and not allow_pickle:
        refuse_pickle(path)
    sha256 = sha256_of(path)
    check_sha256(path, option, recorded_sha256, sha256)
    return sha256


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_sha256(path: Path, option: str, recorded_sha256: str | None, sha256: str) -> None:
    """A usage error where a replay recorded another sha256 for the file at `path` than it has now."""
    if recorded_sha256 not in (None, sha256):
        raise UsageError(
            f"{option} {path} is not the file this was made with (sha256 {recorded_sha256[:12]}... recorded, "
            f"{sha256[:12]}... now); give that file with {option}"
        )
