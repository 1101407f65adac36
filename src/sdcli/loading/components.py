"""A model reference to components on a device: U-Net, VAE, CLIP text encoder(s) and tokenizer(s), scheduler config.

The one place that turns a model into components: a diffusers folder (built-in, local or from the Hugging Face
cache) loads with diffusers' and transformers' own classes from safetensors weights; a single checkpoint file in
the original layout is read by `sdcli.loading.checkpoints`, recognised by `sdcli.loading.architecture` and rebuilt by
`sdcli.loading.single_file`, offline. Everything the loop needs to know about the model is read from its configs here,
never from constants. `--vae`, tiling, offload, channels-last and compilation are applied here too, and a prediction
type the user declares (`sdcli.loading.prediction`) replaces the model's own.

An SDXL folder (a U-Net with `addition_embed_type="text_time"`) also has `tokenizer_2` and `text_encoder_2` (a
`CLIPTextModelWithProjection`), and its pipeline config's `force_zeros_for_empty_prompt` (diffusers' default: true).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdcli.errors import Failure, UsageError, reason
from sdcli.loading.architecture import SD1, SDXL, VAE, VAE_SCALING_FACTOR, describe, detect, family_of, vae_config
from sdcli.loading.checkpoints import read_checkpoint
from sdcli.loading.controlnet import LoadedControlNet
from sdcli.loading.embeddings import Embedding, add_embeddings
from sdcli.loading.geometry import latent_scale, native_size
from sdcli.loading.loras import Lora, add_loras
from sdcli.loading.prediction import check_prediction_type, declared_prediction_type
from sdcli.loading.references import ModelFile, ModelFolder
from sdcli.loading.single_file import (
    build_text_encoder,
    build_text_encoder_2,
    build_unet,
    build_vae,
    clip_tokenizer,
    scheduler_config,
)
from sdcli.recipe import Run

log = logging.getLogger(__name__)


@dataclass
class Model:
    """A loaded Stable Diffusion (1.x, 2.x or XL) model, ready for inference on one device."""

    reference: str  # what loads it again (see ModelFolder, ModelFile)
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL  # in fp32 when the weights are fp16 and its config asks for `force_upcast`
    scheduler_config: Mapping[str, Any]  # the model's own: betas, timestep spacing, prediction_type
    device: torch.device
    dtype: torch.dtype  # of the U-Net and text encoders, and so of the latents
    tokenizer_2: CLIPTokenizer | None = None  # SDXL: OpenCLIP ViT-bigG's tokenizer (CLIP's vocabulary, pads with "!")
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL: the second encoder, with the pooled projection
    force_zeros_for_empty_prompt: bool = False  # SDXL: an empty negative prompt is zero embeddings, not encoded
    classifier: torch.nn.Module | None = None  # classifier guidance's (sdcli.guidance.classifier), loaded on first use
    embeddings: tuple[Embedding, ...] = ()  # textual inversion tokens added to the tokenizers and text encoders
    controlnets: tuple[LoadedControlNet, ...] = ()  # --control-net's, in order (sdcli.loading.controlnet)
    loras: tuple[Lora, ...] = ()  # LoRA adapters in the U-Net and text encoders, unfused (sdcli.loading.loras)

    @property
    def text_encoders(self) -> list[tuple[CLIPTokenizer, CLIPTextModel | CLIPTextModelWithProjection]]:
        """(tokenizer, text encoder) pairs in the order their hidden states are concatenated."""
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        return [(tokenizer, encoder) for tokenizer, encoder in pairs if encoder is not None]

    @property
    def modules(self) -> list[torch.nn.Module]:
        """The torch modules, in the order a generation runs them."""
        modules = (self.text_encoder, self.text_encoder_2, self.unet, self.vae)
        return [module for module in modules if module is not None]

    @property
    def size_conditioned(self) -> bool:
        """Whether the U-Net takes SDXL's pooled text embedding and size and crop conditioning."""
        return family_of(self.unet.config) is SDXL

    @property
    def latent_scale(self) -> int:
        return latent_scale(self.vae.config)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def native_size(self) -> tuple[int, int]:
        return native_size(self.unet.config, self.vae.config)


