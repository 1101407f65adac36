"""Text to embeddings: AUTOMATIC1111's emphasis and long prompts, and exactly diffusers' encoding for the rest.

A prompt is parsed for emphasis (`sdcli.text.emphasis`), tokenized piece by piece (a textual inversion token
standing for all its vectors' tokens, `vector_ids`), and cut into chunks of
`model_max_length - 2` tokens (75 for CLIP), each wrapped in the start and end tokens and padded as the tokenizer
pads: [BOS, up to 75 tokens, EOS, padding...] (77). A `BREAK` ends a chunk early. The chunks are encoded separately
(one batched text-encoder call) and concatenated along the sequence: the U-Net's context is (1, 77 * K, D). All the
prompts of a run are padded with empty-prompt chunks to the same K, as AUTOMATIC1111 does, so their branches
batch together.

Weighted tokens follow AUTOMATIC1111's original emphasis: per chunk, the encoder's output is multiplied token by
token by the weights, then scaled back to its original mean. A prompt of one chunk with no emphasis is tokenized and
encoded exactly as diffusers' pipelines do it (the same tensor, to the bit).

With `long_prompts=False` only the first chunk is kept (diffusers' truncation), with a warning that says how many
tokens were dropped.

Clip skip N (AUTOMATIC1111's) reads every prompt, negative and empty ones included, from the N-th layer from the end:
SD's encoder gives `final_layer_norm(hidden_states[-N])` (N = 1: its last hidden state, untouched), which is
diffusers' `clip_skip=N - 1`; diffusers' own path reaches the norm through `text_encoder.text_model`, a level
transformers 5's `CLIPTextModel` no longer has, so the norm is taken from where the model holds it. SDXL reads
`hidden_states[-(N + 1)]` of both encoders with no norm, so N = 1 is its usual penultimate layer and N counts as
diffusers' SDXL `clip_skip=N - 1` does (AUTOMATIC1111 leaves SDXL's layers alone unless told to).

SDXL has two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG, with a projection): a prompt is chunked under each
tokenizer (they share CLIP's vocabulary, so the chunks line up), each encoder's penultimate hidden states are
weighted as above and the two are concatenated along the features, (1, 77 * K, 768 + 1280) for the real model, as
diffusers' `StableDiffusionXLPipeline.encode_prompt` does. The pooled embedding (1, 1280) is the second encoder's
projection of the first chunk, unweighted, as AUTOMATIC1111 takes it; for a plain prompt of one chunk both are
diffusers' tensors to the bit. Long prompts, BREAK and emphasis work as for SD.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdcli.errors import UsageError
from sdcli.text.conditioning import Conditioning
from sdcli.text.emphasis import parse_emphasis

log = logging.getLogger(__name__)

# (tokenizer, text encoder) pairs, in the order their hidden states are concatenated: one for SD, two for SDXL.
Encoders = Sequence[tuple[CLIPTokenizer, CLIPTextModel | CLIPTextModelWithProjection]]


@dataclass(frozen=True)
class Chunks:
    """A prompt tokenized into K chunks of L = model_max_length tokens."""

    input_ids: list[list[int]]  # K x L: BOS, up to L - 2 tokens, EOS, padding
    weights: list[list[float]]  # K x L: each token's emphasis weight (1 for BOS, EOS and padding)
    lengths: list[int]  # K: real tokens in each chunk, BOS and EOS included (the attention mask's ones)
    dropped: int = 0  # prompt tokens left out (only when long prompts are off)

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for row in self.weights for w in row)


def _chunk(tokenizer: CLIPTokenizer, tokens: list[int], weights: list[float]) -> tuple[list[int], list[float], int]:
    pad = tokenizer.model_max_length - 2 - len(tokens)
    ids = [tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
    return ids, [1.0, *weights, 1.0] + [1.0] * pad, len(tokens) + 2


def vector_ids(tokenizer: CLIPTokenizer) -> dict[int, list[int]]:
    """Textual inversion (`sdcli.loading.embeddings`): each multi-vector embedding's first token id -> the ids of
    all its vectors' tokens (`name`, `name_1`, ...). Prompts are expanded at the token-id level, as AUTOMATIC1111
    does; diffusers' `maybe_convert_prompt` replaces the name in the text, which misses names with capitals (CLIP's
    tokenizer lowercases) and rewrites longer words that contain the name."""
    added = tokenizer.added_tokens_encoder  # {token: id}
    groups = {}
    for token, first in added.items():
        ids, i = [first], 1
        while f"{token}_{i}" in added:
            ids.append(added[f"{token}_{i}"])
            i += 1
        if len(ids) > 1:
            groups[first] = ids
    return groups


def tokenize_prompt(tokenizer: CLIPTokenizer, text: str, long_prompts: bool = True) -> Chunks:
    """The prompt's chunks (see the module's docstring)."""
    size = tokenizer.model_max_length - 2  # tokens per chunk between BOS and EOS
    pieces = parse_emphasis(text)
    texts = [piece.text for piece in pieces if not piece.is_break]
    tokenized = iter(tokenizer(texts, add_special_tokens=False, verbose=False).input_ids if texts else [])
    vectors = vector_ids(tokenizer)  # textual inversion: a multi-vector embedding's token -> its vectors' tokens
    chunks: list[tuple[list[int], list[float], int]] = []
    tokens: list[int] = []
    weights: list[float] = []
    for piece in pieces:
        if piece.is_break:
            chunks.append(_chunk(tokenizer, tokens, weights))
            tokens, weights = [], []
            continue
        for token in (token for first in next(tokenized) for token in vectors.get(first, [first])):
            if len(tokens) == size:
                chunks.append(_chunk(tokenizer, tokens, weights))
                tokens, weights = [], []
            tokens.append(token)
            weights.append(piece.weight)
    if tokens or not chunks:
        chunks.append(_chunk(tokenizer, tokens, weights))
    dropped = 0
    if not long_prompts and len(chunks) > 1:
        dropped = sum(length - 2 for _, _, length in chunks[1:])
        chunks = chunks[:1]
    ids, weight_rows, lengths = (list(column) for column in zip(*chunks))
    return Chunks(ids, weight_rows, lengths, dropped)


def pad_chunks(tokenizer: CLIPTokenizer, chunks: Chunks, count: int) -> Chunks:
    """`chunks` with empty-prompt chunks appended up to `count` chunks."""
    empty = [_chunk(tokenizer, [], [])] * (count - len(chunks.input_ids))
    return Chunks(
        chunks.input_ids + [ids for ids, _, _ in empty],
        chunks.weights + [w for _, w, _ in empty],
        chunks.lengths + [n for _, _, n in empty],
        chunks.dropped,
    )


def dropped_tokens(tokenizer: CLIPTokenizer, text: str) -> int:
    """How many of `text`'s tokens do not fit in one chunk of the encoder's context (dropped without long prompts)."""
    return tokenize_prompt(tokenizer, text, long_prompts=False).dropped


def emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """AUTOMATIC1111's original emphasis on z (K, L, D) with weights (K, L): per chunk, multiply each token's
    embedding by its weight, then rescale the chunk to its original mean."""
    original_mean = z.mean(dim=(1, 2), keepdim=True)  # (K, 1, 1)
    z = z * weights.unsqueeze(-1)  # (K, L, D)
    return z * (original_mean / z.mean(dim=(1, 2), keepdim=True))


def check_clip_skip(text_encoder: CLIPTextModel | CLIPTextModelWithProjection, clip_skip: int) -> None:
    """A usage error unless the encoder has the `clip_skip` layers to skip back through."""
    layers = text_encoder.config.num_hidden_layers
    if clip_skip > layers:
        raise UsageError(
            f"--clip-skip {clip_skip} is more than the text encoder's {layers} layers; give at most {layers}"
        )


def final_layer_norm(text_encoder: CLIPTextModel | CLIPTextModelWithProjection) -> torch.nn.LayerNorm:
    """The encoder's final layer norm: on the model itself in transformers 5's `CLIPTextModel`, under `text_model`
    in `CLIPTextModelWithProjection`."""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


@torch.inference_mode()
def encode_chunks(
    text_encoder: CLIPTextModel | CLIPTextModelWithProjection,
    chunks: Chunks,
    penultimate: bool = False,
    clip_skip: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """K chunks, each encoded on its own (one batched call) and weighted: the hidden states (K, L, D) of the last
    layer (after the final layer norm, as SD 1.x/2.x read them) or with `penultimate` of the layer before (as SDXL
    reads both its encoders), `clip_skip - 1` layers further back (see the module's docstring), and the pooled
    projection (K, P) when `penultimate` and the encoder has one."""
    check_clip_skip(text_encoder, clip_skip)
    input_ids = torch.tensor(chunks.input_ids, device=text_encoder.device)  # (K, L)
    # SD's CLIP encoders attend over the padding; only encoders whose config says so take the mask (as diffusers).
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (L,)
        mask = (positions < torch.tensor(chunks.lengths, device=input_ids.device).unsqueeze(1)).long()  # (K, L)
    if penultimate:
        output = text_encoder(input_ids, attention_mask=mask, output_hidden_states=True)
        z, pooled = output.hidden_states[-(clip_skip + 1)], getattr(output, "text_embeds", None)  # (K, L, D), (K, P)
    elif clip_skip > 1:
        output = text_encoder(input_ids, attention_mask=mask, output_hidden_states=True)
        z, pooled = final_layer_norm(text_encoder)(output.hidden_states[-clip_skip]), None  # (K, L, D)
    else:
        z, pooled = text_encoder(input_ids, attention_mask=mask)[0], None  # (K, L, D)
    if chunks.weighted:
        weights = torch.tensor(chunks.weights, device=z.device, dtype=torch.float32)  # (K, L)
        z = emphasize(z.float(), weights)
    return z.to(dtype=text_encoder.dtype), pooled


def _conditioning(encoders: Encoders, chunks: Sequence[Chunks], clip_skip: int = 1) -> Conditioning:
    """One prompt's (1, K * L, D) context from its chunks under each encoder, hidden states concatenated along the
    features (D = D_1 + D_2 for SDXL); the pooled embedding (1, P) is the last encoder's of the first chunk."""
    encoded = [
        encode_chunks(text_encoder, prompt_chunks, penultimate=len(encoders) > 1, clip_skip=clip_skip)
        for (_, text_encoder), prompt_chunks in zip(encoders, chunks, strict=True)
    ]
    z = torch.cat([hidden for hidden, _ in encoded], dim=-1)  # (K, L, D)
    pooled = encoded[-1][1]  # (K, P) or None
    return Conditioning(z.reshape(1, -1, z.shape[-1]), None if pooled is None else pooled[:1])


def _warn_dropped(tokenizer: CLIPTokenizer, chunks: Chunks, label: str) -> None:
    if chunks.dropped:
        log.warning(
            "the %s is longer than the text encoder's %d tokens: its last %d token%s were dropped "
            "(without --no-long-prompts it is encoded in chunks)",
            label,
            tokenizer.model_max_length,
            chunks.dropped,
            "" if chunks.dropped == 1 else "s",
        )


def encode_prompts(
    encoders: Encoders, texts: Sequence[str], labels: Sequence[str], long_prompts: bool = True, clip_skip: int = 1
) -> list[Conditioning]:
    """The conditioning of several prompts, one image each: contexts (1, K * L, D) padded to the same number of
    chunks K so they batch, and for SDXL the pooled embeddings (1, P); all read from the layer `clip_skip` says."""
    tokenized = [[tokenize_prompt(tokenizer, text, long_prompts) for tokenizer, _ in encoders] for text in texts]
    for per_encoder, label in zip(tokenized, labels, strict=True):
        _warn_dropped(encoders[0][0], per_encoder[0], label)  # the encoders share CLIP's vocabulary: warn once
    count = max((len(chunks.input_ids) for per_encoder in tokenized for chunks in per_encoder), default=1)
    return [
        _conditioning(
            encoders, [pad_chunks(tokenizer, c, count) for (tokenizer, _), c in zip(encoders, per_encoder)], clip_skip
        )
        for per_encoder in tokenized
    ]


def encode_prompt(
    encoders: Encoders, text: str, label: str = "prompt", long_prompts: bool = True, clip_skip: int = 1
) -> Conditioning:
    """The conditioning for one prompt: a context (1, K * L, D), L = model_max_length tokens, D = the text
    encoders' widths summed; SDXL's pooled embedding (1, P)."""
    (conditioning,) = encode_prompts(encoders, [text], [label], long_prompts, clip_skip)
    return conditioning
