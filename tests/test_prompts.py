"""Text to embeddings, against diffusers' own `encode_prompt`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdcli.loading import Model
from sdcli.prompts import dropped_tokens, encode_prompt


@pytest.fixture(scope="module")
def pipe(tiny_model: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_model)


def test_prompts_are_padded_to_the_tokenizers_length(loaded: Model):
    context = encode_prompt(loaded.tokenizer, loaded.text_encoder, "a red circle")
    assert context.shape == (1, 77, 32)  # (1, model_max_length, text width)
    assert context.dtype == torch.float32


@pytest.mark.parametrize("text", ["a red circle on a white background", "", "zebra unknown words", "red " * 90])
def test_embeddings_equal_diffusers(loaded: Model, pipe: StableDiffusionPipeline, text: str):
    theirs, their_negative = pipe.encode_prompt(text, torch.device("cpu"), 1, True, negative_prompt=text)
    ours = encode_prompt(loaded.tokenizer, loaded.text_encoder, text)
    assert torch.equal(ours, theirs) and torch.equal(ours, their_negative)


def test_dropped_tokens_counts_what_does_not_fit(loaded: Model):
    assert dropped_tokens(loaded.tokenizer, "red " * 75) == 0  # 75 words + start + end = 77
    assert dropped_tokens(loaded.tokenizer, "red " * 76) == 1
    assert dropped_tokens(loaded.tokenizer, "red " * 100) == 25


def test_a_long_prompt_warns_with_the_count(loaded: Model, caplog: pytest.LogCaptureFixture):
    encode_prompt(loaded.tokenizer, loaded.text_encoder, "red " * 80, label="negative prompt")
    assert (
        "the negative prompt is longer than the text encoder's 77 tokens: its last 5 tokens were dropped" in caplog.text
    )
