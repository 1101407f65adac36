"""Model references to folders or files: a diffusers folder, a single checkpoint file, a built-in model's name, or a
Hugging Face repo id.

A reference is tried in that order: a path that exists (a folder, or a `.safetensors` file in the original
CompVis/Stability layout; pickles only with `allow_pickle`); the name of a built-in model (a folder with a
`model_index.json` under `sdcli/models/`, shipped inside the package); a repo id (`owner/name`), looked up in
huggingface_hub's local cache first and downloaded only when it is not there and `HF_HUB_OFFLINE` is not set.
No torch here, and huggingface_hub only once a repo id is looked up: listing or checking models stays fast.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sdcli.errors import Failure, UsageError, reason
from sdcli.recipe import DEFAULT_MODEL, PICKLES, SAFETENSORS

REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_COMPONENTS = ("tokenizer_2", "text_encoder_2")  # required too where model_index.json names text_encoder_2
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
# What a repo download fetches: the five components (seven for SDXL), safetensors weights in full precision only.
_HUB_ALLOW = ["model_index.json", *(f"{name}/*" for name in REQUIRED_COMPONENTS + SDXL_COMPONENTS)]
_HUB_IGNORE = ["*.bin", "*.ckpt", "*.pt", "*.msgpack", "*.onnx", "*.h5", "*.pb", "*.fp16.*", "*non_ema*"]


@dataclass(frozen=True)
class ModelFolder:
    reference: str  # what loads it again: a built-in name, an absolute folder path, or a repo id
    folder: Path  # a diffusers folder with a model_index.json


@dataclass(frozen=True)
class ModelFile:
    reference: str  # the file's absolute path
    path: Path  # a single checkpoint in the original layout
    allow_pickle: bool = False  # load a pickle's tensors (torch.load with weights_only=True)


def refuse_pickle(path: Path) -> None:
    raise UsageError(
        f"{path} is a pickle checkpoint ({path.suffix}): unpickling can run any code the file carries, so sdcli "
        "does not load it by default; convert it to .safetensors with a tool you trust, or pass --allow-pickle "
        "to load only its tensors (torch.load with weights_only=True)"
    )


def check_checkpoint_file(path: Path, allow_pickle: bool) -> None:
    """A usage error unless `path` is a file whose suffix sdcli reads (a pickle only when allowed)."""
    suffix = path.suffix.lower()
    if suffix in PICKLES and not allow_pickle:
        refuse_pickle(path)
    if suffix not in SAFETENSORS + PICKLES:
        raise UsageError(
            f"{path} is a file but not a checkpoint sdcli reads (suffix {suffix or 'none'}); pass a .safetensors "
            "checkpoint, a diffusers model folder (model_index.json), a repo id, or a built-in model name"
        )


def resolve_vae(reference: str, allow_pickle: bool = False) -> Path:
    """The VAE `--vae` names: a checkpoint file, a diffusers VAE folder (config.json), or a model folder (vae/)."""
    path = Path(reference).expanduser().resolve()
    if path.is_file():
        check_checkpoint_file(path, allow_pickle)
    elif path.is_dir():
        if not (path / "config.json").is_file() and not (path / "vae" / "config.json").is_file():
            raise UsageError(f"--vae {reference}: no config.json (or vae/config.json) in it; pass a VAE folder or file")
    else:
        raise UsageError(f"--vae {reference} does not exist; pass a VAE .safetensors file or a diffusers VAE folder")
    return path


def builtin_root() -> Path:
    """`sdcli/models/` inside the installed package (a real folder: setuptools installs package data as files)."""
    return Path(str(resources.files("sdcli").joinpath("models")))


def builtin_models() -> list[Path]:
    """The built-in models: folders under `sdcli/models/` that hold a `model_index.json`."""
    root = builtin_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "model_index.json").is_file())


def check_sd_folder(folder: Path) -> None:
    """A usage error unless `folder` holds a Stable Diffusion 1.x/2.x or XL model in diffusers format."""
    index_file = folder / "model_index.json"
    if not folder.is_dir():
        raise UsageError(f"model {folder} is not a folder; pass a diffusers model folder (model_index.json)")
    if not index_file.is_file():
        raise UsageError(
            f"{folder} is not a Stable Diffusion model in diffusers format (no model_index.json); "
            "pass a folder saved by diffusers' save_pretrained, a repo id, or a built-in model name"
        )
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{index_file} is not valid JSON; pass a folder saved by diffusers' save_pretrained") from None
    if not isinstance(index, dict):
        raise UsageError(f"{index_file} is not a JSON object; pass a folder saved by diffusers' save_pretrained")
    if "unet" not in index and "transformer" in index:
        kind = index.get("_class_name", "another kind of model")
        raise UsageError(f"{folder} is a {kind}, not Stable Diffusion 1.x/2.x or XL; pass an SD 1.x, 2.x or XL model")
    required = REQUIRED_COMPONENTS + (SDXL_COMPONENTS if "text_encoder_2" in index else ())
    missing = [name for name in required if not (isinstance(index.get(name), list) and index[name][0])]
    if missing:
        raise UsageError(
            f"{folder} is not a Stable Diffusion model: model_index.json has no {', '.join(missing)}; "
            "pass a model with a U-Net, VAE, CLIP text encoder, tokenizer and scheduler (SDXL: two of each of these)"
        )


def _from_hub(repo_id: str) -> Path:
    """The folder of `repo_id` in the Hugging Face cache, downloaded first unless cached or offline."""
    from huggingface_hub import constants, snapshot_download  # about half a second to import: only for repo ids

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or cached incompletely): fall through to the download
        pass
    if constants.HF_HUB_OFFLINE:
        raise Failure(
            f"model {repo_id!r} is neither a folder here nor in the Hugging Face cache, and HF_HUB_OFFLINE=1 "
            "forbids downloading it; download it while online, unset HF_HUB_OFFLINE, or pass a local folder"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_ALLOW, ignore_patterns=_HUB_IGNORE))
    except Exception as error:  # noqa: BLE001 - any network or hub error ends the same way for the user
        raise Failure(
            f"model {repo_id!r} is neither a folder here nor cached, and the Hugging Face Hub did not serve it "
            f"({reason(error)}); check the name and the network, or pass a local folder"
        ) from None


def resolve_model(reference: str, allow_pickle: bool = False) -> ModelFolder | ModelFile:
    """The folder or file that `reference` names, checked as far as can be without reading weights; errors that
    say what to pass."""
    path = Path(reference).expanduser()
    if path.is_file():
        check_checkpoint_file(path.resolve(), allow_pickle)
        return ModelFile(str(path.resolve()), path.resolve(), allow_pickle)
    if path.exists():
        folder = path.resolve()
        check_sd_folder(folder)
        return ModelFolder(str(folder), folder)
    if "/" not in reference and "\\" not in reference:
        folder = builtin_root() / reference
        if (folder / "model_index.json").is_file():
            return ModelFolder(reference, folder)
        builtins = ", ".join(p.name for p in builtin_models()) or "none installed"
        if reference == DEFAULT_MODEL:
            raise UsageError(
                f"the built-in model {DEFAULT_MODEL!r} is not in this copy of sdcli (`make shapes-model` builds it); "
                "pass --model with a diffusers folder or a Hugging Face repo id"
            )
        raise UsageError(
            f"model {reference!r} is neither a folder nor a built-in model (built-in: {builtins}); "
            "pass --model with a diffusers folder, a repo id (owner/name), or a built-in name"
        )
    if _REPO_ID.fullmatch(reference):
        folder = _from_hub(reference)
        check_sd_folder(folder)
        return ModelFolder(reference, folder)
    raise UsageError(f"model folder {reference} does not exist; pass an existing diffusers folder or a repo id")
