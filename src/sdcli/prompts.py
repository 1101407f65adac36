"""Text to embeddings, exactly as diffusers' Stable Diffusion pipelines do it.

A prompt is tokenized, truncated and padded to the tokenizer's `model_max_length` (77 for CLIP), and its CLIP text
encoder's last hidden state is the U-Net's cross-attention context. Tokens past the limit are dropped, with a
warning that says how many.
"""

from __future__ import annotations

import logging

import torch
from transformers import CLIPTextModel, CLIPTokenizer

log = logging.getLogger(__name__)


def dropped_tokens(tokenizer: CLIPTokenizer, text: str) -> int:
    """How many of `text`'s tokens (start and end tokens included) do not fit in the encoder's context."""
    return max(0, len(tokenizer(text, verbose=False).input_ids) - tokenizer.model_max_length)


@torch.inference_mode()
def encode_prompt(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, text: str, label: str = "prompt"
) -> torch.Tensor:
    """The (1, L, D) context for `text`: L = model_max_length tokens, D = the text encoder's width."""
    dropped = dropped_tokens(tokenizer, text)
    if dropped:
        log.warning(
            "the %s is longer than the text encoder's %d tokens: its last %d token%s were dropped",
            label,
            tokenizer.model_max_length,
            dropped,
            "" if dropped == 1 else "s",
        )
    tokens = tokenizer(
        text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    # SD's CLIP encoders attend over the padding; only encoders whose config says so take the mask (as diffusers).
    mask = (
        tokens.attention_mask.to(text_encoder.device)
        if getattr(text_encoder.config, "use_attention_mask", False)
        else None
    )
    context = text_encoder(tokens.input_ids.to(text_encoder.device), attention_mask=mask)[0]  # (1, L, D)
    return context.to(dtype=text_encoder.dtype)
