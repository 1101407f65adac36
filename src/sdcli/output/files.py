"""Where images go: their file names and the checks made before any work starts (writing: `sdcli.output.writes`)."""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from sdcli.errors import Failure, UsageError
from sdcli.recipe import Request

SLUG_LENGTH = 60
# File systems take names of at most NAME_MAX bytes; write_atomic's temporary `.<name>.<8 random>.part` beside an
# image is TEMP_EXTRA bytes longer than the image's name, so an image's name may have NAME_MAX - TEMP_EXTRA bytes.
NAME_MAX = 255
TEMP_EXTRA = len(".") + len(".xxxxxxxx.part")
# The prompt's words in a name: at most SLUG_LENGTH characters and SLUG_BYTES bytes (60 letters of any script but
# the 4-byte ones), leaving room for a 20-digit seed and batch's `<line>-<index>-` prefix within the limit above.
SLUG_BYTES = 180
# Characters that would split a printed path over lines, or hide in it: control characters, line separators.
LINE_BREAKING = ("Cc", "Zl", "Zp")


@dataclass(frozen=True)
class Output:
    """Where the images go."""

    file: Path | None = None  # -o: the one image goes exactly here
    out_dir: Path = Path("outputs")  # otherwise: named after seed and prompt in this folder
    overwrite: bool = False  # replace existing files instead of refusing


def image_name(prompt: str, seed: int) -> str:
    """`<seed>-<prompt's words>.png`: stable, so the same command names the same files. The words are cut to
    SLUG_LENGTH characters and SLUG_BYTES bytes (at a character's end), so that every name fits a file system."""
    words = "-".join(re.findall(r"[^\W_]+", prompt.lower()))[:SLUG_LENGTH]
    slug = words.encode()[:SLUG_BYTES].decode(errors="ignore").rstrip("-")
    return f"{seed}-{slug}.png" if slug else f"{seed}.png"


def _check_writable(folder: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise Failure(f"cannot write to {folder}: {existing} is a file, not a folder; choose another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise Failure(f"cannot write to {folder}: {existing} is not writable; choose another output folder")


def plan_paths(request: Request, output: Output) -> list[Path]:
    """One path per image, checked before any work: -o for one image only, no clobbering, a writable folder."""
    if output.file is not None:
        if request.num_images != 1:
            raise UsageError(
                f"-o/--output names one file but {request.num_images} images were asked for; "
                "use --out-dir for several images, or -n 1"
            )
        check_output_path(output.file)
        if output.file.suffix.lower() != ".png":
            raise UsageError(f"-o {output.file}: sdcli writes PNG files; give a name ending in .png")
        paths = [output.file]
    else:
        paths = [output.out_dir / image_name(request.recipe.prompt, seed) for seed in request.seeds]
    check_paths(paths, output.overwrite)
    return paths


def check_paths(paths: list[Path], overwrite: bool) -> None:
    """Before any work: each path is one a file system takes and a line can print, no path is a folder, none
    exists unless `overwrite`, and their folders can be written."""
    for path in paths:
        check_output_path(path)
        if path.is_dir():
            raise UsageError(f"{path} is a folder; give a file name with -o, or a folder with --out-dir")
        if path.exists() and not overwrite:
            raise UsageError(f"{path} already exists; pass --overwrite to replace it, or choose another -o/--out-dir")
    for folder in {path.parent for path in paths}:
        _check_writable(folder)


def check_output_path(path: Path) -> None:
    """Before any work: no control character or line separator in `path` (its printed line would break, or hide
    part of it), and no name in it over NAME_MAX bytes (the file's own over NAME_MAX - TEMP_EXTRA, for its
    temporary file), which the file system would refuse only once the images are made."""
    text = str(path)
    if any(unicodedata.category(char) in LINE_BREAKING for char in text):
        raise UsageError(f"the output path {text!r} holds a control character; give a path without newlines, tabs "
                         "or other control characters")  # fmt: skip
    for name, limit in [*((part, NAME_MAX) for part in path.parent.parts), (path.name, NAME_MAX - TEMP_EXTRA)]:
        size = len(os.fsencode(name))
        if size > limit:
            raise UsageError(f"the output name {name[:40]!r}... is {size} bytes, over the {limit}-byte limit of file "
                             "names (with room for a temporary file); give a shorter name")  # fmt: skip
