"""The guidance registry: each method one row, a wrapper from a predictor to a guided predictor (k-diffusion keeps
guidance outside its samplers). The engine starts from the conditional pass and applies, in order, every method
the recipe turns on; a new method is one module with its wrapper and one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sdcli.guidance.apg import apg_guided
from sdcli.guidance.cfg import cfg_guided
from sdcli.guidance.classifier import classifier_guided
from sdcli.guidance.context import GuidanceContext
from sdcli.guidance.interval import interval_guided
from sdcli.guidance.pag import pag_guided
from sdcli.recipe import Recipe
from sdcli.sampling.loop import Predictor


@dataclass(frozen=True)
class Method:
    name: str
    applies: Callable[[Recipe], bool]  # whether the recipe turns it on
    wrap: Callable[[Predictor, GuidanceContext], Predictor]  # the predictor so far -> the guided predictor


METHODS: tuple[Method, ...] = (
    # CFG, separate negatives and rescale: the branches in one batched call (the conditional pass alone at w = 1).
    Method("cfg", lambda recipe: not recipe.apg and not recipe.pag_scale, cfg_guided),
    # APG in CFG's place: the same batched call, its branches combined by adaptive projected guidance.
    Method("apg", lambda recipe: recipe.apg, apg_guided),
    # PAG in CFG's place: the same batched call and combination, the perturbed branch last and its term added.
    Method("pag", lambda recipe: bool(recipe.pag_scale), pag_guided),
    Method("interval", lambda recipe: recipe.guidance_interval is not None, interval_guided),
    # Last: it shifts the epsilon that every method before it made.
    Method("classifier", lambda recipe: bool(recipe.resolved_classifier_scale), classifier_guided),
)


def guided_predictor(context: GuidanceContext) -> Predictor:
    """The conditional pass wrapped by every method the recipe turns on, in the registry's order."""
    predict = context.conditional
    for method in METHODS:
        if method.applies(context.recipe):
            predict = method.wrap(predict, context)
    return predict
