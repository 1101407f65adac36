"""The batch workflow: a file of prompts to images, resumable, with a manifest, across processes.

1. read and check every line (a `.txt` prompt per line, `.jsonl` objects, `.csv` rows; `-` is stdin): command-line
   options are the defaults, a line's fields override them, the files a line names (init image, mask) are relative
   to the batch file's folder and must be readable; invalid lines stop the batch before any work (or are skipped
   with `skip_invalid`)
2. load the model once per process; check each line against it as the engine will (its size: as asked, else its
   init image's; its mask)
3. plan: one stable name per image (line number, image index, seed, prompt); images already on disk are skipped,
   so a rerun resumes; the manifest is brought in line with the files on disk
4. split the missing images between the executor's workers: the processes of `accelerate launch` (the local
   executor: contiguous shares, each image once), or Ray actors (`sdcli.workflows.ray_executor`)
5. make the images with the generate loop, images of lines that differ only in their prompts and seeds batched
   together up to `batch_size` per U-Net call (`share_batches`, then `make_group`: the same for every executor);
   write each image atomically, then append its line to the manifest

An executor is the small plug of steps 2 and 4-5: it loads the model, checks lines against it, and turns a share of
planned images into PNG bytes and rows; the writing, the manifest and resuming are this module's, whichever it is.

An interruption loses at most the images in flight: images land by rename, and a manifest line is appended only
after its image, so every line names an image on disk; the next run adds lines for images whose line was lost.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from accelerate import PartialState

from sdcli.engine import batch_key, check, check_inputs, chunked, load_for, loading_all, make_batched
from sdcli.errors import UsageError
from sdcli.loading.components import Model
from sdcli.loading.lora_names import recorded_loras
from sdcli.output.console import image_progress
from sdcli.output.files import check_output_path, image_name
from sdcli.output.metadata import check_made_with, encode_png, settings_from_png
from sdcli.output.writes import hold_folder, write_atomic
from sdcli.recipe import SETTINGS, Recipe, Request, parse_text, recorded_path

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
FORMATS = ("txt", "jsonl", "csv")
# What a line may set: the recipe's settings but those that load the model, and the number of images; the rest
# (model, VAE, device, dtype...) is one per run, given on the command line.
PER_LINE = tuple(
    name for name, (_, spec) in SETTINGS.items() if spec.per_line and (not spec.loads or spec.loads_union)
)  # LoRAs: the model loads every line's files, each batch sets its line's weights (`engine.loading_all`)
ALIASES = {"neg": "negative_prompt", "n": "num_images", "lora": "loras"}  # the command line's short names


@dataclass(frozen=True)
class Line:
    """One valid line of the file: its number (1-based, in the file) and the request it makes."""

    number: int
    request: Request


@dataclass(frozen=True)
class Invalid:
    number: int
    problem: str


@dataclass(frozen=True)
class Planned:
    """One image of the batch."""

    line: Line
    index: int  # image index within its line
    path: Path

    @property
    def seed(self) -> int:
        return self.line.request.recipe.seed + self.index

    @property
    def recipe(self) -> Recipe:
        """The recipe that makes this image alone."""
        return replace(self.line.request.recipe, seed=self.seed)


# 1. Reading and checking lines.


def file_format(source: str, given: str | None) -> str:
    if given is not None:
        return given
    if source == "-":
        return "txt"
    suffix = Path(source).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    if suffix == "ndjson":
        return "jsonl"
    raise UsageError(f"{source}: cannot tell its format from the name; use .txt, .jsonl or .csv, or give --format")


def raw_rows(text: str, fmt: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, fields) per non-blank, non-comment line; a string in place of fields says what is wrong."""
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "prompt" not in [name.strip() for name in reader.fieldnames]:
            raise UsageError("the CSV file needs a header line with a `prompt` column (and any option columns)")
        for row in reader:
            if None in row:
                yield reader.line_num, f"more cells than the header has columns ({len(reader.fieldnames)})"
                continue
            values = {key.strip(): value for key, value in row.items() if value is not None and value.strip() != ""}
            if values:
                yield reader.line_num, _from_strings(values)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if fmt == "txt":
            yield number, {"prompt": stripped}
            continue
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as error:
            yield number, f"bad JSON ({error.msg} at column {error.colno})"
            continue
        yield number, value if isinstance(value, dict) else f"a JSON object is needed, not {type(value).__name__}"


def _from_strings(values: dict[str, str]) -> dict[str, Any] | str:
    """CSV cells to the types the settings take (text stays text)."""
    typed: dict[str, Any] = {}
    for key, text in values.items():
        name = _setting_name(key)
        try:
            typed[key] = parse_text(name, text)
        except ValueError:
            return f"{key} {text!r} is not a {str(SETTINGS[name][0].type).split(' |')[0]}"
    return typed


