"""The generate workflow: a `Request` to PNG files, checking everything it can before the model loads.

1. check inputs: settings (on creation), output paths, device
2. resolve and load the model; check the size against its latent scale
3. encode the prompt and the negative prompts (once per distinct set: images of other requests that differ only
   in their prompts and seeds can share the batches, as `sdcli batch` makes them)
4. per batch: each image's conditioning stacked, initial noise from per-image generators, the guided loop, decode
5. write each image atomically, its settings inside
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image

from sdcli.guidance.classifier import NoisyClassifier, classifier_guided, load_classifier, parse_targets
from sdcli.text.conditioning import Conditioning
from sdcli.sampling.loop import StepCallback, denoise, initial_noise, unet_denoiser
from sdcli.loading.devices import DTYPE_NAMES, resolve_device, resolve_dtype
from sdcli.errors import UsageError
from sdcli.loading.geometry import check_size
from sdcli.guidance.cfg import CountedDenoiser, guide_within, guided, needs_unconditional
from sdcli.output.images import decode, to_pil
from sdcli.guidance.interval import parse_interval
from sdcli.loading.components import Model, load_model, load_options
from sdcli.output.metadata import encode_png
from sdcli.output.files import plan_paths, write_atomic
from sdcli.text.prompts import encode_prompts
from sdcli.loading.references import ModelFolder, resolve_model
from sdcli.sampling.samplers import get_sampler
from sdcli.sampling.schedule import Schedule, build_scheduler
from sdcli.recipe import ImageRecord, Output, Request

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


def shared_settings(request: Request) -> tuple[Request, int]:
    """What images must share to be made in one U-Net batch: every setting but the prompt, the negative prompts,
    the seed and the number of images; and the number of separate negative branches that run (empty negatives
    and a zero scale run none)."""
    blank = replace(request, prompt="", negative_prompt="", extra_negative_prompts=(), seed=0, num_images=1)
    return blank, len(_negatives(request))


@dataclass(frozen=True)
class Branches:
    """The conditioning of each guidance branch for B images."""

    cond: Conditioning  # the prompt: context (B, L, D)
    uncond: Conditioning | None  # the negative prompt (replace mode) or the empty prompt; None: not run (w = 1)
    negatives: tuple[Conditioning, ...]  # each separate negative prompt

    @property
    def context_length(self) -> int:
        return self.cond.context.shape[1]  # L: the same in every branch

    @staticmethod
    def cat(images: Sequence[Branches]) -> Branches:
        """The images' branches stacked along the batch, branch by branch: (sum of B, ...) each."""
        return Branches(
            Conditioning.cat([b.cond for b in images]),
            None if images[0].uncond is None else Conditioning.cat([b.uncond for b in images]),
            tuple(Conditioning.cat(column) for column in zip(*(b.negatives for b in images), strict=True)),
        )


def _neg_scale(request: Request) -> float:
    return request.cfg if request.neg_scale is None else request.neg_scale  # w_neg


def _negatives(request: Request) -> tuple[str, ...]:
    """The separate negative prompts that run as branches: none when their scale w_neg is 0."""
    return request.separate_negatives if _neg_scale(request) != 0 else ()


def _conditionings(
    model: Model, texts: list[str], labels: list[str], long_prompts: bool, height: int, width: int
) -> list[Conditioning]:
    """The prompts' conditioning for one image of height x width each (SDXL: with its size conditioning)."""
    encoded = encode_prompts(model.text_encoders, texts, labels, long_prompts)
    return [c.with_size(height, width) for c in encoded] if model.size_conditioned else encoded


def _branches(model: Model, request: Request, height: int, width: int) -> Branches:
    """One image's branches, (1, ...) each: conditional; unconditional (the negative prompt in replace mode, else
    the empty prompt) unless w = 1 needs none; each separate negative whose scale is not 0. Contexts (1, L, D),
    L = 77 per chunk, the same for all the branches."""
    negatives = _negatives(request)
    with_uncond = needs_unconditional(request.cfg, _neg_scale(request), len(negatives))
    if request.negative_prompt and request.neg_mode == "replace" and not with_uncond:
        log.warning("at --cfg 1 only the conditional branch runs: the negative prompt has no effect")
    texts = [request.prompt]
    labels = ["prompt"]
    if with_uncond:
        texts.append(request.negative_prompt if request.neg_mode == "replace" else "")
        labels.append("negative prompt" if request.neg_mode == "replace" else "empty prompt")
    texts += negatives
    labels += [f"negative prompt {i + 1}" for i in range(len(negatives))]
    cond, *others = _conditionings(model, texts, labels, request.long_prompts, height, width)
    uncond = others.pop(0) if with_uncond else None
    if uncond is not None and not texts[1] and model.force_zeros_for_empty_prompt:  # texts[1]: the unconditional
        uncond = uncond.zeros_like()  # SDXL: an empty unconditional prompt is zero embeddings, as diffusers gives it
    return Branches(cond, uncond, tuple(others))


def _prompts(request: Request) -> tuple[str, str, tuple[str, ...]]:
    return request.prompt, request.negative_prompt, request.extra_negative_prompts


def _record(model: Model, request: Request, width: int, height: int) -> ImageRecord:
    """The settings that remake the image of a one-image request alone."""
    return ImageRecord(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed,
        cfg=request.cfg,
        steps=request.steps,
        sampler=request.sampler,
        width=width,
        height=height,
        model=model.reference,
        device=model.device.type,
        dtype=DTYPE_NAMES[model.dtype],
        vae=request.vae,
        extra_negative_prompts=request.extra_negative_prompts,
        neg_mode=request.neg_mode,
        neg_scale=request.neg_scale,
        cfg_rescale=request.cfg_rescale,
        guidance_interval=request.guidance_interval,
        long_prompts=request.long_prompts,
        classifier=request.classifier,
        classifier_scale=request.resolved_classifier_scale,
    )


