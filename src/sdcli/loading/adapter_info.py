"""What an adapter file is, for `sdcli info`: a LoRA, a textual inversion embedding or a ControlNet, and the model
family it fits, read from a safetensors header (`sdcli.loading.headers`) without torch.

- LoRA: kohya's `lora_unet_`/`lora_te_` (`lora_te1_`, `lora_te2_`) `.lora_down.weight` keys, or diffusers'/peft's
  `unet.`/`text_encoder.`/`text_encoder_2.` `.lora_A.weight` keys. The family from the widths its down matrices
  read: the text encoder's (768 CLIP-L: SD 1.x, 1024 OpenCLIP-H: SD 2.x) or the cross-attention's (2048: SDXL), and
  SDXL wherever a second text encoder is. Its rank: the most common smaller side of its down matrices.
- Embedding: `emb_params`, `string_to_param.*`, `clip_l` and `clip_g` (SDXL), or one {token: tensor} 768 or 1024
  wide. The token is the file's name without its suffix, as `--embedding` uses it.
- ControlNet: a diffusers `ControlNetModel` folder (config.json), or one safetensors file in diffusers' layout
  (`controlnet_cond_embedding.*`) or the original one (`input_hint_block.*`, with or without `control_model.`); the
  family by its cross-attention width.

A pickle (`.pt`, `.pth`, `.bin`, `.ckpt`: embeddings and LoRAs saved with `torch.save`) is read only with
`--allow-pickle`, through `torch.load(weights_only=True)`, and then said as a safetensors file is. Without it, its
pickle's opcodes are scanned, never run (`pickletools.genops`), for the names that tell the kind, and one line says
what it looks like and that `--allow-pickle` reads it.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdcli.errors import UsageError
from sdcli.loading.architecture import SD1, SD2, SDXL, Family, Shapes, family_of
from sdcli.loading.headers import read_header
from sdcli.loading.references import PICKLES, SAFETENSORS

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
    elif any(k.startswith(("control_model.", "input_hint_block.")) for k in tensors):
        layout, sdxl = "original", any(k.startswith(("control_model.label_emb.", "label_emb.")) for k in tensors)
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


# Names inside a pickle that tell an adapter's kind (or a model's), looked for without unpickling.
_PICKLE_HINTS = (
    ("string_to_param", "a textual inversion embedding (AUTOMATIC1111's string_to_param)"),
    ("emb_params", "a textual inversion embedding (emb_params)"),
    ("lora_down", "a LoRA (kohya's lora_down/lora_up)"),
    ("lora_A", "a LoRA (diffusers'/peft's lora_A/lora_B)"),
    ("input_hint_block", "a ControlNet (the original layout)"),
    ("controlnet_cond_embedding", "a ControlNet (diffusers' layout)"),
)
MAX_PICKLE_SCAN = 64 * 1024 * 1024  # bytes of a pickle's opcodes scanned for names (tensors' data lie outside them)


def _pickle_names(path: Path) -> set[str]:
    """The strings a pickle file holds (its dictionary keys among them), read from its opcodes without running any:
    torch.save's zip archive's data.pkl, or a legacy file's leading pickles. Empty where it does not parse."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.open(name).read(MAX_PICKLE_SCAN)
        else:
            with path.open("rb") as file:
                data = file.read(MAX_PICKLE_SCAN)
    except (OSError, StopIteration, zipfile.BadZipFile):
        return set()
    names, stream = set(), io.BytesIO(data)
    for _ in range(5):  # a legacy file: magic number, protocol, system info, then the object
        try:
            names |= {arg for _, arg, _ in pickletools.genops(stream) if isinstance(arg, str)}
        except Exception:  # noqa: BLE001 - the end of the pickles, or not a pickle: what was read so far
            break
    return names


def pickled_kind(path: Path) -> str | None:
    """The adapter a pickle's names say it is (`_PICKLE_HINTS`), None for anything else (a model checkpoint)."""
    names = _pickle_names(path)
    return next((kind for hint, kind in _PICKLE_HINTS if any(hint in name for name in names)), None)


def _refuse_unpickled(path: Path, kind: str) -> None:
    """One line on an adapter pickle read without --allow-pickle: what its names say it is, and how to read it."""
    raise UsageError(
        f"{path} is a pickle ({path.suffix}) that looks like {kind}; sdcli unpickles only with --allow-pickle (its "
        "tensors alone, torch.load(weights_only=True)): pass it to read its family and size, or convert the file to "
        ".safetensors"
    )


def _pickle_tensors(path: Path) -> Shapes:
    """A pickle's tensors, by dotted name through nested dictionaries (AUTOMATIC1111's `string_to_param.*`), read
    with torch.load(weights_only=True); a Lightning `state_dict` level is stepped into."""
    from sdcli.loading.checkpoints import load_pickle  # torch, for pickles only

    loaded = load_pickle(path)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    tensors: dict[str, Any] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key != "string_to_token":  # AUTOMATIC1111's token ids, not weights
                    walk(item, f"{name}.{key}" if name else str(key))
        elif hasattr(value, "shape") and hasattr(value, "numel"):
            tensors[name] = value

    walk(loaded, "")
    return tensors


def adapter_info(reference: str, allow_pickle: bool = False) -> AdapterInfo | None:
    """What the LoRA, embedding or ControlNet `reference` names is; None for anything else (a model, or a file that
    does not read: `sdcli.loading.info` says what it is). A pickle is unpickled only with `allow_pickle` and when its
    names say it is an adapter; one that does, without `allow_pickle`, is a usage error saying what it looks like."""
    path = Path(reference).expanduser()
    if path.is_dir() and not (path / "model_index.json").exists():
        return _controlnet_folder(path.resolve())
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in SAFETENSORS + PICKLES:
        return None
    if suffix in PICKLES:
        kind = pickled_kind(path)
        small = path.stat().st_size <= MAX_PICKLE_SCAN  # a diffusers learned_embeds.bin: {token: tensor}, no hint
        if kind is None and not (allow_pickle and small):
            return None  # a model checkpoint (read, or refused, as one), or nothing sdcli reads
        if not allow_pickle:
            _refuse_unpickled(path.resolve(), kind)
    try:
        tensors = read_header(path) if suffix in SAFETENSORS else _pickle_tensors(path)
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