def _setting_name(key: str) -> str:
    """The setting a line's field names (`neg-mode` and `neg_mode` alike; the command line's short names)."""
    name = key.replace("-", "_")
    return ALIASES.get(name, name)


def line_request(fields_: dict[str, Any], defaults: dict[str, Any], folder: Path = Path()) -> Request:
    """A line's fields over the command line's defaults, as a checked request; the files it names (settings
    declared with `path=True`) taken from `folder`, the batch file's, when relative."""
    settings = dict(defaults)
    for key, value in fields_.items():
        name = _setting_name(key)
        if name in SETTINGS and name not in PER_LINE:
            raise UsageError(f"`{key}` applies to the whole batch; give it on the command line")
        if name not in PER_LINE:
            raise UsageError(f"unknown option `{key}` (a line can set: {', '.join(_line_names())})")
        settings[name] = _line_paths(name, value, folder) if SETTINGS[name][1].path else value
    if not isinstance(settings.get("prompt"), str):
        raise UsageError("no `prompt` (text) on this line")
    return Request.of(settings)


def _line_paths(name: str, value: Any, folder: Path) -> Any:
    """A file setting's value on a line, relative paths taken from `folder`: one file, or several (a list; one text
    for a setting of several files is one of them). Anything else is left to the setting's check."""
    field_, spec = SETTINGS[name]
    if isinstance(value, str) and str(field_.type).startswith("tuple"):
        value = (value,)
    if isinstance(value, str) and value != "":
        return recorded_path(spec, value, folder)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v != "" for v in value):
        return tuple(recorded_path(spec, v, folder) for v in value)
    return value


def _line_names() -> list[str]:
    short = {name: alias for alias, name in ALIASES.items()}
    return [short.get(name, name) for name in PER_LINE]


def read_lines(
    text: str, fmt: str, defaults: dict[str, Any], folder: Path = Path()
) -> tuple[list[Line], list[Invalid]]:
    """Every line of the file, checked (its settings, and the image files it names, relative to `folder`): the
    valid ones as requests, the others with their problem."""
    lines, invalid = [], []
    for number, row in raw_rows(text, fmt):
        if isinstance(row, str):
            invalid.append(Invalid(number, row))
            continue
        try:
            request = line_request(row, defaults, folder)
            check_inputs(request.recipe)
            lines.append(Line(number, request))
        except UsageError as error:
            invalid.append(Invalid(number, str(error)))
    return lines, invalid


def check_for_model(lines: list[Line], model: Model) -> tuple[list[Line], list[Invalid]]:
    """Lines the model can make, and those it cannot, checked as the engine checks a recipe (`engine.check`): the
    size (as asked, else the init image's, else the model's native size) a multiple of its latent scale, and the
    inputs it takes."""
    good, bad = [], []
    for line in lines:
        try:
            check(model, [line.request.recipe])
            good.append(line)
        except UsageError as error:
            bad.append(Invalid(line.number, str(error)))
    return good, bad


def refuse_or_skip(source: str, invalid: list[Invalid], skip_invalid: bool) -> None:
    """Stop on invalid lines (one error naming the first), or with `skip_invalid` warn about each."""
    if not invalid:
        return
    if skip_invalid:
        for bad in invalid:
            log.warning("%s line %d skipped: %s", source, bad.number, bad.problem)
        return
    first = invalid[0]
    others = f" (and {len(invalid) - 1} more: lines {', '.join(str(b.number) for b in invalid[1:6])}" + (
        "...)" if len(invalid) > 6 else ")"
    )
    raise UsageError(
        f"{source} line {first.number}: {first.problem}{others if len(invalid) > 1 else ''}; "
        "fix the file, or pass --skip-invalid to skip invalid lines"
    )


# 3. Planning and the manifest.


def plan(lines: list[Line], out_dir: Path) -> list[Planned]:
    """Every image of every line, named `<line>-<index>-<seed>-<prompt words>.png`: stable across reruns, and
    sorting in plan order (line and index zero-padded)."""
    return [
        Planned(line, i, out_dir / f"{line.number:05d}-{i:03d}-{image_name(line.request.recipe.prompt, seed)}")
        for line in lines
        for i, seed in enumerate(line.request.seeds)
    ]