def _classifier_for(model: Model, targets: str) -> tuple[NoisyClassifier, dict[str, int]]:
    """The model's noise-aware classifier (loaded on first use) and the targets as {head: class index}."""
    if model.scheduler_config.get("prediction_type", "epsilon") != "epsilon":
        raise UsageError(
            f"--classifier needs an epsilon-prediction model; {model.reference} predicts "
            f"{model.scheduler_config['prediction_type']}"
        )
    if model.classifier is None:
        found = resolve_model(model.reference)
        if not isinstance(found, ModelFolder):
            raise UsageError(f"--classifier needs a model folder with a classifier/ in it; {model.reference} is a file")
        model.classifier = load_classifier(found.folder, model.reference, model.device)
    return model.classifier, parse_targets(targets, model.classifier.config.heads)


def make_batched(model: Model, images: Sequence[Request], on_step: StepCallback | None = None) -> Iterator[Generated]:
    """One image per request, in order, the requests' images differing only in their prompts and seeds (equal
    `shared_settings`): made `batch_size` at a time, a batch being consecutive images whose contexts have the
    same length (prompts of as many chunks). Each distinct set of prompts is encoded once. `on_step(done, total)`
    counts timesteps over all the images."""
    settings = images[0]
    if any(r.num_images != 1 or shared_settings(r) != shared_settings(settings) for r in images):
        raise ValueError("make_batched takes requests of one image each that differ only in prompts and seed")
    native_width, native_height = model.native_size
    width, height = settings.width or native_width, settings.height or native_height
    check_size(width, height, model.latent_scale)
    scheduler = build_scheduler(get_sampler(settings.sampler), model.scheduler_config)
    latent_shape = (model.latent_channels, height // model.latent_scale, width // model.latent_scale)  # (C, h, w)

    distinct = {_prompts(r): r for r in images}
    encoded = {prompts: _branches(model, r, height, width) for prompts, r in distinct.items()}
    jobs = [(r, encoded[_prompts(r)]) for r in images]
    guide_at = (
        guide_within(parse_interval(settings.guidance_interval), scheduler.alphas_cumprod)
        if settings.guidance_interval is not None
        else None
    )
    classifier_scale = settings.resolved_classifier_scale  # s; None or 0: no classifier guidance
    classifier, targets = _classifier_for(model, settings.classifier) if classifier_scale else (None, {})
    batches = [
        batch
        for _, run in groupby(jobs, key=lambda job: job[1].context_length)
        for batch in chunked(list(run), settings.batch_size)
    ]

    def report(batch_index: int, done: int, per_batch: int) -> None:
        if on_step is not None:
            on_step(batch_index * per_batch + done, per_batch * len(batches))

    for batch_index, batch in enumerate(batches):
        start = time.perf_counter()
        n = len(batch)
        branches = Branches.cat([b for _, b in batch])  # contexts (n, L, D)
        schedule = Schedule(scheduler, settings.steps, model.device)
        denoiser = CountedDenoiser(unet_denoiser(model.unet))
        predict = partial(
            guided,
            denoiser,
            cond=branches.cond,
            uncond=branches.uncond,
            scale=settings.cfg,
            negatives=branches.negatives,
            neg_scale=_neg_scale(settings),
            rescale=settings.cfg_rescale,
            guide_at=guide_at,
        )
        if classifier is not None:
            predict = classifier_guided(predict, classifier, targets, classifier_scale, scheduler.alphas_cumprod)
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r, _ in batch]
        noise = initial_noise(generators, latent_shape, model.device, model.dtype)  # (n, C, h, w)
        latents = denoise(predict, schedule, noise, generators, partial(report, batch_index))  # (n, C, h, w)
        pictures = to_pil(decode(model.vae, latents))
        seconds = (time.perf_counter() - start) / n
        for (request, _), image in zip(batch, pictures, strict=True):
            yield Generated(_record(model, request, width, height), image, seconds, denoiser.evaluations // n)


def make_images(model: Model, request: Request, on_step: StepCallback | None = None) -> Iterator[Generated]:
    """The request's images, in seed order, made `request.batch_size` at a time. `on_step(done, total)` counts
    timesteps over the whole request."""
    yield from make_batched(model, [replace(request, seed=seed, num_images=1) for seed in request.seeds], on_step)


def load_for(request: Request) -> Model:
    """Check the request's device, dtype and model reference, then load the model (the slow part) once."""
    device = resolve_device(request.device)
    dtype = resolve_dtype(request.dtype, device)
    folder = resolve_model(request.model, request.allow_pickle)
    log.info("loading model %s on %s (%s)", folder.reference, device, DTYPE_NAMES[dtype])
    return load_model(folder, device, dtype, load_options(request))


def generate(request: Request, output: Output, on_step: StepCallback | None = None) -> Iterator[tuple[Path, Generated]]:
    """Make and write the request's images; yields each (path, image) once it is on disk."""
    # 1. Check inputs (the settings checked themselves), before the model loads.
    paths = plan_paths(request, output)
    # 2. Load the model.
    model = load_for(request)
    # 3.-5. Generate and write.
    for path, made in zip(paths, make_images(model, request, on_step), strict=True):
        write_atomic(path, encode_png(made.image, made.record), output.overwrite)
        yield path, made
