"""Textual inversion (Gal et al. 2022): embedding files, each a few learned token vectors, added to the tokenizer
and the text encoder's token embedding matrix under a new token, the file's name without its suffix
(AUTOMATIC1111's rule; `sdcli.recipe.embedding_token`).

Formats, read offline, pickles only with --allow-pickle (torch.load(weights_only=True)):

- AUTOMATIC1111's `.safetensors`: `emb_params` (n, D); for SDXL `clip_l` (n, 768) and `clip_g` (n, 1280)
- AUTOMATIC1111's `.pt`: `string_to_param` {"*": (n, D)} beside its name and training step
- diffusers' `learned_embeds.safetensors` / `.bin`: {token: (n, D)} (its token is replaced by the file's name)

The vectors go in through diffusers' `TextualInversionLoaderMixin.load_textual_inversion` with the tokenizer and
encoder passed explicitly (one call per encoder: SDXL's pairs load as diffusers' docs show), so a multi-vector
embedding adds the tokens `name`, `name_1`, ... as diffusers does; `sdcli.text.prompts` expands `name` in prompts
to all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from diffusers.loaders import TextualInversionLoaderMixin
from transformers import CLIPTextModel, CLIPTokenizer

from sdcli.errors import UsageError, reason
from sdcli.loading.checkpoints import check_adapter_file, load_pickle, read_checkpoint
from sdcli.loading.references import PICKLES, SAFETENSORS
from sdcli.recipe import embedding_token

SUFFIXES = SAFETENSORS + PICKLES
FORMATS = "emb_params, string_to_param, clip_l and clip_g, or one {token: tensor}"


@dataclass(frozen=True)
class Embedding:
    """One embedding file, read and checked."""

    path: Path
    sha256: str
    vectors: tuple[torch.Tensor, ...]  # per text encoder, (n, D_i): one for SD; CLIP-L's and CLIP-G's for SDXL

    @property
    def token(self) -> str:
        return embedding_token(str(self.path))


def embedding_files(paths: Sequence[str], folder: str | None) -> list[Path]:
    """The files to load: `paths` (each must be a file), then the embedding files in `folder` by name, each once."""
    files = []
    for given in paths:
        path = Path(given)
        if not path.is_file():
            what = "is a folder (use --embedding-dir for a folder)" if path.is_dir() else "does not exist"
            raise UsageError(f"--embedding {path} {what}; give an embedding file (.safetensors)")
        files.append(path.resolve())
    if folder is not None:
        if not Path(folder).is_dir():
            raise UsageError(f"--embedding-dir {folder} is not a folder; give the folder that holds the embeddings")
        found = sorted(p.resolve() for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        files += [path for path in found if path not in files]
    return files


def _vectors(data: object, path: Path) -> tuple[torch.Tensor, ...]:
    """The (n, D) vectors per text encoder of an embedding file's contents, in any of the formats above."""
    if isinstance(data, Mapping):
        if "clip_l" in data and "clip_g" in data:
            found = (data["clip_l"], data["clip_g"])
        elif isinstance(data.get("string_to_param"), Mapping) and len(data["string_to_param"]) == 1:
            found = tuple(data["string_to_param"].values())
        elif "emb_params" in data:
            found = (data["emb_params"],)
        else:
            found = tuple(data.values()) if len(data) == 1 else ()
        if found and all(isinstance(t, torch.Tensor) and t.ndim in (1, 2) and t.numel() for t in found):
            return tuple(t.reshape(-1, t.shape[-1]) for t in found)  # (D,) is one vector: (1, D)
    keys = ", ".join(sorted(map(str, data))[:5]) if isinstance(data, Mapping) else type(data).__name__
    raise UsageError(f"--embedding {path} holds {keys}, not a textual inversion embedding ({FORMATS}); give one")


def read_embedding(path: Path, allow_pickle: bool, recorded_sha256: str | None = None) -> Embedding:
    """The embedding file at `path`, checked against the sha256 a replay recorded for it."""
    sha256 = check_adapter_file(path, "--embedding", "an embedding file", allow_pickle, recorded_sha256)
    data = read_checkpoint(path) if path.suffix.lower() in SAFETENSORS else load_pickle(path)
    return Embedding(path, sha256, _vectors(data, path))


def read_embeddings(files: Sequence[Path], allow_pickle: bool, recorded: Sequence[str] = ()) -> list[Embedding]:
    """Every file's embedding (`recorded`: sha256s of the first files, from a replay), no two with one token."""
    embeddings = [
        read_embedding(path, allow_pickle, recorded[i] if i < len(recorded) else None) for i, path in enumerate(files)
    ]
    by_token: dict[str, Path] = {}
    for embedding in embeddings:
        other = by_token.setdefault(embedding.token, embedding.path)
        if other != embedding.path:
            raise UsageError(
                f"--embedding {embedding.path} and {other} both give the token {embedding.token!r}; rename one file"
            )
    return embeddings


class _Loader(TextualInversionLoaderMixin):
    """diffusers' loader without a pipeline: tokenizer and encoder are passed to each call, and there are no
    offload hooks to lift (sdcli adds embeddings before it places the model)."""

    hf_device_map = None
    components = MappingProxyType({})


def add_embeddings(
    encoders: Sequence[tuple[CLIPTokenizer, CLIPTextModel]], embeddings: Sequence[Embedding]
) -> tuple[Embedding, ...]:
    """Add each embedding's tokens to each (tokenizer, text encoder): one set of vectors per encoder, of its width."""
    widths = tuple(encoder.get_input_embeddings().weight.shape[-1] for _, encoder in encoders)
    for embedding in embeddings:
        theirs = tuple(vectors.shape[-1] for vectors in embedding.vectors)
        if theirs != widths:
            raise UsageError(
                f"--embedding {embedding.path} is for text encoders of width {theirs} but the model's take {widths}; "
                "give an embedding trained for this model's family (SD 1.x: 768, SD 2.x: 1024, SDXL: 768 and 1280)"
            )
        for (tokenizer, encoder), vectors in zip(encoders, embedding.vectors, strict=True):
            try:
                _Loader().load_textual_inversion(
                    vectors.to(encoder.dtype), token=embedding.token, tokenizer=tokenizer, text_encoder=encoder
                )
            except ValueError as error:  # its token is a word the tokenizer has
                raise UsageError(f"--embedding {embedding.path} does not load ({reason(error)}); rename it") from None
    return tuple(embeddings)