def _manifest_row(text: str) -> dict[str, Any] | None:
    """A line of the manifest as its row, None if it is not one sdcli writes (a JSON object with a path and a
    prompt)."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return None
    ours = isinstance(row, dict) and isinstance(row.get("path"), str) and isinstance(row.get("prompt"), str)
    return row if ours else None


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    """The manifest's rows, each path relative to the folder. A usage error if the file is not sdcli's, as
    rewriting it would lose its lines; a last line cut short by a crash (no newline at its end) is dropped."""
    if not path.exists():
        return []
    try:
        *lines, last = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise _foreign(path, "is not UTF-8 text") from None
    rows = []
    for number, text in enumerate([*lines, last], start=1):
        row = _manifest_row(text) if text.strip() else None
        if row is not None:
            rows.append(folder_relative(row))
        elif text.strip() and (number <= len(lines) or not rows):  # a whole line, or a lone one: not sdcli's
            raise _foreign(path, f"line {number} is not a JSON object with a path and a prompt")
    return rows


def _foreign(path: Path, problem: str) -> UsageError:
    """The error for a manifest that is not sdcli's: the batch would rewrite it without its lines."""
    return UsageError(f"{path} is not sdcli's manifest ({problem}); move it away, or use another --out-dir")


def folder_relative(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the manifest records it: its path relative to the output folder (the image's name, as images
    land right in it), so that a rerun from another directory finds it. Rows of older sdcli, relative to the
    directory they ran in, read the same way."""
    return {**row, "path": Path(row["path"]).name}


def reconcile_manifest(out_dir: Path, planned: list[Planned]) -> None:
    """Rewrite the manifest (atomically) to hold one line per image on disk: planned images in plan order, then
    lines of other runs into the same folder; lines whose image is gone are dropped, and images without a line
    (the run stopped between the two) get one from the settings inside the PNG."""
    manifest = out_dir / MANIFEST
    known = {row["path"]: row for row in _manifest_rows(manifest) if (out_dir / row["path"]).exists()}
    rows = []
    for image in planned:
        key = image.path.name
        if key in known:
            rows.append(known.pop(key))
        elif image.path.exists():
            rows.append({"path": key, **settings_from_png(image.path), "seconds": None})
    rows.extend(known.values())
    if rows or manifest.exists():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        write_atomic(manifest, text.encode("utf-8"), overwrite=True)


def remove_partial_files(out_dir: Path, planned: list[Planned]) -> None:
    """Temporary files a killed run of this batch left behind: write_atomic's `.<name>.<random>.part` of its
    planned images and of its manifest. Others in the folder are not the batch's to remove."""
    ours = {image.path.name for image in planned} | {MANIFEST}
    for temp in out_dir.glob(".*.part"):
        if temp.name[1:].removesuffix(".part").rpartition(".")[0] in ours:
            temp.unlink(missing_ok=True)


def check_existing(planned: list[Planned]) -> None:
    """An image already on disk must have been made from the same settings, or resuming would mix two runs."""
    for image in planned:
        if image.path.exists():
            check_made_with(image.path, image.recipe, recorded_loras(image.recipe))


def share_batches(share: list[Planned], size: int) -> Iterator[list[Planned]]:
    """A share's images in U-Net batches of up to `size`: images of lines that differ only in their prompts and
    seeds (equal `batch_key`) go together, in plan order; the groups come in the order of their first image."""
    groups: dict[tuple, list[Planned]] = {}
    for image in share:
        groups.setdefault(batch_key(image.recipe), []).append(image)
    for group in groups.values():
        yield from chunked(group, size)


@dataclass(frozen=True)
class Made:
    """An image made, ready to land: its PNG bytes (its settings inside) and its manifest row."""

    png: bytes
    row: dict[str, Any]


def make_group(model: Model, images: list[Planned], batch_size: int) -> Iterator[Made]:
    """The images of one group of `share_batches`, made with the generate loop: the one function every executor
    calls (the local one in its process, Ray's in its workers), so that their bytes are the same."""
    recipes = [image.recipe for image in images]
    for image, generated in zip(images, make_batched(model, recipes, batch_size), strict=True):
        yield Made(encode_png(generated.image, generated.record), generated.result(image.path))


class Manifest:
    """Appends one JSON line per image; each line is one write() to a file opened for appending, so the lines of
    several processes never interleave."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(out_dir / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def append(self, row: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(folder_relative(row), ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        os.close(self.fd)


# Executors.


class Executor(Protocol):
    """Where the images are made: a model loaded by each worker, lines checked against it, a share of the missing
    images made. `is_main` is the process that resumes the folder and shows progress; `wait()` is a barrier between
    the processes of one run."""

    is_main: bool

    def check(self, lines: list[Line]) -> tuple[list[Line], list[Invalid]]: ...

    def share(self, pending: list[Planned]) -> list[Planned]: ...

    def make(self, share: list[Planned], batch_size: int) -> Iterator[tuple[Planned, Made]]: ...

    def wait(self) -> None: ...


class Local:
    """This process, one of several under `accelerate launch`: it loads the model, and makes its contiguous share
    of the missing images."""

    def __init__(self, request: Request) -> None:
        self.model = load_for(request)
        # On the CPU, accelerate forms a gloo group of the launched processes only when asked for a CPU state.
        self.state = PartialState(cpu=self.model.device.type == "cpu")
        self.is_main = self.state.is_main_process

    def check(self, lines: list[Line]) -> tuple[list[Line], list[Invalid]]:
        return check_for_model(lines, self.model)

    def share(self, pending: list[Planned]) -> list[Planned]:
        with self.state.split_between_processes(pending) as share:
            return list(share)

    def make(self, share: list[Planned], batch_size: int) -> Iterator[tuple[Planned, Made]]:
        for images in share_batches(share, batch_size):
            yield from zip(images, make_group(self.model, images, batch_size), strict=True)

    def wait(self) -> None:
        self.state.wait_for_everyone()


def local(request: Request) -> AbstractContextManager[Executor]:
    """The default executor: today's process (and its accelerate peers)."""
    return nullcontext(Local(request))


# The whole run.


@dataclass(frozen=True)
class BatchResult:
    planned: int
    skipped: int  # already on disk
    made: int  # by this process


def run(
    text: str,
    source: str,
    fmt: str,
    defaults: dict[str, Any],
    out_dir: Path,
    skip_invalid: bool = False,
    overwrite: bool = False,
    on_image: Callable[[Path, dict[str, Any]], None] | None = None,
    note: Callable[[str], None] | None = None,
    progress: bool = False,
    folder: Path = Path(),
    executor: Callable[[Request], AbstractContextManager[Executor]] = local,
) -> BatchResult:
    """Run the batch with `executor` (this process, one of several under `accelerate launch`, by default), the
    files its lines name taken from `folder` (the batch file's) when relative; `on_image(path, row)` after each
    image lands; the main process passes messages (skipped images) to `note(text)` and, with `progress`, shows a
    progress bar over its share."""
    # 1. Read and check every line, and the folder's name, before any work.
    check_output_path(out_dir / MANIFEST)
    lines, invalid = read_lines(text, fmt, defaults, folder)
    if not lines and not invalid:
        raise UsageError(f"{source} holds no prompts; give one per line (blank lines and # comments are skipped)")
    refuse_or_skip(source, invalid, skip_invalid)
    if not lines:
        raise UsageError(f"{source}: no valid lines to make; fix the file")
    # 2. Load the model once per worker; check every line against it.
    with executor(loading_all([line.request for line in lines])) as workers:
        lines, unmakeable = workers.check(lines)
        refuse_or_skip(source, unmakeable, skip_invalid)
        if not lines:
            raise UsageError(f"{source}: no valid lines to make; fix the file")
        planned = plan(lines, out_dir)
        # One batch per folder: the main process holds it for the run; the other processes are of this same run.
        with hold_folder(out_dir) if workers.is_main else nullcontext():
            return _resume_and_make(workers, lines, planned, out_dir, overwrite, on_image, note, progress)


def _resume_and_make(
    workers: Executor,
    lines: list[Line],
    planned: list[Planned],
    out_dir: Path,
    overwrite: bool,
    on_image: Callable[[Path, dict[str, Any]], None] | None,
    note: Callable[[str], None] | None,
    progress: bool,
) -> BatchResult:
    """Steps 3 to 5 of `run`, in the folder this run holds."""
    # 3. Resume: bring the folder and manifest in line with the files on disk (one process does it).
    if workers.is_main and out_dir.exists():
        remove_partial_files(out_dir, planned)
        if not overwrite:
            check_existing(planned)
        reconcile_manifest(out_dir, planned)
    workers.wait()
    pending = planned if overwrite else [image for image in planned if not image.path.exists()]
    workers.wait()  # every process has seen the same folder before any image lands
    if note is not None and workers.is_main:
        skipped = len(planned) - len(pending)
        if skipped:
            note(f"skipped {skipped} of {len(planned)} images already in {out_dir}")
    # 4. This process's share.
    share = workers.share(pending)
    made = 0
    manifest = Manifest(out_dir)
    try:
        with image_progress(progress and workers.is_main, len(share)) as advance:
            # 5. Make, write, record.
            for image, result in workers.make(share, lines[0].request.run.batch_size):
                write_atomic(image.path, result.png, overwrite)
                manifest.append(result.row)
                made += 1
                advance(1)
                if on_image is not None:
                    on_image(image.path, result.row)
    finally:
        manifest.close()
    workers.wait()
    if workers.is_main:
        reconcile_manifest(out_dir, planned)  # one line per image, in plan order, whichever process made it
    return BatchResult(planned=len(planned), skipped=len(planned) - len(pending), made=made)
