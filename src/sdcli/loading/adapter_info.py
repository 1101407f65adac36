"""What an adapter file is, for `sdcli info`: a LoRA, a textual inversion embedding or a ControlNet, and the model
family it fits, read from a safetensors header (`sdcli.loading.headers`) without torch.

- LoRA: kohya's `lora_unet_`/`lora_te_` (`lora_te1_`, `lora_te2_`) `.lora_down.weight` keys, or diffusers'/peft's
  `unet.`/`text_encoder.`/`text_encoder_2.` `.lora_A.weight` keys. The family from the widths its down matrices
  read: the text encoder's (768 CLIP-L: SD 1.x, 1024 OpenCLIP-H: SD 2.x) or the cross-attention's (2048: SDXL), and
  SDXL wherever a second text encoder is. Its rank: the most common smaller side of its down matrices.
- Embedding: `emb_params`, `string_to_param.*`, `clip_l` and `clip_g` (SDXL), or one {token: tensor} 768 or 1024
  wide. The token is the file's name without its suffix, as `--embedding` uses it.
- ControlNet: a diffusers `ControlNetModel` folder (config.json), or one safetensors file in diffusers' layout
  (`controlnet_cond_embedding.*`) or the original one (`control_model.*`); the family by its cross-attention width.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdcli.errors import UsageError
from sdcli.loading.architecture import SD1, SD2, SDXL, Family, Shapes, family_of
from sdcli.loading.headers import read_header
from sdcli.loading.references import SAFETENSORS

_BY_WIDTH = {768: SD1, 1024: SD2, 2048: SDXL}  # text encoder / cross-attention width: the family
_KOHYA = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
_PEFT = {"unet.": "unet", "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}
_CROSS_ATTENTION_KEY = re.compile(r"attn2[._]to_k")


@dataclass(frozen=True)
class AdapterInfo:
    kind: str  # "lora", "embedding", "controlnet"
    file: str  # the file or folder read
    format: str  # the layout it was read in
    family: str  # "sd1", "sd2", "sdxl", or "unknown"
    family_title: str
    details: dict[str, Any] = field(default_factory=dict)  # the kind's own: rank and layers, token and vectors, ...

    def as_dict(self) -> dict:
        found = asdict(self)
        return {key: value for key, value in found.items() if key != "details"} | self.details


def _family(family: Family | None) -> tuple[str, str]:
    return (family.name, family.title) if family else ("unknown", "unknown (no width of a known family)")


def _most_common(values: list[int]) -> int | None:
    return Counter(values).most_common(1)[0][0] if values else None


def _lora(tensors: Shapes, file: Path) -> AdapterInfo | None:
    downs: dict[str, list[tuple[str, Any]]] = {}  # component: (key, down matrix)
    layout = None
    for key, tensor in tensors.items():
        if key.endswith((".lora_down.weight", ".lora_A.weight")) and tensor.ndim >= 2:
            table = _KOHYA if key.startswith("lora_") else _PEFT
            prefix = next((p for p in sorted(table, key=len, reverse=True) if key.startswith(p)), None)
            if prefix:
                downs.setdefault(table[prefix], []).append((key, tensor))
                layout = "kohya" if table is _KOHYA else "diffusers"
    if not downs:
        return None
    text_width = _most_common([t.shape[1] for _, t in downs.get("text_encoder", [])])
    cross = _most_common([t.shape[1] for k, t in downs.get("unet", []) if _CROSS_ATTENTION_KEY.search(k)])
    if "text_encoder_2" in downs or cross == 2048 or any(k.startswith("lora_te1_") for k in tensors):
        family = SDXL
    else:
        family = _BY_WIDTH.get(text_width) or _BY_WIDTH.get(cross)
    ranks = [min(t.shape[0], t.shape[1]) for modules in downs.values() for _, t in modules]
    layers = {component: len(downs[component]) for component in _PEFT.values() if component in downs}
    details = {"rank": _most_common(ranks), "layers": layers}
    return AdapterInfo("lora", str(file), layout, *_family(family), details)


def _embedding(tensors: Shapes, file: Path) -> AdapterInfo | None:
    keys = list(tensors)
    if "clip_l" in tensors and "clip_g" in tensors:
        first, second = tensors["clip_l"], tensors["clip_g"]
        vectors = first.shape[0] if first.ndim == 2 else 1
        details = {"token": file.stem, "vectors": vectors, "width": first.shape[-1], "width_2": second.shape[-1]}
        return AdapterInfo("embedding", str(file), "clip_l and clip_g", *_family(SDXL), details)
    if "emb_params" in tensors:
        vectors, layout = tensors["emb_params"], "emb_params"
    elif keys and all(k.startswith("string_to_param") for k in keys):
        vectors, layout = tensors[keys[0]], "string_to_param"
    elif len(keys) == 1 and tensors[keys[0]].ndim in (1, 2) and tensors[keys[0]].shape[-1] in (768, 1024):
        vectors, layout = tensors[keys[0]], "{token: tensor}"
    else:
        return None
    if vectors.ndim not in (1, 2):
        return None
    width = vectors.shape[-1]
    details = {"token": file.stem, "vectors": vectors.shape[0] if vectors.ndim == 2 else 1, "width": width}
    return AdapterInfo("embedding", str(file), layout, *_family(_BY_WIDTH.get(width)), details)


def _parameters(tensors: Shapes) -> int:
    return sum(t.numel() for t in tensors.values())


def _controlnet_file(tensors: Shapes, file: Path) -> AdapterInfo | None:
    if any(k.startswith("controlnet_cond_embedding.") for k in tensors):
        layout, sdxl = "diffusers", any(k.startswith("add_embedding.") for k in tensors)
    elif any(k.startswith("control_model.") for k in tensors):
        layout, sdxl = "original", any(k.startswith("control_model.label_emb.") for k in tensors)
    else:
        return None
    cross = _most_common([t.shape[1] for k, t in tensors.items() if _CROSS_ATTENTION_KEY.search(k) and t.ndim == 2])
    family = SDXL if sdxl else _BY_WIDTH.get(cross)
    details = {"cross_attention_width": cross, "parameters": _parameters(tensors)}
    return AdapterInfo("controlnet", str(file), layout, *_family(family), details)


def _controlnet_folder(folder: Path) -> AdapterInfo | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(config, dict) or config.get("_class_name") != "ControlNetModel":
        return None
    weights = [f for f in sorted(folder.glob("*.safetensors")) if f.name.count(".") == 1]  # not variants
    parameters = sum(_parameters(read_header(f)) for f in weights)
    details = {"cross_attention_width": config.get("cross_attention_dim"), "parameters": parameters}
    return AdapterInfo("controlnet", str(folder), "diffusers folder", *_family(family_of(config)), details)


def adapter_info(reference: str) -> AdapterInfo | None:
    """What the LoRA, embedding or ControlNet `reference` names is; None for anything else (a model, or a file that
    does not read: `sdcli.loading.info` says what it is)."""
    path = Path(reference).expanduser()
    if path.is_dir() and not (path / "model_index.json").exists():
        return _controlnet_folder(path.resolve())
    if not path.is_file() or path.suffix.lower() not in SAFETENSORS:
        return None
    try:
        tensors = read_header(path)
    except UsageError:
        return None
    path = path.resolve()
    return _lora(tensors, path) or _embedding(tensors, path) or _controlnet_file(tensors, path)


def format_adapter(info: AdapterInfo) -> str:
    details = info.details
    lines = [
        f"{info.kind:<13} {info.file}",
        f"format        {info.format}",
        f"fits          {info.family_title} ({info.family})",
    ]
    if info.kind == "lora":
        lines.append(f"rank          {details['rank']}")
        lines += [f"{name:<13} {count} layers" for name, count in details["layers"].items()]
    elif info.kind == "embedding":
        width = f"{details['width']} + {details['width_2']}" if "width_2" in details else str(details["width"])
        lines += [f"token         {details['token']}", f"vectors       {details['vectors']}", f"width         {width}"]
    else:
        lines += [
            f"cross-attn    {details['cross_attention_width']}",
            f"parameters    {details['parameters']:,}",
        ]
    return "\n".join(lines)
