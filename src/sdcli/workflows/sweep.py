"""The guidance sweep: one prompt at several guidance scales (columns) and seeds (rows), measured.

1. plan: the grid of cells, one `Request` per column and run of consecutive seeds (so seeds batch together)
2. make each column's images with the generate loop; the same seed gives the same initial noise in every column,
   so columns differ by guidance alone
3. measure each cell (prompt adherence) and each column (diversity between seeds, time per image)
4. report: the cell PNGs, a labelled contact sheet, metrics.csv / metrics.json, a plot of the summary

Diversity and adherence are the two sides of classifier-free guidance's trade-off (Ho & Salimans 2022, Table 1):
raising w makes images follow the prompt more closely and differ less from seed to seed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PIL import Image

from sdcli.engine import check_inputs, load_for, make_images
from sdcli.errors import UsageError
from sdcli.output.files import check_paths
from sdcli.output.metadata import check_made_with, encode_png
from sdcli.output.sheets import contact_sheet, line_plot
from sdcli.output.writes import write_atomic
from sdcli.recipe import MAX_IMAGES, MAX_SEED, Recipe, Request
from sdcli.sampling.loop import StepCallback
from sdcli.workflows.metrics import ClipScorer, Judge, diversity

MAX_VALUES = 1000  # a range that long is a typo
MAX_CELLS = MAX_IMAGES  # a sweep's images, seeds x scales x axis values: as many as one request may make
# The guidance scales a sweep's columns can be: Recipe field -> its name in options, files, labels and metrics.
COLUMNS = {"cfg": "cfg", "classifier_scale": "classifier-scale"}


def parse_numbers(spec: str, option: str) -> tuple[float, ...]:
    """`1,3,5,7.5` or `start:stop:step` (stop included when the steps reach it: `1:13:2` is 1, 3, ..., 13)."""
    example = f"for example {option} 1,3,5,7.5 or {option} 1:13:2"
    try:
        if ":" in spec:
            start, stop, step = (float(part) for part in spec.split(":"))
            if not all(math.isfinite(v) for v in (start, stop, step)) or step <= 0 or stop < start:
                raise UsageError(
                    f"{option} {spec!r}: a range needs finite numbers, start <= stop and a step > 0; {example}"
                )
            steps = (stop - start) / step  # inf when it overflows
            if not steps < MAX_VALUES:
                raise UsageError(f"{option} {spec!r} gives more than {MAX_VALUES} values, the limit; use a larger step")
            values = tuple(round(start + i * step, 10) for i in range(math.floor(steps + 1e-9) + 1))
        else:
            values = tuple(float(part) for part in spec.split(","))
            if len(values) > MAX_VALUES:
                raise UsageError(f"{option} gives {len(values)} values, over the limit of {MAX_VALUES}; give fewer")
    except ValueError:
        raise UsageError(f"{option} {spec!r} is not a list or a range of numbers; {example}") from None
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{option} {spec!r}: values must be finite numbers; {example}")
    if len(set(values)) != len(values):
        raise UsageError(f"{option} {spec!r} repeats a value; give each value once")
    return values


def parse_seeds(spec: str, first: int) -> tuple[int, ...]:
    """`4` means seeds first .. first+3; `1,5,9` the seeds themselves."""
    try:
        values = tuple(int(part) for part in spec.split(","))
    except ValueError:
        raise UsageError(f"--seeds {spec!r}: give a count (--seeds 4) or a list of seeds (--seeds 1,5,9)") from None
    if "," not in spec:
        if not 1 <= values[0] <= MAX_CELLS:
            raise UsageError(f"--seeds {spec!r}: the count must be from 1 to {MAX_CELLS:,} (a sweep's limit)")
        if first + values[0] - 1 > MAX_SEED:
            raise UsageError(
                f"--seeds {spec!r} from seed {first} passes the largest seed, {MAX_SEED}; give a smaller --seed"
            )
        return tuple(range(first, first + values[0]))
    if len(set(values)) != len(values) or min(values) < 0 or max(values) > MAX_SEED:
        raise UsageError(f"--seeds {spec!r}: seeds must be different whole numbers from 0 to {MAX_SEED}")
    return values


def parse_words(spec: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in spec.split(",") if part.strip())


def _text(value: object) -> str:
    """An axis value as written in names and labels: numbers without a needless `.0`."""
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Sweep:
    """What to sweep: the base request (prompt and settings) at every scale, for every seed and axis value."""

    base: Request  # its column setting, seed and num_images are replaced per cell
    scales: tuple[float, ...]  # the columns
    seeds: tuple[int, ...]
    axis: str | None = None  # a Recipe field swept as rows beside the seeds ("sampler", "neg_scale"), or none
    axis_values: tuple = ()
    column: str = "cfg"  # the guidance scale the columns sweep: one of COLUMNS

    def __post_init__(self) -> None:
        if not self.scales:
            raise UsageError(f"--{self.name} gives no guidance scales; for example --{self.name} 1,3,5,7.5")
        cells = len(self.scales) * len(self.seeds) * (len(self.axis_values) if self.axis is not None else 1)
        if cells > MAX_CELLS:
            raise UsageError(f"the sweep has {cells:,} cells (scales x seeds x values), over the limit of "
                             f"{MAX_CELLS:,}; give fewer scales, seeds or values")  # fmt: skip
        for value in self.axis_values if self.axis is not None else ():  # each value must make a valid request
            self.base.with_recipe(**{self.axis: value})
        self.base.with_recipe(**{self.column: self.scales[0]})

    @property
    def name(self) -> str:
        """The column setting as named in options, files, labels and metrics."""
        return COLUMNS[self.column]

    @property
    def rows(self) -> list[tuple[object, int]]:
        """(axis value, seed) per row, axis value None when there is no second axis."""
        values = self.axis_values if self.axis is not None else (None,)
        return [(value, seed) for value in values for seed in self.seeds]

    @property
    def cells(self) -> list[tuple[float, object, int, int]]:
        """(scale, axis value, seed, row) of every cell, in the order they are made: column by column."""
        return [(scale, value, seed, row) for scale in self.scales for row, (value, seed) in enumerate(self.rows)]

    def cell_recipe(self, scale: float, value: object, seed: int) -> Recipe:
        """The recipe that makes one cell alone: its column's, at its seed."""
        (request,) = replace(self, seeds=(seed,)).column_requests(scale, value)
        return request.recipe

    def row_label(self, value: object, seed: int) -> str:
        if self.axis is None:
            return f"seed {seed}"
        name = self.axis.replace("_", "-")
        return f"{name} {_text(value)}" if len(self.seeds) == 1 else f"{name} {_text(value)}, seed {seed}"

    def cell_name(self, scale: float, value: object, seed: int) -> str:
        axis = "" if self.axis is None else f"{self.axis.replace('_', '-')}{_text(value)}-"
        return f"{self.name}{scale:g}-{axis}seed{seed}.png"

    def column_requests(self, scale: float, value: object) -> list[Request]:
        """The requests that make one column (of one axis value): one per run of consecutive seeds, in seed order."""
        settings = {self.column: scale, **({self.axis: value} if self.axis is not None else {})}
        runs: list[list[int]] = []
        for seed in self.seeds:
            if runs and seed == runs[-1][-1] + 1:
                runs[-1].append(seed)
            else:
                runs.append([seed])
        return [replace(self.base.with_recipe(seed=run[0], **settings), num_images=len(run)) for run in runs]


