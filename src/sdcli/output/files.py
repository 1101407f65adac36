"""Where images go: their file names, the checks made before any work starts, and atomic writes."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from sdcli.errors import Failure, UsageError, reason
from sdcli.recipe import Output, Request

SLUG_LENGTH = 60


def image_name(prompt: str, seed: int) -> str:
    """`<seed>-<prompt's words>.png`: stable, so the same command names the same files."""
    slug = "-".join(re.findall(r"[^\W_]+", prompt.lower()))[:SLUG_LENGTH].rstrip("-")
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
        if output.file.suffix.lower() != ".png":
            raise UsageError(f"-o {output.file}: sdcli writes PNG files; give a name ending in .png")
        paths = [output.file]
    else:
        paths = [output.out_dir / image_name(request.prompt, seed) for seed in request.seeds]
    check_paths(paths, output.overwrite)
    return paths


def check_paths(paths: list[Path], overwrite: bool) -> None:
    """Before any work: no path is a folder, none exists unless `overwrite`, and their folders can be written."""
    for path in paths:
        if path.is_dir():
            raise UsageError(f"{path} is a folder; give a file name with -o, or a folder with --out-dir")
        if path.exists() and not overwrite:
            raise UsageError(f"{path} already exists; pass --overwrite to replace it, or choose another -o/--out-dir")
    for folder in {path.parent for path in paths}:
        _check_writable(folder)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomic(path: Path, data: bytes, overwrite: bool) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place: readers never see half a file,
    and an interrupted run leaves none behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not overwrite:
            raise UsageError(f"{path} already exists; pass --overwrite to replace it, or choose another -o/--out-dir")
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as error:
        raise Failure(f"cannot write to {path.parent} ({reason(error)}); choose another output folder") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except BaseException as error:
        Path(temp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise Failure(f"could not write {path} ({reason(error)}); check the folder and free space") from None
        raise
