"""The model's prediction (eps or v) and the denoised estimate D(x; sigma) of x_0, both ways.

In the sigma form of Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models"), a
sample at noise level sigma is x = x_0 + sigma eps, and the model's input is x / sqrt(sigma^2 + 1) (DDPM's x_t,
alphabar_t = 1 / (sigma^2 + 1)). The denoised estimate is D = x - sigma eps for an epsilon model and
D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v for a v-prediction one (Salimans & Ho 2022), written in the order
of diffusers' Euler schedulers. CFG++ and APG need it: both act on the denoised estimates.
"""

from __future__ import annotations

import torch

Sigma = float | torch.Tensor  # a noise level: a number or a 0-d tensor


def denoised(pred: torch.Tensor, x: torch.Tensor, sigma: Sigma, prediction_type: str) -> torch.Tensor:
    """D(x; sigma) (B, C, h, w): x_0 as the model's prediction `pred` (B, C, h, w) at x = x_0 + sigma eps sees it."""
    if prediction_type == "epsilon":
        return x - sigma * pred
    if prediction_type == "v_prediction":
        return pred * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    raise ValueError(f"no denoised estimate for prediction type {prediction_type!r}")


def prediction(x_0: torch.Tensor, x: torch.Tensor, sigma: Sigma, prediction_type: str) -> torch.Tensor:
    """The inverse of `denoised`: the prediction (eps or v) (B, C, h, w) whose denoised estimate at x is x_0."""
    if prediction_type == "epsilon":
        return (x - x_0) / sigma
    if prediction_type == "v_prediction":
        return (x / (sigma**2 + 1) - x_0) * ((sigma**2 + 1) ** 0.5 / sigma)
    raise ValueError(f"no prediction from a denoised estimate for prediction type {prediction_type!r}")
