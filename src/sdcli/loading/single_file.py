"""An original-layout checkpoint's tensors to diffusers and transformers components, without the network.

diffusers' own converters (`diffusers.loaders.single_file_utils`) rename the tensors; the configs come from
`sdcli.loading.architecture` (names and shapes) and the files bundled in `sdcli/configs/` (scheduler, tokenizer), where
diffusers' `from_single_file` would fetch them from the Hub. Each module is built empty and then filled with
`load_state_dict(strict=True)`: a tensor too many or too few is an error that names it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import diffusers
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdcli.errors import Failure
from sdcli.loading.architecture import SD2, Architecture, Family
from sdcli.loading.checkpoints import Tensors

CLIP_MERGES = 49152 - 256 - 2  # merges CLIP uses from its BPE file (OpenAI's `SimpleTokenizer`)


def _byte_symbols() -> list[str]:
    """GPT-2's and CLIP's printable stand-ins for the 256 byte values, in CLIP's vocabulary order: the printable
    bytes as themselves, then the rest as code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def _configs() -> Any:
    return resources.files("sdcli").joinpath("configs")


@cache
def _clip_bpe() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP's vocabulary and merges, built from the bundled BPE file exactly as OpenAI's tokenizer builds them."""
    lines = gzip.decompress(_configs().joinpath("clip/bpe_simple_vocab_16e6.txt.gz").read_bytes()).decode()
    merges = tuple(tuple(line.split()) for line in lines.split("\n")[1 : CLIP_MERGES + 1])
    symbols = _byte_symbols()
    words = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    return {word: i for i, word in enumerate(words)}, merges


def clip_tokenizer(family: Family, name: str = "tokenizer") -> CLIPTokenizer:
    """The family's CLIP tokenizer `name` (SDXL's second: "tokenizer_2"), 77 tokens, from bundled files only; the
    OpenCLIP ones (SD 2.x's, SDXL's second) pad with "!"."""
    vocab, merges = _clip_bpe()
    settings = json.loads(_configs().joinpath(f"{family.name}/{name}_config.json").read_text())
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), **settings)


def scheduler_config(family: Family, prediction_type: str) -> Mapping[str, Any]:
    """The family's scheduler config with the checkpoint's prediction type, its class's defaults filled in."""
    config = json.loads(_configs().joinpath(f"{family.name}/scheduler_config.json").read_text())
    config["prediction_type"] = prediction_type
    return getattr(diffusers, config.pop("_class_name")).from_config(config).config


def fill(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str) -> torch.nn.Module:
    """`module`, built empty, filled with `state` (renamed tensors): one it lacks, or of the wrong shape, is an error
    that names it."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or mismatched:
        names = ", ".join((missing or mismatched)[:3])
        problem = "lacks" if missing else "has the wrong shape for"
        raise Failure(
            f"{source}: its {what} {problem} {len(missing or mismatched)} tensors sdcli expects ({names}); "
            "the file is damaged or of a variant sdcli does not know"
        )
    module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)
    return module


def build_unet(arch: Architecture, tensors: Tensors, source: str) -> UNet2DConditionModel:
    with init_empty_weights():
        unet = UNet2DConditionModel(**arch.unet)
    return fill(unet, convert_ldm_unet_checkpoint(tensors, dict(unet.config)), "U-Net", source)


def build_vae(config: Mapping[str, Any], tensors: Tensors, source: str) -> AutoencoderKL:
    """The VAE of an original-layout checkpoint (first_stage_model.*) or of a VAE file alone (encoder.*)."""
    with init_empty_weights():
        vae = AutoencoderKL(**config)
    return fill(vae, convert_ldm_vae_checkpoint(tensors, dict(vae.config)), "VAE", source)


def _text_encoder(
    cls: type, config: Mapping[str, Any], tensors: Tensors, open_clip: str | None, what: str, source: str
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A `cls` text encoder from OpenAI CLIP's tensors, or with `open_clip` (a prefix) from OpenCLIP's."""
    with init_empty_weights():
        text_encoder = cls(CLIPTextConfig(**config))
    if open_clip:
        state = convert_open_clip_checkpoint(text_encoder, tensors, prefix=open_clip)
    else:
        state = convert_ldm_clip_checkpoint(tensors)
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    return fill(text_encoder, state, what, source)


def build_text_encoder(arch: Architecture, tensors: Tensors, source: str) -> CLIPTextModel:
    open_clip = arch.family.text_prefix if arch.family is SD2 else None
    return _text_encoder(CLIPTextModel, arch.text_encoder, tensors, open_clip, "text encoder", source)


def build_text_encoder_2(arch: Architecture, tensors: Tensors, source: str) -> CLIPTextModelWithProjection:
    """SDXL's second text encoder (OpenCLIP ViT-bigG), with the projection that gives the pooled embedding."""
    return _text_encoder(
        CLIPTextModelWithProjection,
        arch.text_encoder_2,
        tensors,
        open_clip=arch.family.text_prefix_2,
        what="second text encoder",
        source=source,
    )
