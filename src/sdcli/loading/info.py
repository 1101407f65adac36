"""What a model is, without building it: family, prediction type, native size, dtype, parameters per component.

A diffusers folder is read from its configs and its safetensors headers; a single file from its tensors' names and
shapes (`sdcli.loading.architecture`), as loading it would.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass

from safetensors import safe_open

from sdcli.loading.architecture import UNET, VAE, detect, family_of
from sdcli.loading.checkpoints import read_checkpoint
from sdcli.loading.geometry import native_size
from sdcli.loading.references import ModelFile, ModelFolder

_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}
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


def _folder_info(model: ModelFolder) -> ModelInfo:
    folder = model.folder
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    parameters, dtypes = {}, Counter()
    for component in (c for c in COMPONENTS if (folder / c).is_dir()):
        total = 0
        for file in sorted((folder / component).glob("*.safetensors")):
            if file.name.count(".") > 1:  # variants (model.fp16.safetensors) repeat the same weights
                continue
            with safe_open(file, "pt") as weights:
                for name in weights.keys():
                    tensor = weights.get_slice(name)
                    count = 1
                    for side in tensor.get_shape():
                        count *= side
                    total += count
                    dtypes[_DTYPES.get(tensor.get_dtype(), tensor.get_dtype().lower())] += count
        parameters[component] = total
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


def _file_info(model: ModelFile) -> ModelInfo:
    tensors = read_checkpoint(model.path, model.allow_pickle)
    arch = detect(tensors, str(model.path))
    prefixes = {"unet": UNET, "vae": VAE, "text_encoder": arch.family.text_prefix}
    if arch.family.text_prefix_2:
        prefixes["text_encoder_2"] = arch.family.text_prefix_2
    parameters = {c: sum(t.numel() for k, t in tensors.items() if k.startswith(p)) for c, p in prefixes.items()}
    dtypes = Counter()
    for tensor in tensors.values():
        dtypes[str(tensor.dtype).removeprefix("torch.")] += tensor.numel()
    names = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    dtype = dtypes.most_common(1)[0][0]
    return ModelInfo(
        model.reference,
        arch.family.name,
        arch.family.title,
        arch.prediction_type,
        arch.native_size,
        arch.native_size,
        names.get(dtype, dtype),
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

