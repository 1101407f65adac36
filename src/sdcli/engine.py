"""The engine: recipes in, images out, in numbered steps as diffusers' pipelines' `__call__` reads.

1. check: the recipes can share U-Net batches, and their size fits the model's latent scale
2. load: the model for a request, once per run (`load_for`)
3. encode: each distinct set of prompts once, into the conditioning of each guidance branch
4. prepare latents: per batch, each image's initial noise from its own generator, and the schedule
5. denoise: the sampler's loop over the guided predictor (the guidance registry's methods, in order)
6. decode: latents to pixels
7. write: the workflows (`sdcli.workflows`) write what the engine yields, each in its own way

Text-to-image is its first mode. A mode that starts from an image (img2img, inpainting) is a variant of step 4
(initial latents from the image, a truncated schedule); inpainting also adds the mask to step 5 (as the U-Net's input,
or blended in after each step) and its overlay to step 6 (`sdcli.modes.inpaint`); an adapter is a part of step 2 or 3.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import SchedulerMixin
from PIL import Image

from sdcli.errors import UsageError
from sdcli.guidance.cfg import CountedDenoiser, needs_unconditional
from sdcli.guidance.context import GuidanceContext
from sdcli.guidance.pag import check_pag_layers
from sdcli.guidance.registry import guided_predictor
from sdcli.loading.components import Model, load_model
from sdcli.loading.controlnet import check_controlnets, load_controlnets
from sdcli.loading.devices import DTYPE_NAMES, memory_of, resolve_device, resolve_dtype
from sdcli.loading.embeddings import embedding_files, read_embeddings
from sdcli.loading.geometry import check_size
from sdcli.loading.lora_names import chosen_loras, union
from sdcli.loading.loras import read_loras, set_lora_weights
from sdcli.loading.references import resolve_model, resolve_vae
from sdcli.modes.controlnet import IMAGE_OPTION as CONTROL_IMAGE_OPTION
from sdcli.modes.controlnet import check_control, prepare_control
from sdcli.modes.hires import hires_size, upscale
from sdcli.modes.img2img import (
    check_recorded,
    check_runs_a_step,
    encode_image,
    image_size,
    read_picture,
    sample_x0,
    schedule_steps,
)
from sdcli.modes.inpaint import MASK_OPTION, Inpainting, check_mask, prepare_inpainting
from sdcli.output.images import check_decode_fits, decode, to_pil
from sdcli.recipe import MAX_SIDE, Hires, ImageRecord, Recipe, Request
from sdcli.sampling.loop import Schedule, StepCallback, build_scheduler, denoise, initial_noise, unet_denoiser
from sdcli.sampling.samplers import get_sampler
from sdcli.text.conditioning import Branches, Conditioning
from sdcli.text.lora_tags import read_tags
from sdcli.text.prompts import encode_prompts

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Generated:
    record: ImageRecord  # the settings that remake this image alone
    image: Image.Image
    seconds: float  # wall time of its batch, shared equally among the batch's images
    unet_evaluations: int = 0  # U-Net evaluations made for this image (one per branch per model call)

    def result(self, path: Path) -> dict:
        """The JSON object `--json` prints and a batch manifest records for this image written at `path`."""
        return {
            "path": str(path),
            **self.record.as_dict(),
            "seconds": round(self.seconds, 3),
            "unet_evaluations": self.unet_evaluations,
        }


def chunked(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """`items` in order, `size` at a time (the last chunk may be shorter)."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# 1. Check.


def batch_key(recipe: Recipe) -> tuple[Recipe, int, tuple[tuple[str, float], ...]]:
    """What images must share to be made in one U-Net batch: every setting but the prompts and the seed, the
    number of separate negative branches that run (empty negatives and a zero scale run none), and the prompt's
    LoRA tags (the weights the batch sets)."""
    return recipe.shared, len(recipe.separate_negatives), read_tags(recipe.prompt).loras