def _load(what: str, model: ModelFolder, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except Exception as error:  # noqa: BLE001 - a broken or partial model folder, in any of many ways
        raise Failure(
            f"could not load the {what} of model {model.reference} ({reason(error)}); "
            "is it a complete Stable Diffusion model in diffusers format with safetensors weights?"
        ) from None


def vae_dtype(dtype: torch.dtype, config: Mapping[str, Any]) -> torch.dtype:
    """The VAE runs in fp32 under fp16 weights when its config asks (`force_upcast`: SD's VAEs overflow in fp16)."""
    return torch.float32 if dtype == torch.float16 and config.get("force_upcast", False) else dtype


def _sdxl_from_folder(model: ModelFolder, dtype: torch.dtype, index: Mapping[str, Any]) -> dict[str, Any]:
    """SDXL's second tokenizer and text encoder, and its pipeline config's `force_zeros_for_empty_prompt`."""
    folder = model.folder
    return {
        "tokenizer_2": _load(
            "second tokenizer", model, lambda: CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
        ),
        "text_encoder_2": _load(
            "second text encoder",
            model,
            lambda: CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder_2", dtype=dtype, use_safetensors=True
            ),
        ),
        "force_zeros_for_empty_prompt": index.get("force_zeros_for_empty_prompt", True),
    }


def _from_folder(model: ModelFolder, dtype: torch.dtype, prediction_type: str | None) -> dict[str, Any]:
    """The components of a diffusers folder, as keyword arguments of `Model`; `prediction_type`, if given, replaces
    the one in its scheduler config."""
    folder = model.folder
    index = json.loads((folder / "model_index.json").read_text())
    tokenizer = _load("tokenizer", model, lambda: CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"))
    text_encoder = _load(
        "text encoder",
        model,
        lambda: CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype, use_safetensors=True),
    )
    unet = _load(
        "U-Net",
        model,
        lambda: UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, use_safetensors=True),
    )
    config = _load("VAE config", model, lambda: AutoencoderKL.load_config(folder, subfolder="vae"))
    vae = _load(
        "VAE",
        model,
        lambda: AutoencoderKL.from_pretrained(
            folder, subfolder="vae", torch_dtype=vae_dtype(dtype, config), use_safetensors=True
        ),
    )
    # Through the model's own scheduler class, so its defaults fill the config as in diffusers' pipelines.
    declared = {"prediction_type": prediction_type} if prediction_type else {}
    scheduler = _load(
        "scheduler",
        model,
        lambda: (
            getattr(diffusers, index["scheduler"][1]).from_pretrained(folder, subfolder="scheduler", **declared).config
        ),
    )
    components = {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "unet": unet,
        "vae": vae,
        "scheduler_config": scheduler,
    }
    if family_of(unet.config) is SDXL:
        components |= _sdxl_from_folder(model, dtype, index)
    return components


def _from_file(model: ModelFile, dtype: torch.dtype, has_vae: bool, prediction_type: str | None) -> dict[str, Any]:
    """The components of an original-layout checkpoint, as keyword arguments of `Model` (no VAE when `has_vae`);
    what it predicts is `prediction_type`, else what the config beside the file says, else what its weights say."""
    source = str(model.path)
    tensors = read_checkpoint(model.path, model.allow_pickle)
    arch = detect(tensors, source, declared_prediction_type(model.path, prediction_type))
    if arch.vae is None and not has_vae:
        raise UsageError(f"{source} holds no VAE (first_stage_model.*); pass one with --vae FILE_OR_FOLDER")
    log.info("%s: %s, %s, %dx%d", source, arch.family.title, arch.prediction_type, arch.native_size, arch.native_size)
    unet = build_unet(arch, tensors, source).to(dtype)
    text_encoder = build_text_encoder(arch, tensors, source).to(dtype)
    vae = build_vae(arch.vae, tensors, source) if arch.vae and not has_vae else None
    if vae is not None:
        vae.to(vae_dtype(dtype, vae.config))
    components = {
        "tokenizer": clip_tokenizer(arch.family),
        "text_encoder": text_encoder,
        "unet": unet,
        "vae": vae,
        "scheduler_config": scheduler_config(arch.family, arch.prediction_type),
    }
    if arch.family is SDXL:  # and its pipeline's default: an empty negative prompt is zero embeddings
        components |= {
            "tokenizer_2": clip_tokenizer(arch.family, "tokenizer_2"),
            "text_encoder_2": build_text_encoder_2(arch, tensors, source).to(dtype),
            "force_zeros_for_empty_prompt": True,
        }
    return components


