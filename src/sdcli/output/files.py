"""Where images go: their file names, the checks made before any work starts, atomic writes, and the lock that
keeps one batch per folder."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from sdcli.errors import Failure, UsageError, reason
from sdcli.output.metadata import settings_from_png
from sdcli.recipe import Recipe, Request

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
BATCH_LOCK = ".sdcli-batch.lock"  # in a folder while a batch runs there; names its holder
# The settings that decide an image's pixels: an image already on disk is kept by a rerun (batch, sweep) only when
# its stored settings agree on those the recipe sets (None: the model's size, the default scale, resolved later).
MADE_WITH = (
    "prompt", "negative_prompt", "extra_negative_prompts", "seed", "cfg", "steps", "sampler", "neg_mode", "neg_scale",
    "cfg_rescale", "guidance_interval", "classifier", "classifier_scale", "width", "height",
)  # fmt: skip


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


def check_made_with(path: Path, recipe: Recipe) -> None:
    """The image at `path`, kept by a rerun, must have been made with `recipe`'s settings, or the run would mix
    two runs' images."""
    stored, wanted = settings_from_png(path), asdict(recipe)
    for key in MADE_WITH:
        want = list(wanted[key]) if isinstance(wanted.get(key), tuple) else wanted.get(key)  # as JSON stores it
        if want is not None and key in stored and stored[key] != want:
            raise UsageError(f"{path} exists but was made with {key} {stored[key]!r}, not {want!r}; pass --overwrite "
                             "to remake it, or use another --out-dir")  # fmt: skip


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


@contextmanager
def hold_folder(folder: Path) -> Iterator[None]:
    """One batch at a time in `folder`: an exclusive lock on its BATCH_LOCK file for the whole run, the file
    naming the holder (process and host) for a run that finds it taken. The lock of a process that dies goes with
    it (flock); the file is removed on the way out."""
    path = folder / BATCH_LOCK
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _locked(path)
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
    except OSError as error:
        raise Failure(f"cannot write to {folder} ({reason(error)}); choose another output folder") from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while locked: a run waiting on this file then finds it gone, see _locked
        os.close(fd)


def _locked(path: Path) -> int:
    """The open lock file, locked; a failure naming the holder when another batch has it. A file removed by its
    holder between our open and our lock is not the folder's lock any more: lock the one at `path` now."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Failure(
                f"{path.parent} is in use by another sdcli batch ({_holder(path)}); wait for it to finish, or use "
                "another --out-dir"
            ) from None
        try:
            if os.path.samestat(os.stat(path), os.fstat(fd)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(path: Path) -> str:
    """Who holds the lock, as its file says (printable characters only: the file may be anyone's)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return "".join(char for char in text if char.isprintable())[:200] or "its holder is starting"
