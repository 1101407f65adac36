"""Which LoRA files a recipe asks for, and at which weights: its `--lora PATH[:WEIGHT]` and `--lora NAME[:WEIGHT]`, and
AUTOMATIC1111's `<lora:NAME:WEIGHT>` tags in its prompt (`sdcli.text.lora_tags`).

A tag's NAME is first one of the recipe's own `--lora` files (its name: the file's stem), so that a replayed record,
which lists every file it loaded, finds its tags' files again, and a tag sets the weight of a `--lora` file of its
name; else, as a `--lora NAME`, it is `NAME.safetensors` (`.pt`, `.ckpt`, `.bin`: read only with --allow-pickle) in
--lora-dir ($SDCLI_LORA_DIR), then in the model's own `loras/` folder (a built-in model's, or a model folder's). No
torch here: names are checked before the model loads.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sdcli.errors import UsageError
from sdcli.loading.references import builtin_root
from sdcli.recipe import PICKLES, SAFETENSORS, Recipe, is_lora_name, lora_name, parse_lora
from sdcli.text.lora_tags import read_tags

SUFFIXES = SAFETENSORS + PICKLES  # in the order a name is looked for; pickles are refused when read, unless allowed


@dataclass(frozen=True)
class Chosen:
    """One LoRA file a recipe asks for."""

    path: Path  # absolute
    weight: float
    sha256: str | None = None  # the file's, as a replay recorded it

    @property
    def name(self) -> str:
        return lora_name(str(self.path))

    @property
    def recorded(self) -> str:
        """As an image's record lists it: `PATH:WEIGHT`."""
        return f"{self.path}:{self.weight!r}"


def lora_dirs(recipe: Recipe) -> list[Path]:
    """Where names are looked for, in order: --lora-dir, then the model's `loras/` (a built-in model's, a folder's)."""
    model = Path(recipe.model).expanduser()
    folder = model if model.is_dir() else builtin_root() / recipe.model
    found = [Path(recipe.lora_dir)] if recipe.lora_dir else []
    return [*found, folder / "loras"] if (folder / "model_index.json").is_file() else found


def _names(folders: list[Path]) -> list[str]:
    return sorted({p.stem for d in folders if d.is_dir() for p in d.iterdir() if p.suffix.lower() in SUFFIXES})


def find_lora(name: str, recipe: Recipe, as_typed: str) -> Path:
    """The file of a LoRA's name, or a one-line usage error that lists the close names there."""
    folders = lora_dirs(recipe)
    for folder in folders:
        for suffix in SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return (folder / f"{name}{suffix}").resolve()
    where = " or ".join(str(folder) for folder in folders) or "no folder (no --lora-dir, no model loras/)"
    close = difflib.get_close_matches(name, _names(folders))
    hint = f"close names: {', '.join(close)}" if close else "give --lora-dir DIR (or $SDCLI_LORA_DIR) that holds it"
    raise UsageError(f"{as_typed}: no LoRA named {name!r} in {where}; {hint}")


def chosen_loras(recipe: Recipe) -> list[Chosen]:
    """The recipe's LoRA files and weights: each `--lora` (a name found as `find_lora` finds it), then each prompt
    tag's, a tag of a `--lora` file's name setting that file's weight. A file named twice is a usage error."""
    chosen: list[Chosen] = []
    for i, text in enumerate(recipe.loras):
        reference, weight = parse_lora(text)
        path = find_lora(reference, recipe, f"--lora {text}") if is_lora_name(text) else Path(reference).resolve()
        sha256 = recipe.loras_sha256[i] if i < len(recipe.loras_sha256) else None
        if any(c.path == path for c in chosen):
            raise UsageError(f"--lora {path} is given twice; give each LoRA once, at the weight it should have")
        chosen.append(Chosen(path, weight, sha256))
    for name, weight in read_tags(recipe.prompt).loras:
        same = next((i for i, c in enumerate(chosen) if c.name == name), None)
        if same is not None:
            chosen[same] = Chosen(chosen[same].path, weight, chosen[same].sha256)
        else:
            chosen.append(Chosen(find_lora(name, recipe, f"<lora:{name}:{weight:g}>"), weight))
    return chosen


def recorded_loras(recipe: Recipe) -> tuple[str, ...]:
    """The recipe's LoRAs as an image's record lists them: `PATH:WEIGHT`, each file resolved, its tags' too."""
    return tuple(chosen.recorded for chosen in chosen_loras(recipe))


def union(recipes: Sequence[Recipe]) -> list[Chosen]:
    """Every file the recipes ask for, once each, in the order first asked for (weights: the first asker's)."""
    files: dict[Path, Chosen] = {}
    for recipe in recipes:
        for chosen in chosen_loras(recipe):
            files.setdefault(chosen.path, chosen)
    return list(files.values())