def size_of(model: Model, recipe: Recipe) -> tuple[int, int]:
    """The (width, height) a recipe makes, checked against the model's latent scale: as asked, else the init
    image's, else the model's native size."""
    if recipe.init_image is not None:
        default = image_size(Path(recipe.init_image), model.latent_scale)
    else:
        default = model.native_size
    width, height = recipe.width or default[0], recipe.height or default[1]
    check_size(width, height, model.latent_scale)
    final = (width, height)
    if recipe.hires is not None:
        final = hires_size(width, height, recipe.hires.scale, model.latent_scale)
        if max(final) > MAX_SIDE:
            raise UsageError(
                f"--hires-scale {recipe.hires.scale:g} of {width}x{height} makes {final[0]}x{final[1]}, over "
                f"{MAX_SIDE} pixels a side; use a smaller --hires-scale or size"
            )
    check_decode_fits(model.vae, *final, memory_of(model.device))
    return width, height


def check_inputs(recipe: Recipe) -> None:
    """The recipe's image inputs (readable, the files a replay recorded), its passes (each runs a step) and the
    LoRAs it names (found)."""
    chosen_loras(recipe)
    if recipe.init_image is not None:
        check_recorded(Path(recipe.init_image), recipe.init_image_sha256, "--init-image")
        check_runs_a_step(recipe.steps, recipe.resolved_strength, "--strength", "--steps")
    if recipe.hires is not None:
        check_runs_a_step(recipe.hires.steps, recipe.hires.strength, "--hires-strength", "--hires-steps")


def check(model: Model, recipes: Sequence[Recipe]) -> tuple[int, int]:
    """The (width, height) the recipes make, once checked: they share every setting but prompts and seed, their
    inputs are there, PAG's layers are the U-Net's, and the size is a multiple of the model's latent scale."""
    if any(batch_key(recipe) != batch_key(recipes[0]) for recipe in recipes):
        raise ValueError("make_batched takes recipes that differ only in prompts and seed")
    check_inputs(recipes[0])
    check_mask(model, recipes[0])
    check_control(model, recipes[0])
    check_pag_layers(model, recipes[0])
    return size_of(model, recipes[0])


# 2. Load.


def load_for(request: Request) -> Model:
    """Check the request's device, dtype and model reference, then load the model (the slow part) once."""
    device = resolve_device(request.run.device)
    dtype = resolve_dtype(request.run.dtype, device)
    recipe, run = request.recipe, request.run
    folder = resolve_model(recipe.model, run.allow_pickle)
    vae = resolve_vae(recipe.vae, run.allow_pickle) if recipe.vae else None
    controlnets_sha256 = check_controlnets(recipe.control_nets, run.allow_pickle, recipe.control_nets_sha256)
    files = embedding_files(recipe.embeddings, recipe.embedding_dir)
    embeddings = read_embeddings(files, run.allow_pickle, recipe.embeddings_sha256)
    loras = read_loras(union([recipe]), run.allow_pickle)
    log.info("loading model %s on %s (%s)", folder.reference, device, DTYPE_NAMES[dtype])
    model = load_model(folder, device, dtype, run, vae, recipe.prediction_type, embeddings, loras)
    model.controlnets = load_controlnets(
        recipe.control_nets, controlnets_sha256, model.unet, device, dtype, run.allow_pickle
    )
    return model


def loading_all(requests: Sequence[Request]) -> Request:
    """The first request, asking `load_for` to load every LoRA file the requests ask for (their union, each once),
    so that one model makes them all, each batch at its own weights (a batch file's lines)."""
    files = union([request.recipe for request in requests])
    # a replay's recorded sha256s pair with the first files: those up to the first file without one
    recorded = tuple(itertools.takewhile(lambda sha256: sha256 is not None, (chosen.sha256 for chosen in files)))
    return requests[0].with_recipe(loras=tuple(str(chosen.path) for chosen in files), loras_sha256=recorded)


def lora_weights(model: Model, recipe: Recipe) -> list[float]:
    """The weight of each LoRA loaded with the model for the recipe's images: the recipe's, 0 for those it does not
    name (bit for bit the image without them)."""
    chosen = {c.path: c.weight for c in chosen_loras(recipe)}
    missing = set(chosen) - {lora.path for lora in model.loras}
    if missing:
        raise ValueError(f"the model was loaded without {sorted(missing)[0]}: load_for takes every recipe's LoRAs")
    return [chosen.get(lora.path, 0.0) for lora in model.loras]


