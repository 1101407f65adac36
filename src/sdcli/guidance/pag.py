"""Perturbed-attention guidance (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention
Guidance"): a further branch, the conditional prompt through a U-Net whose self-attention (`attn1`) in chosen layers
has its attention map replaced by the identity, so that those layers give `to_out(to_v(x))`; guidance moves away
from that structurally degraded prediction eps_p:

    eps = eps_u + w (eps_c - eps_u) + s (eps_c - eps_p)   with CFG,
    eps = eps_c + s (eps_c - eps_p)                         without it (w = 1).

The perturbed branch is the last of CFG's one batched U-Net call, as in diffusers' `StableDiffusionPAGPipeline`:
[uncond, cond, perturbed], or [cond, perturbed] without an unconditional branch. diffusers' own attention processors
run it, `PAGCFGIdentitySelfAttnProcessor2_0` (which splits the batch in thirds and perturbs the last) and
`PAGIdentitySelfAttnProcessor2_0` (halves), in the layers diffusers' own matching picks
(`PAGMixin._set_pag_attn_processor`: the self-attention modules whose name `re.search`es a layer id), set around
each call and taken out after it, so the U-Net is left as it was. Separate negatives would add branches those
processors do not split, and are refused where the recipe is checked (`sdcli.recipe`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import (
    Attention,
    PAGCFGIdentitySelfAttnProcessor2_0,
    PAGIdentitySelfAttnProcessor2_0,
)
from diffusers.pipelines.pag.pag_utils import PAGMixin

from sdcli.errors import UsageError
from sdcli.guidance.cfg import ExtraBranch, cfg_combine, guided_by
from sdcli.guidance.context import GuidanceContext
from sdcli.loading.components import Model
from sdcli.recipe import Recipe, parse_pag_layers
from sdcli.sampling.loop import Denoiser, Predictor
from sdcli.text.conditioning import Conditioning

# diffusers' processors, as `PAGMixin.set_pag_applied_layers` pairs them: with CFG (the batch in thirds), without
# (in halves); the last part is perturbed.
WITH_CFG, WITHOUT_CFG = PAGCFGIdentitySelfAttnProcessor2_0(), PAGIdentitySelfAttnProcessor2_0()


def matched_attention(unet: UNet2DConditionModel, layers: Sequence[str]) -> list[Attention]:
    """The self-attention modules that diffusers' own PAG matching picks for the layer ids `layers` (a ValueError
    where one matches none): it sets a marker processor in them, read back, and the U-Net's own are restored."""
    own, marker = unet.attn_processors, PAGIdentitySelfAttnProcessor2_0()
    try:
        pipeline = SimpleNamespace(unet=unet, _pag_attn_processors=(marker, marker))  # what the mixin's method reads
        PAGMixin._set_pag_attn_processor(pipeline, layers, True)
        return [module for module in unet.modules() if isinstance(module, Attention) and module.processor is marker]
    finally:
        unet.set_attn_processor(own)


@contextmanager
def perturbed_attention(modules: Sequence[Attention], processor: object) -> Iterator[None]:
    """`processor` in each of `modules` for the duration, their own processors back afterwards (set directly, as
    diffusers' matching sets them)."""
    own = [module.processor for module in modules]
    try:
        for module in modules:
            module.processor = processor
        yield
    finally:
        for module, processor_before in zip(modules, own, strict=True):
            module.processor = processor_before


def self_attention_layers(unet: UNet2DConditionModel) -> list[str]:
    """The U-Net's attention blocks with self-attention, as --pag-layers may name them (`mid_block.attentions.0`)."""
    names = (n for n, m in unet.named_modules() if isinstance(m, Attention) and not m.is_cross_attention)
    return list(dict.fromkeys(name.split(".transformer_blocks")[0] for name in names))


def check_pag_layers(model: Model, recipe: Recipe) -> None:
    """Each of the recipe's PAG layer ids matches a self-attention layer of the model's U-Net; else a UsageError that
    lists them. Before any work, at every PAG scale (0 included)."""
    if recipe.pag_scale is None:
        return
    for layer in parse_pag_layers(recipe.resolved_pag_layers):
        try:
            matched_attention(model.unet, [layer])
        except ValueError:
            raise UsageError(
                f"--pag-layers {layer!r} matches no self-attention layer of this U-Net; give names or patterns "
                f"(re.search) separated by commas, of: mid, {', '.join(self_attention_layers(model.unet))}"
            ) from None


def perturbing(denoiser: Denoiser, modules: Sequence[Attention], with_uncond: bool) -> Denoiser:
    """`denoiser` with the self-attention `modules` perturbed for the batch's last branch, call by call: the batch
    [uncond, cond, perturbed] with `with_uncond`, else [cond, perturbed]."""
    processor = WITH_CFG if with_uncond else WITHOUT_CFG

    def perturbed_denoiser(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        with perturbed_attention(modules, processor):
            return denoiser(x, t, cond)  # (k B, C, h, w), the last B rows perturbed

    return perturbed_denoiser


def pag_term(scale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """PAG's term of the guided prediction: s (eps_c - eps_p), each (B, C, h, w)."""
    return lambda pred_cond, pred_perturbed: scale * (pred_cond - pred_perturbed)


def pag_guided(predict: Predictor, context: GuidanceContext) -> Predictor:
    """The registry's PAG entry, in CFG's place: CFG's batched call (its combination, rescale and CFG++ output as
    CFG's entry makes them) with the perturbed branch last, its term added; also at w = 1, as [cond, perturbed]."""
    recipe = context.recipe
    with_uncond = context.branches.uncond is not None
    modules = matched_attention(context.model.unet, parse_pag_layers(recipe.resolved_pag_layers))
    denoiser = perturbing(context.denoiser, modules, with_uncond)
    perturbed = ExtraBranch(context.branches.cond, pag_term(recipe.pag_scale))
    combine = cfg_combine(recipe.cfg, recipe.neg_weight)
    return guided_by(combine, replace(context, denoiser=denoiser), perturbed)
