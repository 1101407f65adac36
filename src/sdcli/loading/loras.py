"""LoRA (Hu et al. 2021): low-rank updates W + weight x alpha / rank x up @ down of the U-Net's and text encoders'
linear and convolution layers, loaded as peft adapters, unfused, so that their weights change between batches
without reloading anything.

Formats, read offline, pickles only with --allow-pickle (torch.load(weights_only=True)):

- kohya-ss / AUTOMATIC1111: `lora_unet_..._lora_down.weight`, `lora_up`, `.alpha`; `lora_te_` (SDXL: `lora_te1_`,
  `lora_te2_`); SDXL's original-layout block names (`input_blocks_...`) mapped through the U-Net's config
- diffusers / peft: `unet.<module>.lora_A.weight`, `lora_B`, `text_encoder.` (`text_encoder_2.`), with diffusers'
  adapter metadata in the safetensors header when it has it (else alpha = rank)

Everything goes through diffusers' own code: `StableDiffusionLoraLoaderMixin.lora_state_dict` (SDXL's mixin for
SDXL) converts kohya's keys and reads the alphas, `load_lora_into_unet` / `load_lora_into_text_encoder` load them as
named adapters, and `set_adapters` / `set_adapters_for_text_encoder` set their weights, as diffusers'
`load_lora_weights` and `set_adapters` do.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
from diffusers.loaders.lora_base import set_adapters_for_text_encoder
from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata

from sdcli.errors import UsageError, reason
from sdcli.loading.checkpoints import check_adapter_file, read_checkpoint
from sdcli.loading.lora_names import Chosen
from sdcli.loading.references import SAFETENSORS
from sdcli.recipe import lora_name

FORMATS = "kohya's lora_unet_/lora_te_ keys or diffusers' unet./text_encoder. lora_A/lora_B keys"


@dataclass(frozen=True)
class Lora:
    """One LoRA file, read and checked; its weight is set per batch (`set_lora_weights`)."""

    path: Path
    sha256: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] | None  # diffusers' adapter metadata (ranks, alphas), from a safetensors header

    @property
    def name(self) -> str:
        return lora_name(str(self.path))


def read_lora(path: Path, allow_pickle: bool, recorded_sha256: str | None = None) -> Lora:
    """The LoRA file at `path`, checked against the sha256 a replay recorded for it."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UsageError(f"--lora {path} {what}; give a LoRA file (.safetensors), optionally :WEIGHT after it")
    sha256 = check_adapter_file(path, "--lora", "a LoRA file", allow_pickle, recorded_sha256)
    tensors = read_checkpoint(path.resolve(), allow_pickle)
    if not all("lora" in key or key.endswith(".alpha") for key in tensors):
        keys = ", ".join(sorted(tensors)[:3])
        raise UsageError(f"--lora {path} holds {keys}..., not a LoRA ({FORMATS}); give a LoRA file")
    metadata = _load_sft_state_dict_metadata(str(path)) if path.suffix.lower() in SAFETENSORS else None
    return Lora(path.resolve(), sha256, tensors, metadata)


def read_loras(files: Sequence[Chosen], allow_pickle: bool) -> list[Lora]:
    """Every LoRA file a run asks for (`sdcli.loading.lora_names.union`), no two of one name (its adapter's)."""
    loras = [read_lora(chosen.path, allow_pickle, chosen.sha256) for chosen in files]
    by_name: dict[str, Path] = {}
    for lora in loras:
        other = by_name.setdefault(lora.name, lora.path)
        if other != lora.path:
            raise UsageError(f"--lora {lora.path} and {other} have one name {lora.name!r}; rename one file")
    return loras


def _adapters(module: torch.nn.Module | None) -> list[str]:
    """The adapters loaded into a module, in order."""
    return list(getattr(module, "peft_config", None) or {})


def _load(mixin: type, lora: Lora, unet: torch.nn.Module, encoders: list, config: dict[str, Any]) -> None:
    """One LoRA into the U-Net and each (prefix, text encoder), as diffusers' `load_lora_weights` loads it."""
    state_dict, alphas = mixin.lora_state_dict(dict(lora.tensors), **config)
    mixin.load_lora_into_unet(state_dict, alphas, unet, adapter_name=lora.name, metadata=lora.metadata)
    for prefix, encoder in encoders:
        mixin.load_lora_into_text_encoder(
            state_dict, alphas, encoder, prefix=prefix, adapter_name=lora.name, metadata=lora.metadata
        )


def add_loras(model: Any, loras: Sequence[Lora]) -> tuple[Lora, ...]:
    """Load each LoRA into the U-Net and text encoder(s) of `model` (a `sdcli.loading.components.Model`, before it
    is placed or offloaded) as an adapter named after its file; each batch sets their weights."""
    sdxl = model.text_encoder_2 is not None
    mixin = StableDiffusionXLLoraLoaderMixin if sdxl else StableDiffusionLoraLoaderMixin
    encoders = [(mixin.text_encoder_name, model.text_encoder)]
    if sdxl:
        encoders.append((f"{mixin.text_encoder_name}_2", model.text_encoder_2))
    for lora in loras:
        problem = f"--lora {lora.path} does not fit model {model.reference}"
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Already found a `peft_config`")  # a second adapter: as meant
                _load(mixin, lora, model.unet, encoders, {"unet_config": model.unet.config} if sdxl else {})
        except (ValueError, RuntimeError, KeyError, TypeError) as error:  # shapes or names of another model
            why = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), reason(error))
            raise UsageError(f"{problem} ({why}); give a LoRA trained for this model's family") from None
        if not any(lora.name in _adapters(module) for module in (model.unet, *(e for _, e in encoders))):
            raise UsageError(
                f"{problem}: none of its keys names a module of its U-Net or text encoder ({FORMATS}); "
                "give a LoRA trained for this model's family"
            )
    return tuple(loras)


def set_lora_weights(model: Any, loras: Sequence[Lora], weights: Sequence[float]) -> None:
    """Each loaded LoRA at its weight in every component that has it, as diffusers' `set_adapters` sets them."""
    by_name = {lora.name: float(weight) for lora, weight in zip(loras, weights, strict=True)}
    for module in model.modules:
        names = [name for name in _adapters(module) if name in by_name]
        if not names:
            continue
        if module is model.unet:
            module.set_adapters(names, [by_name[name] for name in names])
        else:
            set_adapters_for_text_encoder(names, module, [by_name[name] for name in names])