def load_vae(
    path: Path, dtype: torch.dtype, native: int, allow_pickle: bool = False, scaling_factor: float = VAE_SCALING_FACTOR
) -> AutoencoderKL:
    """A VAE from a diffusers VAE folder, a diffusers model folder (its vae/), or an original-layout file (whose
    latents are scaled by `scaling_factor`, the model family's)."""
    if path.is_dir():
        subfolder = "" if (path / "config.json").is_file() else "vae"
        source = ModelFolder(str(path), path)
        config = _load("VAE config", source, lambda: AutoencoderKL.load_config(path, subfolder=subfolder))
        return _load(
            "VAE",
            source,
            lambda: AutoencoderKL.from_pretrained(
                path, subfolder=subfolder, torch_dtype=vae_dtype(dtype, config), use_safetensors=True
            ),
        )
    tensors = read_checkpoint(path, allow_pickle)
    prefix = VAE if any(k.startswith(VAE) for k in tensors) else ""
    if (
        prefix + "encoder.conv_in.weight" not in tensors
        or prefix + "encoder.down.0.block.0.conv1.weight" not in tensors
    ):
        layout = (
            "a VAE in diffusers layout: pass its folder (with config.json) instead"
            if any(k.startswith("encoder.down_blocks.") for k in tensors)
            else "not a VAE in the original layout (encoder.down.*, decoder.up.*)"
        )
        raise UsageError(f"--vae {path} holds {describe(tensors)}; it is {layout}")
    vae = build_vae(vae_config(tensors, prefix, native, scaling_factor), tensors, str(path))
    return vae.to(vae_dtype(dtype, vae.config))


def _speed_up(model: Model, run: Run) -> None:
    """Memory layout, tiling, offload and compilation: the options that change how fast, not what, a model makes."""
    if model.device.type == "cuda":
        # Convolutions in NHWC run on tensor cores without transposes; on the CPU it would change fp32 rounding.
        model.unet.to(memory_format=torch.channels_last)
        model.vae.to(memory_format=torch.channels_last)
    if run.vae_tiling:
        model.vae.enable_tiling()
    if run.offload:
        from accelerate import cpu_offload_with_hook

        hook = None
        for module in model.modules:  # the order they run in: each evicts the last
            _, hook = cpu_offload_with_hook(module, model.device, prev_module_hook=hook)
    if run.compile:
        model.unet.compile(dynamic=False)


def _quiet_libraries() -> None:
    """diffusers' and transformers' log chatter and tqdm bars ("Loading weights") off, through their own switches.
    Here rather than at start-up: importing them takes seconds, and their first import resets their loggers' level
    (which `sdcli.output.console.setup_logging` sets by name, before)."""
    for library_logging in (diffusers.utils.logging, transformers.utils.logging):
        library_logging.set_verbosity_error()
        library_logging.disable_progress_bar()


def load_model(
    model: ModelFolder | ModelFile,
    device: torch.device,
    dtype: torch.dtype,
    run: Run = Run(),
    vae: Path | None = None,
    prediction_type: str | None = None,
    embeddings: Sequence[Embedding] = (),
    loras: Sequence[Lora] = (),
) -> Model:
    """Load the components of `model` (five; seven for SDXL) onto `device`, with `vae` (a checked --vae path) in
    place of its own, the textual inversion `embeddings` added and the `loras` loaded as adapters, made ready the way
    `run` asks (offload, tiling, compilation). `prediction_type` ("epsilon", "v_prediction") replaces what the model
    predicts; None: as its scheduler config says (a folder), or as the AUTOMATIC1111 config beside it, else its
    weights, say (a single file)."""
    if run.offload and device.type != "cuda":
        raise UsageError("--offload keeps idle components in CPU memory while a GPU runs; it needs --device cuda")
    if prediction_type is not None:
        check_prediction_type(prediction_type)
    _quiet_libraries()
    if isinstance(model, ModelFile):
        components = _from_file(model, dtype, vae is not None, prediction_type)
    else:
        components = _from_folder(model, dtype, prediction_type)
    if vae is not None:
        unet, own_vae = components["unet"], components["vae"]
        native = native_size(unet.config, own_vae.config)[0] if own_vae else unet.config.sample_size * 8  # SD: 8
        scaling_factor = (family_of(unet.config) or SD1).vae_scaling_factor
        components["vae"] = load_vae(vae, dtype, native, run.allow_pickle, scaling_factor)
    loaded = Model(model.reference, device=device, dtype=dtype, **components)
    loaded.embeddings = add_embeddings(loaded.text_encoders, embeddings)  # before offload hooks or devices
    loaded.loras = add_loras(loaded, loras)
    for module in loaded.modules:
        module.eval().requires_grad_(False)
        if not run.offload:
            module.to(device)
    _speed_up(loaded, run)
    return loaded