@dataclass(frozen=True)
class CellResult:
    """One measured cell of the sweep."""

    scale: float  # of the column
    row: int
    seed: int
    axis_value: object
    path: Path
    adherence: float | None  # judge: 1.0 or 0.0; CLIP: the CLIP score; None when not measured
    seconds: float | None  # None: made by an earlier run, resumed


@dataclass(frozen=True)
class Summary:
    """One guidance scale's measurements over its cells."""

    scale: float
    images: int
    adherence: float | None  # the mean over cells (judge: the fraction judged right)
    diversity: float | None  # mean pairwise distance between seeds, averaged over axis values; None for 1 seed
    seconds_per_image: float | None  # over the cells made by this run; None when it made none


# (images, prompt) -> one adherence value per image
Scorer = Callable[[list[Image.Image], str], list[float]]


def make_scorer(judge: Judge | None, recipe: Recipe) -> tuple[str | None, Scorer | None]:
    """Without --clip-model, adherence is measured by the model's own judge (the built-in shapes model has one),
    on the attributes the prompt names, then those classifier guidance targets (none named: not measured).
    Returns (name of the measure, scorer)."""
    if judge is None:
        return None, None
    targets = [label for _, _, label in (item.partition("=") for item in (recipe.classifier or "").split(","))]
    attributes = judge.named_attributes(" ".join([recipe.prompt, *targets]))
    if not attributes:
        return None, None
    return "judged " + "+".join(attributes), lambda images, _: [
        float(judge.judged_adherence(image, attributes)) for image in images
    ]


