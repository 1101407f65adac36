"""What a model is, without building it: family, prediction type, native size, dtype, parameters per component.

A diffusers folder is read from its configs and its safetensors headers; a single file from its tensors' names and
shapes (`sdcli.loading.architecture`), with the prediction type loading would use (`sdcli.loading.prediction`).
Safetensors are read without torch (`sdcli.loading.headers`); only a pickle needs it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from sdcli.loading.architecture import UNET, VAE, Shapes, detect, family_of
from sdcli.loading.geometry import native_size
from sdcli.loading.headers import read_header
from sdcli.loading.prediction import declared_prediction_type
from sdcli.loading.references import SAFETENSORS, ModelFile, ModelFolder

# Short dtype names, from safetensors' (a header's) and torch's (a pickle's, without its "torch." prefix).
_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}
_DTYPES |= {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")  # text_encoder_2: SDXL's, where present


@dataclass(frozen=True)
class ModelInfo:
    model: str  # the reference that loads it
    family: str  # "sd1", "sd2", "sdxl", or "unknown" (a diffusers folder of another width)
    family_title: str
    prediction_type: str
    width: int  # native size in pixels
    height: int
    dtype: str  # the weights' dtype as stored (the most common one)
    parameters: dict[str, int]  # per component

    def as_dict(self) -> dict:
        return asdict(self)


def _parameters_by_dtype(tensors: Iterable[Any]) -> Counter[str]:
    """The tensors' parameter counts by short dtype name (fp32, fp16, ...)."""
    counts = Counter()
    for tensor in tensors:
        name = str(tensor.dtype).removeprefix("torch.")
        counts[_DTYPES.get(name, name.lower())] += tensor.numel()
    return counts


def _folder_info(model: ModelFolder) -> ModelInfo:
    folder = model.folder
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    parameters, dtypes = {}, Counter()
    for component in (c for c in COMPONENTS if (folder / c).is_dir()):
        counts = Counter()
        for file in sorted((folder / component).glob("*.safetensors")):
            if file.name.count(".") == 1:  # not a variant (model.fp16.safetensors): those repeat the same weights
                counts += _parameters_by_dtype(read_header(file).values())
        parameters[component] = counts.total()
        dtypes += counts
    family = family_of(unet_config)
    width, height = native_size(unet_config, vae_config)
    return ModelInfo(
        model.reference,
        family.name if family else "unknown",
        family.title if family else "Stable Diffusion (custom widths)",
        scheduler.get("prediction_type", "epsilon"),
        width,
        height,
        dtypes.most_common(1)[0][0] if dtypes else "unknown",
        parameters,
    )


def _file_tensors(model: ModelFile) -> Shapes:
    """A single file's tensors: a safetensors header's, read without torch, or a pickle's (torch.load)."""
    if model.path.suffix.lower() in SAFETENSORS:
        return read_header(model.path)
    from sdcli.loading.checkpoints import read_checkpoint  # torch, for pickles only

    return read_checkpoint(model.path, model.allow_pickle)


def _file_info(model: ModelFile) -> ModelInfo:
    tensors = _file_tensors(model)
    arch = detect(tensors, str(model.path), declared_prediction_type(model.path))
    prefixes = {"unet": UNET, "vae": VAE, "text_encoder": arch.family.text_prefix}
    if arch.family.text_prefix_2:
        prefixes["text_encoder_2"] = arch.family.text_prefix_2
    parameters = {c: sum(t.numel() for k, t in tensors.items() if k.startswith(p)) for c, p in prefixes.items()}
    return ModelInfo(
        model.reference,
        arch.family.name,
        arch.family.title,
        arch.prediction_type,
        arch.native_size,
        arch.native_size,
        _parameters_by_dtype(tensors.values()).most_common(1)[0][0],
        parameters,
    )


def model_info(model: ModelFolder | ModelFile) -> ModelInfo:
    return _file_info(model) if isinstance(model, ModelFile) else _folder_info(model)


def format_info(info: ModelInfo) -> str:
    lines = [
        f"model         {info.model}",
        f"family        {info.family_title} ({info.family})",
        f"prediction    {info.prediction_type}",
        f"native size   {info.width}x{info.height}",
        f"dtype         {info.dtype}",
    ]
    lines += [f"{name:<13} {count:,} parameters" for name, count in info.parameters.items()]
    return "\n".join(lines)
