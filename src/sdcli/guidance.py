"""Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"), as small pure functions.

The model's prediction (eps or v, whichever it was trained for) is extrapolated away from the unconditional
prediction towards the conditional one: pred = pred_u + w * (pred_c - pred_u). w = 1 is the conditional model
alone (so the unconditional pass is skipped), w = 0 the unconditional model, w > 1 guidance. The negative prompt,
when given, is the unconditional branch (as in diffusers and AUTOMATIC1111).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# A conditional denoiser: (x (B, C, h, w), t (scalar), context (B, L, D)) -> prediction (B, C, h, w).
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cfg(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: pred_u + w * (pred_c - pred_u)."""
    return pred_uncond + scale * (pred_cond - pred_uncond)


def needs_unconditional(scale: float) -> bool:
    """Whether guidance at scale w needs the unconditional prediction at all (it does not at w = 1)."""
    return scale != 1


def guided(
    model: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    uncond_context: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """The guided prediction for x (B, C, h, w): both branches in one batched model call, or the conditional
    branch alone when `uncond_context` is None (w = 1). Contexts are (B, L, D)."""
    if uncond_context is None:
        return model(x, t, context)
    pred = model(torch.cat([x, x]), t, torch.cat([uncond_context, context]))  # (2B, C, h, w)
    pred_uncond, pred_cond = pred.chunk(2)  # (B, C, h, w) each
    return cfg(pred_uncond, pred_cond, scale)