def run_sweep(
    make: Callable[[Request], Iterator[tuple[Image.Image, float, object]]],
    sweep: Sweep,
    out_dir: Path,
    scorer: Scorer | None,
    done: frozenset[Path] = frozenset(),
) -> Iterator[tuple[CellResult, Image.Image, object]]:
    """Every cell but those `done` (their paths), column by column, each as soon as it is made and scored, so that
    an interrupted sweep keeps what it made: `make(request)` yields (image, seconds, payload) per seed of the
    request."""
    row_of = {row: i for i, row in enumerate(sweep.rows)}
    for scale in sweep.scales:
        for value in sweep.axis_values if sweep.axis is not None else (None,):
            missing = tuple(seed for seed in sweep.seeds if out_dir / sweep.cell_name(scale, value, seed) not in done)
            for request in replace(sweep, seeds=missing).column_requests(scale, value) if missing else ():
                for seed, (image, seconds, payload) in zip(request.seeds, make(request), strict=True):
                    cell = CellResult(
                        scale=scale,
                        row=row_of[(value, seed)],
                        seed=seed,
                        axis_value=value,
                        path=out_dir / sweep.cell_name(scale, value, seed),
                        adherence=_score(scorer, image, sweep.base.recipe.prompt),
                        seconds=seconds,
                    )
                    yield cell, image, payload


def _score(scorer: Scorer | None, image: Image.Image, prompt: str) -> float | None:
    return scorer([image], prompt)[0] if scorer else None


def kept_cells(sweep: Sweep, out_dir: Path, overwrite: bool) -> frozenset[Path]:
    """Before any work: the cells already on disk that this run keeps, none with `overwrite`. A usage error for one
    made with other settings, and for reports in a folder that holds none of this sweep's cells (another sweep's,
    or someone's files), which a resumed sweep would replace."""
    cells = {out_dir / sweep.cell_name(*cell): cell for cell in (cell[:3] for cell in sweep.cells)}
    reports = [out_dir / name for name in REPORTS]
    check_paths([*cells, *reports], overwrite=True)  # names, folders, a writable place; existing files below
    if overwrite:
        return frozenset()
    done = [path for path in cells if path.exists()]
    for path in done:  # in plan order, so that the error names the first
        check_made_with(path, sweep.cell_recipe(*cells[path]))
    if not done:
        check_paths(reports, overwrite)
    return frozenset(done)


def all_cells(
    sweep: Sweep, out_dir: Path, made_now: dict[Path, CellResult], scorer: Scorer | None
) -> tuple[list[CellResult], dict[Path, Image.Image]]:
    """Every cell in the order they are made, and its image read back from disk: those made by this run as they
    were measured, those kept from an earlier run scored now (their time unknown)."""
    cells, images = [], {}
    for scale, value, seed, row in sweep.cells:
        path = out_dir / sweep.cell_name(scale, value, seed)
        with Image.open(path) as image:
            images[path] = image.convert("RGB")
        cell = made_now.get(path)
        if cell is None:  # kept from an earlier run
            adherence = _score(scorer, images[path], sweep.base.recipe.prompt)
            cell = CellResult(scale, row, seed, value, path, adherence, None)
        cells.append(cell)
    return cells, images


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(sweep: Sweep, cells: list[CellResult], images: dict[Path, Image.Image]) -> list[Summary]:
    """Per guidance scale: mean adherence, diversity between seeds (per axis value, then averaged), time."""
    summaries = []
    for scale in sweep.scales:
        column = [c for c in cells if c.scale == scale]
        groups: dict[object, list[Image.Image]] = {}
        for cell in column:
            groups.setdefault(cell.axis_value, []).append(images[cell.path])
        spread = _mean([diversity(group) for group in groups.values() if len(group) > 1])
        scores = [c.adherence for c in column if c.adherence is not None]
        summaries.append(
            Summary(
                scale=scale,
                images=len(column),
                adherence=_mean(scores),
                diversity=spread,
                seconds_per_image=_mean([c.seconds for c in column if c.seconds is not None]),
            )
        )
    return summaries


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _cell_row(sweep: Sweep, cell: CellResult) -> dict:
    row = {sweep.column: cell.scale, "seed": cell.seed, "path": str(cell.path), "adherence": cell.adherence,
           "seconds": _round(cell.seconds, 4)}  # fmt: skip
    return {**row, sweep.axis: cell.axis_value} if sweep.axis else row


def _summary_row(sweep: Sweep, summary: Summary) -> dict:
    row = asdict(summary)
    return {sweep.column: row.pop("scale"), **row}


