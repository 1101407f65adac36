"""Measurements of generated images: diversity between seeds, and how well images follow their prompt.

- `diversity`: mean pairwise RMS distance between images (pixel space, RGB in [0, 1]).
- `Judge`: what a model's own pixel judge offers (the built-in shapes model's is the module `sdcli.shapes.judge`):
  the attributes a prompt names, and whether an image shows exactly those (only the named attributes count).
- `clip_scores`: CLIP score (Hessel et al. 2021; 100 x the cosine similarity of image and prompt embeddings,
  floored at 0 as torchmetrics does) with a local transformers `CLIPModel` folder.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from sdcli.errors import UsageError, reason


def diversity(images: list[Image.Image]) -> float:
    """Mean pairwise RMS distance between images (RGB scaled to [0, 1]); 0 for fewer than two images."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float64) / 255 for im in images]
    pairs = [np.sqrt(((a - b) ** 2).mean()) for a, b in combinations(arrays, 2)]
    return float(np.mean(pairs)) if pairs else 0.0


class Judge(Protocol):
    """A model's own judge of adherence from pixels (the built-in shapes model's is the module
    `sdcli.shapes.judge`): the attributes a prompt names, and whether an image shows exactly those."""

    def named_attributes(self, prompt: str) -> dict[str, str]: ...

    def judged_adherence(self, image: Image.Image, attributes: dict[str, str]) -> bool: ...


class ClipScorer:
    """CLIP score with a local transformers `CLIPModel` folder (its processor files beside the weights)."""

    def __init__(self, folder: Path) -> None:
        from transformers import CLIPModel, CLIPProcessor

        if not (folder / "config.json").is_file():
            raise UsageError(
                f"--clip-model {folder}: no config.json there; give a folder saved by CLIPModel.save_pretrained"
            )
        try:
            self.model = CLIPModel.from_pretrained(folder, use_safetensors=True).eval()
            self.processor = CLIPProcessor.from_pretrained(folder)
        except Exception as error:  # noqa: BLE001 - a broken folder, in any of many ways
            raise UsageError(
                f"--clip-model {folder} does not load as a CLIP model ({reason(error)}); "
                "give a folder with a CLIPModel, its tokenizer and image processor"
            ) from None

    def __call__(self, images: list[Image.Image], prompt: str) -> list[float]:
        """One CLIP score per image: 100 * max(cos(image, prompt), 0)."""
        import torch

        inputs = self.processor(
            text=[prompt], images=[im.convert("RGB") for im in images], return_tensors="pt", padding=True
        )
        with torch.inference_mode():
            image_emb = self.model.get_image_features(pixel_values=inputs["pixel_values"])  # (N, E)
            text_emb = self.model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
        if not isinstance(image_emb, torch.Tensor):  # newer transformers return a model output
            image_emb, text_emb = image_emb.pooler_output, text_emb.pooler_output
        image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
        text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)  # (1, E)
        cosine = (image_emb @ text_emb.T).squeeze(1)  # (N,)
        return [float(100 * max(c, 0.0)) for c in cosine.tolist()]
