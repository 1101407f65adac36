"""What a guidance method sees when it wraps a predictor: the U-Net as a conditional denoiser, the conditioning of
each branch, the recipe's guidance settings and the model's training schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdcli.loading.components import Model
from sdcli.recipe import Recipe
from sdcli.sampling.loop import Denoiser, Predictor
from sdcli.text.conditioning import Branches


@dataclass(frozen=True)
class GuidanceContext:
    """One batch's guidance inputs."""

    denoiser: Denoiser  # the U-Net as (x, t, conditioning) -> prediction, over any number of branches at once
    branches: Branches  # the conditioning of each branch for the batch's B images
    recipe: Recipe  # the guidance settings (shared by the batch's images)
    alphas_cumprod: torch.Tensor  # (T_train,): the model's training schedule, for sigma(t)
    model: Model  # for what a method loads on first use (the classifier)

    @property
    def prediction_type(self) -> str:
        """What the model predicts: epsilon or v_prediction (diffusers' names)."""
        return self.model.scheduler_config.get("prediction_type", "epsilon")

    @property
    def conditional(self) -> Predictor:
        """The conditional pass alone: the unguided predictor that guidance methods wrap."""
        return lambda x, t: self.denoiser(x, t, self.branches.cond)