def metrics_json(sweep: Sweep, measure: str | None, cells: list[CellResult], summary: list[Summary]) -> str:
    document = {
        "prompt": sweep.base.recipe.prompt,
        "adherence_measure": measure,
        "columns": sweep.column,
        "axis": sweep.axis,
        "cells": [_cell_row(sweep, c) for c in cells],
        "summary": [_summary_row(sweep, s) for s in summary],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def metrics_csv(sweep: Sweep, cells: list[CellResult], summary: list[Summary]) -> str:
    """One row per cell (kind `cell`), then one per guidance scale (kind `summary`)."""
    axis = [sweep.axis] if sweep.axis else []
    columns = ["kind", sweep.column, *axis, "seed", "path", "adherence", "diversity", "seconds", "images"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        writer.writerow({"kind": "cell", **_cell_row(sweep, cell)})
    for s in summary:
        writer.writerow({"kind": "summary", sweep.column: s.scale, "adherence": s.adherence,
                         "diversity": s.diversity, "seconds": _round(s.seconds_per_image, 4),
                         "images": s.images})  # fmt: skip
    return buffer.getvalue()


def summary_table(name: str, measure: str | None, summary: list[Summary]) -> str:
    """The summary as a plain text table (for stderr); `name` heads the column of scales."""

    def fmt(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    width = max(6, len(name))
    lines = [f"{name:>{width}}  {'images':>6}  {'adherence':>9}  {'diversity':>9}  {'s/image':>8}"]
    for s in summary:
        lines.append(
            f"{s.scale:>{width}g}  {s.images:>6}  {fmt(s.adherence, 3):>9}  {fmt(s.diversity, 4):>9}  "
            f"{fmt(s.seconds_per_image, 3):>8}"
        )
    lines.append(f"adherence: {measure or 'not measured (give --clip-model, or use the shapes model)'}")
    return "\n".join(lines)


REPORTS = ("grid.png", "metrics.csv", "metrics.json", "metrics.png")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run(
    sweep: Sweep,
    out_dir: Path,
    overwrite: bool = False,
    clip_model: Path | None = None,
    judge: Judge | None = None,
    on_step: StepCallback | None = None,
    report: Callable[[str], None] | None = None,
) -> Iterator[tuple[Path, dict | None]]:
    """Make, measure and write the sweep; yields (path, its JSON object) per cell image as it lands, then
    (path, None) per report file. A rerun resumes: cells already made with the same settings are kept (unless
    `overwrite`), and the reports are made again from every cell. `report(text)` receives the number of cells kept
    and the summary table."""
    # 1. Check inputs and outputs before the model loads.
    for value in sweep.axis_values if sweep.axis is not None else (None,):  # each row's init image and strength
        check_inputs(sweep.cell_recipe(sweep.scales[0], value, sweep.seeds[0]))
    done = kept_cells(sweep, out_dir, overwrite)
    clip = ClipScorer(clip_model) if clip_model is not None else None
    # 2. Load the model; choose the adherence measure.
    model = load_for(sweep.base)
    measure, scorer = ("clip score", clip) if clip else make_scorer(judge, sweep.base.recipe)
    if done and report is not None:
        report(f"kept {len(done)} of {len(sweep.cells)} cells already in {out_dir}")

    def make(request: Request) -> Iterator[tuple[Image.Image, float, object]]:
        for made in make_images(model, request, on_step):
            yield made.image, made.seconds, made

    # 3. Every missing cell: make, measure, write, one at a time.
    made_now: dict[Path, CellResult] = {}
    for cell, image, made in run_sweep(make, sweep, out_dir, scorer, done):
        write_atomic(cell.path, encode_png(image, made.record), overwrite)
        made_now[cell.path] = cell
        yield cell.path, {**made.result(cell.path), "adherence": cell.adherence}
    # 4. The contact sheet, the metrics and their plot, from every cell on disk.
    cells, images = all_cells(sweep, out_dir, made_now, scorer)
    summary = summarize(sweep, cells, images)
    grid = [[images[c.path] for c in sorted(cells, key=lambda c: sweep.scales.index(c.scale)) if c.row == r]
            for r in range(len(sweep.rows))]  # fmt: skip
    sheet = contact_sheet(
        grid, [f"{sweep.name} {s:g}" for s in sweep.scales], [sweep.row_label(*row) for row in sweep.rows]
    )
    series = {f"adherence ({measure})": [s.adherence for s in summary]} if measure else {}
    series |= {"diversity (mean pairwise RMS distance)": [s.diversity for s in summary],
               "seconds per image": [s.seconds_per_image for s in summary]}  # fmt: skip
    plot = line_plot(list(sweep.scales), series, "guidance scale" if sweep.column == "cfg" else "classifier scale")
    contents = {
        "grid.png": _png(sheet),
        "metrics.csv": metrics_csv(sweep, cells, summary).encode(),
        "metrics.json": metrics_json(sweep, measure, cells, summary).encode(),
        "metrics.png": _png(plot),
    }
    for name in REPORTS:
        write_atomic(out_dir / name, contents[name], overwrite or bool(done))  # a resumed sweep's are made again
        yield out_dir / name, None
    if report is not None:
        report(summary_table(sweep.name, measure, summary))
