"""What the U-Net is conditioned on besides x_t and t, for a batch of images: the text encoders' hidden states and,
for SDXL, the pooled text embedding and the size and crop conditioning.

SDXL (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for High-Resolution Image Synthesis", sec. 2.2)
adds to the timestep embedding the pooled projection of its second text encoder and Fourier features of six numbers:
the original image size, the top-left corner of the crop, and the target size. diffusers' U-Net takes them as
`added_cond_kwargs={"text_embeds": (B, P), "time_ids": (B, 6)}`; SD 1.x/2.x U-Nets take neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Conditioning:
    """The U-Net's conditioning for B images; each guidance branch (conditional, unconditional...) is one."""

    context: torch.Tensor  # (B, L, D): text encoder hidden states, the cross-attention context
    pooled: torch.Tensor | None = None  # (B, P): SDXL's pooled text embedding ("text_embeds")
    time_ids: torch.Tensor | None = None  # (B, 6): SDXL's original size, crop top-left, target size (h, w each)

    def _tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.context, self.pooled, self.time_ids

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        return Conditioning(*(None if t is None else fn(t) for t in self._tensors()))

    def repeat(self, n: int) -> Conditioning:
        """Every row n times over: (B, ...) -> (n B, ...), for n images from one prompt's (1, ...) conditioning."""
        return self._map(lambda t: t.repeat(n, *(1,) * (t.ndim - 1)))

    def zeros_like(self) -> Conditioning:
        """Zero text embeddings (hidden states and pooled), the size kept: SDXL's unconditional input, as trained
        (conditioning dropped by zeroing) and as diffusers' `force_zeros_for_empty_prompt` gives it."""
        return replace(
            self,
            context=torch.zeros_like(self.context),
            pooled=None if self.pooled is None else torch.zeros_like(self.pooled),
        )

    def with_size(self, height: int, width: int) -> Conditioning:
        """With SDXL's size and crop conditioning as diffusers' default: the image is its own original size, not
        cropped: time ids (H, W, 0, 0, H, W), in the context's dtype."""
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.context.dtype)  # (1, 6)
        return replace(self, time_ids=time_ids.to(self.context.device).repeat(self.context.shape[0], 1))  # (B, 6)

    @property
    def added_cond_kwargs(self) -> dict[str, torch.Tensor] | None:
        """diffusers' U-Net keyword for the pooled embedding and time ids (None for SD 1.x/2.x)."""
        if self.pooled is None:
            return None
        return {"text_embeds": self.pooled, "time_ids": self.time_ids}

    @staticmethod
    def cat(branches: Sequence[Conditioning]) -> Conditioning:
        """The branches stacked along the batch, in order, for one batched U-Net call."""
        fields = zip(*(branch._tensors() for branch in branches))  # all contexts, all pooled, all time ids
        return Conditioning(*(None if parts[0] is None else torch.cat(parts) for parts in fields))


@dataclass(frozen=True)
class Branches:
    """The conditioning of each guidance branch for B images."""

    cond: Conditioning  # the prompt: context (B, L, D)
    uncond: Conditioning | None  # the negative prompt (replace mode) or the empty prompt; None: not run (w = 1)
    negatives: tuple[Conditioning, ...] = ()  # each separate negative prompt

    @property
    def context_length(self) -> int:
        return self.cond.context.shape[1]  # L: the same in every branch

    def with_size(self, height: int, width: int) -> Branches:
        """Every branch with SDXL's size conditioning for height x width (the hires fix's second pass)."""
        return Branches(
            self.cond.with_size(height, width),
            None if self.uncond is None else self.uncond.with_size(height, width),
            tuple(negative.with_size(height, width) for negative in self.negatives),
        )

    @staticmethod
    def cat(images: Sequence[Branches]) -> Branches:
        """The images' branches stacked along the batch, branch by branch: (sum of B, ...) each."""
        return Branches(
            Conditioning.cat([b.cond for b in images]),
            None if images[0].uncond is None else Conditioning.cat([b.uncond for b in images]),
            tuple(Conditioning.cat(column) for column in zip(*(b.negatives for b in images), strict=True)),
        )