# 3. Encode.


def _conditionings(
    model: Model, texts: list[str], labels: list[str], recipe: Recipe, height: int, width: int
) -> list[Conditioning]:
    """The prompts' conditioning for one image of height x width each (SDXL: with its size conditioning), encoded
    as the recipe says (long prompts, clip skip)."""
    encoded = encode_prompts(model.text_encoders, texts, labels, recipe.long_prompts, recipe.clip_skip)
    return [c.with_size(height, width) for c in encoded] if model.size_conditioned else encoded


def encode(model: Model, recipe: Recipe, height: int, width: int) -> Branches:
    """One image's branches, (1, ...) each: conditional; unconditional (the negative prompt in replace mode, else
    the empty prompt) unless w = 1 needs none; each separate negative whose scale is not 0. Contexts (1, L, D),
    L = 77 per chunk, the same for all the branches."""
    negatives = recipe.separate_negatives
    with_uncond = needs_unconditional(recipe.cfg, recipe.neg_weight, len(negatives), get_sampler(recipe.sampler).cfg_pp)
    replace_mode = recipe.neg_mode == "replace"
    if recipe.negative_prompt and replace_mode and not with_uncond:
        log.warning("at --cfg 1 only the conditional branch runs: the negative prompt has no effect")
    texts = [read_tags(recipe.prompt).text]  # AUTOMATIC1111's <lora:...> tags set weights, and are not encoded
    labels = ["prompt"]
    if with_uncond:
        texts.append(recipe.negative_prompt if replace_mode else "")
        labels.append("negative prompt" if replace_mode else "empty prompt")
    texts += negatives
    labels += [f"negative prompt {i + 1}" for i in range(len(negatives))]
    cond, *others = _conditionings(model, texts, labels, recipe, height, width)
    uncond = others.pop(0) if with_uncond else None
    if uncond is not None and not texts[1] and model.force_zeros_for_empty_prompt:  # texts[1]: the unconditional
        uncond = uncond.zeros_like()  # SDXL: an empty unconditional prompt is zero embeddings, as diffusers gives it
    return Branches(cond, uncond, tuple(others))


# 4. Prepare latents.


