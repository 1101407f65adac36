"""Text to embeddings: diffusers' own `encode_prompt` for plain prompts, chunks for long ones and BREAK, and
AUTOMATIC1111's emphasis computed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdcli.loading.components import Model
from sdcli.text.prompts import dropped_tokens, emphasize, encode_prompt, encode_prompts, tokenize_prompt


@pytest.fixture(scope="module")
def pipe(tiny_model: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_model)


def encode(model: Model, text: str, **options) -> torch.Tensor:
    return encode_prompt(model.text_encoders, text, **options).context


def test_prompts_are_padded_to_the_tokenizers_length(loaded: Model):
    context = encode(loaded, "a red circle")
    assert context.shape == (1, 77, 32)  # (1, model_max_length, text width)
    assert context.dtype == torch.float32


@pytest.mark.parametrize("text", ["a red circle on a white background", "", "zebra unknown words", "red " * 75])
def test_plain_prompts_equal_diffusers_to_the_bit(loaded: Model, pipe: StableDiffusionPipeline, text: str):
    theirs, their_negative = pipe.encode_prompt(text, torch.device("cpu"), 1, True, negative_prompt=text)
    ours = encode(loaded, text)
    assert torch.equal(ours, theirs) and torch.equal(ours, their_negative)


def test_without_long_prompts_an_over_long_prompt_is_truncated_as_diffusers_does(
    loaded: Model, pipe: StableDiffusionPipeline
):
    text = "red " * 90
    theirs, _ = pipe.encode_prompt(text, torch.device("cpu"), 1, False)
    assert torch.equal(encode(loaded, text, long_prompts=False), theirs)


def test_a_150_token_prompt_gives_two_chunks_each_wrapped_in_start_and_end(loaded: Model):
    tokenizer = loaded.tokenizer
    words = ["red", "blue"] * 75  # 150 words, one token each
    chunks = tokenize_prompt(tokenizer, " ".join(words))
    assert len(chunks.input_ids) == 2 and chunks.dropped == 0
    for i, ids in enumerate(chunks.input_ids):
        assert len(ids) == 77
        assert ids[0] == tokenizer.bos_token_id and ids[76] == tokenizer.eos_token_id
        assert ids[1:76] == tokenizer(" ".join(words[75 * i : 75 * (i + 1)]), add_special_tokens=False).input_ids
    # Each chunk is encoded on its own and the two are concatenated along the sequence.
    context = encode(loaded, " ".join(words))
    assert context.shape == (1, 2 * 77, 32)
    first, second = encode(loaded, " ".join(words[:75])), encode(loaded, " ".join(words[75:]))
    assert torch.allclose(context, torch.cat([first, second], dim=1), atol=1e-6)
    assert not torch.allclose(context[:, :77], context[:, 77:])


def test_chunk_counts_at_the_edges(loaded: Model):
    assert len(tokenize_prompt(loaded.tokenizer, "red " * 75).input_ids) == 1
    assert len(tokenize_prompt(loaded.tokenizer, "red " * 76).input_ids) == 2
    assert len(tokenize_prompt(loaded.tokenizer, "red " * 151).input_ids) == 3


def test_the_negative_is_padded_with_empty_prompt_chunks(loaded: Model):
    long, short = (c.context for c in encode_prompts(loaded.text_encoders, ["red " * 100, "blue"], ["prompt", "neg"]))
    assert long.shape == short.shape == (1, 2 * 77, 32)
    assert torch.allclose(short[:, :77], encode(loaded, "blue"), atol=1e-6)
    assert torch.allclose(short[:, 77:], encode(loaded, ""), atol=1e-6)


def test_break_starts_a_new_chunk(loaded: Model):
    chunks = tokenize_prompt(loaded.tokenizer, "red circle BREAK blue")
    assert len(chunks.input_ids) == 2
    assert chunks.lengths == [4, 3]  # BOS red circle EOS | BOS blue EOS
    context = encode(loaded, "red circle BREAK blue")
    assert torch.allclose(context, torch.cat([encode(loaded, "red circle"), encode(loaded, "blue")], 1), atol=1e-6)


def test_dropped_tokens_counts_what_does_not_fit(loaded: Model):
    assert dropped_tokens(loaded.tokenizer, "red " * 75) == 0  # 75 words + start + end = 77
    assert dropped_tokens(loaded.tokenizer, "red " * 76) == 1
    assert dropped_tokens(loaded.tokenizer, "red " * 100) == 25


def test_without_long_prompts_an_over_long_prompt_warns_with_the_count(loaded: Model, caplog: pytest.LogCaptureFixture):
    encode(loaded, "red " * 80, label="negative prompt", long_prompts=False)
    assert (
        "the negative prompt is longer than the text encoder's 77 tokens: its last 5 tokens were dropped" in caplog.text
    )


def test_long_prompts_warn_about_nothing(loaded: Model, caplog: pytest.LogCaptureFixture):
    encode(loaded, "red " * 80)
    assert caplog.text == ""


def test_emphasize_scales_tokens_then_restores_the_mean():
    z = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (K=1, L=2, D=2), mean 2.5
    weights = torch.tensor([[1.0, 2.0]])  # (K, L)
    # Scaled: [[1, 2], [6, 8]], mean 4.25; times 2.5 / 4.25.
    want = torch.tensor([[[1.0, 2.0], [6.0, 8.0]]]) * (2.5 / 4.25)
    got = emphasize(z, weights)
    assert torch.allclose(got, want)
    assert torch.isclose(got.mean(), z.mean())


def test_emphasize_works_per_chunk():
    z = torch.stack([torch.full((3, 2), 1.0), torch.full((3, 2), 5.0)])  # (2, 3, 2)
    weights = torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    got = emphasize(z, weights)
    assert torch.allclose(got.mean(dim=(1, 2)), torch.tensor([1.0, 5.0]))
    assert torch.allclose(got[1], z[1])


def test_a_weighted_prompt_is_the_plain_encoding_weighted_by_hand(loaded: Model):
    plain = encode(loaded, "a red circle")  # (1, 77, D): BOS a red circle EOS ...
    weights = torch.ones(77)
    weights[2] = 1.3  # "red"
    scaled = plain * weights.view(1, 77, 1)
    want = scaled * (plain.mean() / scaled.mean())
    got = encode(loaded, "a (red:1.3) circle")
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, plain, atol=1e-3)
    chunks = tokenize_prompt(loaded.tokenizer, "a (red) [circle]")
    assert chunks.weights[0][:5] == [1.0, 1.0, 1.1, 1 / 1.1, 1.0]


def test_a_weight_of_one_is_bit_for_bit_the_unweighted_encoding(loaded: Model):
    assert not tokenize_prompt(loaded.tokenizer, "a (red:1) circle").weighted
    assert torch.equal(encode(loaded, "a (red:1) circle"), encode(loaded, "a red circle"))


def test_escaped_brackets_are_tokenized_as_literal_brackets(loaded: Model):
    chunks = tokenize_prompt(loaded.tokenizer, "a \\(red\\) circle")
    assert not chunks.weighted
    assert chunks.input_ids[0] == loaded.tokenizer("a (red) circle", padding="max_length").input_ids