def prepare_latents(
    model: Model, scheduler: SchedulerMixin, recipes: Sequence[Recipe], height: int, width: int
) -> tuple[torch.Tensor, Schedule, list[torch.Generator], Inpainting | None]:
    """A batch's start, x (n, C, h, w) at the schedule's first timestep, its schedule, each image's own seeded
    generator, which draws (in this order) its init image's posterior sample, its noise, its sampler noise, and its
    inpainting (None without a mask). From noise: the full schedule, x_T = sigma_max noise. From an init image
    (img2img): the schedule truncated by the strength, x_t = q(x_t | x_0) at its first timestep. With a mask too:
    `sdcli.modes.inpaint`'s draws and start."""
    recipe = recipes[0]
    generators = [torch.Generator("cpu").manual_seed(r.seed) for r in recipes]
    latent_shape = (model.latent_channels, height // model.latent_scale, width // model.latent_scale)  # (C, h, w)
    if recipe.init_image is None:
        schedule = Schedule(scheduler, recipe.steps, model.device)
        noise = initial_noise(generators, latent_shape, model.device, model.dtype)  # (n, C, h, w)
        return schedule.start_from_noise(noise), schedule, generators, None
    steps = schedule_steps(recipe.steps, recipe.resolved_strength)
    schedule = Schedule(scheduler, recipe.steps, model.device, first=recipe.steps - steps)
    if recipe.mask is not None:
        x_start, inpainting = prepare_inpainting(model, recipe, schedule, generators, height, width)
        return x_start, schedule, generators, inpainting
    posterior = encode_image(model.vae, Path(recipe.init_image), height, width)
    x_0 = sample_x0(posterior, generators, model.vae.config.scaling_factor).to(model.dtype)  # (n, C, h, w)
    noise = initial_noise(generators, latent_shape, model.device, model.dtype)  # (n, C, h, w)
    return schedule.start_from(x_0, noise), schedule, generators, None


def hires_schedule(model: Model, scheduler: SchedulerMixin, hires: Hires) -> Schedule:
    """The hires pass's schedule: its steps, truncated by its strength as img2img's."""
    return Schedule(
        scheduler, hires.steps, model.device, first=hires.steps - schedule_steps(hires.steps, hires.strength)
    )


def hires_fix(
    model: Model,
    schedule: Schedule,
    context: GuidanceContext,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    size: tuple[int, int],
    on_step: StepCallback,
) -> torch.Tensor:
    """5b. The hires fix's second pass over the first pass's clean latents (n, C, h, w): upscaled to the larger
    size (width, height), then img2img there on `schedule` with the same guidance, each image's generator drawing
    on (its posterior sample with the lanczos upscaler, then its noise, then its sampler's)."""
    width, height = size
    x_0 = upscale(model.vae, latents, context.recipe.hires.upscaler, width, height, generators)  # (n, C, h', w')
    noise = initial_noise(generators, tuple(x_0.shape[1:]), model.device, model.dtype)  # (n, C, h', w')
    branches = context.branches.with_size(height, width) if model.size_conditioned else context.branches
    predict = guided_predictor(replace(context, branches=branches))
    return denoise(predict, schedule, schedule.start_from(x_0, noise), generators, on_step)


def _picture_sha256(path: str | None, option: str) -> str | None:
    """The sha256 of an image input the recipe names (read once per file version), or None."""
    return None if path is None else read_picture(Path(path), option).sha256


def _record(model: Model, recipe: Recipe, width: int, height: int) -> ImageRecord:
    """The settings that remake one image alone: its recipe resolved, and where it ran."""
    loras, sha256 = chosen_loras(recipe), {lora.path: lora.sha256 for lora in model.loras}
    resolved = {
        "width": width,
        "height": height,
        "model": model.reference,
        "embeddings": tuple(str(embedding.path) for embedding in model.embeddings),  # the folder's files too
        "embeddings_sha256": tuple(embedding.sha256 for embedding in model.embeddings),
        "embedding_dir": None,
        "loras": tuple(chosen.recorded for chosen in loras),  # its prompt tags' files too
        "loras_sha256": tuple(sha256[chosen.path] for chosen in loras),
        "lora_dir": None,
        "classifier_scale": recipe.resolved_classifier_scale,
        "pag_layers": recipe.resolved_pag_layers,
        "strength": recipe.resolved_strength,
        "init_image_sha256": _picture_sha256(recipe.init_image, "--init-image"),
        "mask_sha256": _picture_sha256(recipe.mask, MASK_OPTION),
        "control_nets_sha256": tuple(controlnet.sha256 for controlnet in model.controlnets),
        "control_images_sha256": tuple(_picture_sha256(i, CONTROL_IMAGE_OPTION) for i in recipe.control_images),
        "control_scales": tuple(unit.scale for unit in recipe.controls),  # one each, as they ran
        "control_starts": tuple(unit.start for unit in recipe.controls),
        "control_ends": tuple(unit.end for unit in recipe.controls),
    }
    if recipe.hires is not None:
        resolved |= {
            "hires_strength": recipe.hires.strength,
            "hires_steps": recipe.hires.steps,
            "hires_upscaler": recipe.hires.upscaler,
        }
    return ImageRecord(
        **{**asdict(recipe), **resolved},
        device=model.device.type,
        dtype=DTYPE_NAMES[model.dtype],
    )


def make_batched(
    model: Model, recipes: Sequence[Recipe], batch_size: int = 1, on_step: StepCallback | None = None
) -> Iterator[Generated]:
    """One image per recipe, in order, the recipes differing only in their prompts and seeds: made `batch_size`
    at a time, a batch being consecutive images whose contexts have the same length (prompts of as many chunks).
    `on_step(done, total)` counts timesteps over all the images."""
    # 1. Check.
    width, height = check(model, recipes)
    settings = recipes[0]
    control = prepare_control(model, settings, width, height)  # the ControlNets' images at each pass's size
    hires_pixels, hires_control = None, None
    if settings.hires is not None:
        hires_pixels = hires_size(width, height, settings.hires.scale, model.latent_scale)
        hires_control = prepare_control(model, settings, *hires_pixels)
    # 2b. The LoRAs loaded with the model, at this batch's weights.
    set_lora_weights(model, model.loras, lora_weights(model, settings))
    scheduler = build_scheduler(get_sampler(settings.sampler), model.scheduler_config, settings.schedule)
    # 3. Encode each distinct set of prompts once.
    distinct = {recipe.prompts: recipe for recipe in recipes}
    encoded = {prompts: encode(model, recipe, height, width) for prompts, recipe in distinct.items()}
    jobs = [(recipe, encoded[recipe.prompts]) for recipe in recipes]
    batches = [
        batch
        for _, run in groupby(jobs, key=lambda job: job[1].context_length)
        for batch in chunked(list(run), batch_size)
    ]

    def progress(batch_index: int, before: int, per_batch: int) -> StepCallback:
        """`on_step` over all the images for a pass of batch `batch_index` that starts `before` calls in."""

        def report(done: int, _: int) -> None:
            if on_step is not None:
                on_step(batch_index * per_batch + before + done, per_batch * len(batches))

        return report

    for batch_index, batch in enumerate(batches):
        start = time.perf_counter()
        batch_recipes = [recipe for recipe, _ in batch]
        # 4. Prepare latents.
        x_start, schedule, generators, inpainting = prepare_latents(model, scheduler, batch_recipes, height, width)
        hires = None if settings.hires is None else hires_schedule(model, scheduler, settings.hires)
        calls = len(schedule.timesteps) + (0 if hires is None else len(hires.timesteps))
        # 5. Denoise with every guidance method the recipe turns on (inpainting: the mask as the U-Net's input, or
        # the kept area blended back after each step).
        unet, after_step = unet_denoiser(model.unet), None
        if control is not None:  # the ControlNets' summed residuals: in the U-Net's call, for every branch
            unet = control.denoiser(unet, schedule.timesteps, model.latent_channels)
        if inpainting is not None:
            unet, after_step = inpainting.denoiser(unet), inpainting.after_step(schedule)
        denoiser = CountedDenoiser(unet)
        branches = Branches.cat([b for _, b in batch])  # contexts (n, L, D)
        context = GuidanceContext(denoiser, branches, settings, scheduler.alphas_cumprod, model)
        on_first_step = progress(batch_index, 0, calls)
        latents = denoise(guided_predictor(context), schedule, x_start, generators, on_first_step, after_step)
        evaluations = denoiser.evaluations
        if hires is not None:  # 5b. The hires fix: upscaled, denoised again, the ControlNets' images at its size.
            hires_unet = unet_denoiser(model.unet)
            if hires_control is not None:
                hires_unet = hires_control.denoiser(hires_unet, hires.timesteps, model.latent_channels)
            hires_denoiser = CountedDenoiser(hires_unet)
            on_hires_step = progress(batch_index, len(schedule.timesteps), calls)
            hires_context = replace(context, denoiser=hires_denoiser)
            latents = hires_fix(model, hires, hires_context, latents, generators, hires_pixels, on_hires_step)
            evaluations += hires_denoiser.evaluations
        # 6. Decode.
        pictures = to_pil(decode(model.vae, latents))
        if inpainting is not None:
            pictures = inpainting.overlay(pictures)
        seconds = (time.perf_counter() - start) / len(batch)
        for recipe, image in zip(batch_recipes, pictures, strict=True):
            record = _record(model, recipe, width, height)
            yield Generated(record, image, seconds, evaluations // len(batch))


def make_images(model: Model, request: Request, on_step: StepCallback | None = None) -> Iterator[Generated]:
    """The request's images, in seed order, made `request.run.batch_size` at a time. `on_step(done, total)` counts
    timesteps over the whole request."""
    yield from make_batched(model, request.images, request.run.batch_size, on_step)
