"""The guidance sweep: one prompt at several guidance scales (columns) and seeds (rows), measured.

1. plan: the grid of cells, one `Request` per column and run of consecutive seeds (so seeds batch together)
2. make each column's images with the generate loop; the same seed gives the same initial noise in every column,
   so columns differ by guidance alone
3. measure each cell (prompt adherence) and each column of each axis value (diversity between seeds, time per
   image; with a model that has its own `World`, FID, precision, recall and coverage against the world's draw)
4. report: the cell PNGs, a labelled contact sheet, metrics.csv / metrics.json, a plot of the summary, and with a
   `World` the frontier: adherence and precision against recall, one line per axis value

Diversity and adherence are the two sides of classifier-free guidance's trade-off (Ho & Salimans 2022, Table 1,
FID and IS against w; Dhariwal & Nichol 2021, precision and recall): raising w makes images follow the prompt more
closely and differ less from seed to seed. Guidance methods as the rows (`method`) put each on that frontier.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from PIL import Image

from sdcli.engine import check_inputs, load_for, make_images
from sdcli.errors import UsageError
from sdcli.loading.lora_names import recorded_loras
from sdcli.output.files import check_paths
from sdcli.output.metadata import check_made_with, encode_png
from sdcli.output.sheets import contact_sheet, xy_plot
from sdcli.output.writes import write_atomic
from sdcli.recipe import MAX_IMAGES, MAX_SEED, Recipe, Request, lora_name, parse_lora
from sdcli.sampling.loop import StepCallback
from sdcli.sampling.samplers import NAMES as SAMPLER_NAMES
from sdcli.text.lora_tags import read_tags
from sdcli.workflows.distribution import (
    K_NEAREST,
    DistributionScores,
    World,
    distribution_scores,
    sweep_reference,
)
from sdcli.workflows.metrics import ClipScorer, Judge, diversity

MAX_VALUES = 1000  # a range that long is a typo
MAX_CELLS = MAX_IMAGES  # a sweep's images, seeds x scales x axis values: as many as one request may make
# The guidance scales a sweep's columns can be: Recipe field -> its name in options, files, labels and metrics.
COLUMNS = {"cfg": "cfg", "classifier_scale": "classifier-scale"}
METHOD = "method"  # the axis of guidance methods, each its settings over the base recipe (`method_settings`)
METHODS = ("cfg", "apg", "cfgpp", "pag")
LORA_WEIGHT = "lora_weight"  # the axis of the first --lora's weights (`lora_weight_settings`)
DEFAULT_PAG_SCALE = 3.0  # a pag row's S without --pag-scale: diffusers' StableDiffusionPAGPipeline's default


def method_settings(method: str, base: Recipe) -> dict:
    """The settings a guidance method sets over the sweep's base recipe, its scale being the column's: cfg plain;
    apg, adaptive projected guidance (Sadat et al. 2024) in CFG's place; cfgpp, the base sampler's CFG++ step
    (Chung et al. 2024; its scale is lambda in [0, 1]); pag, CFG plus perturbed-attention guidance (Ahn et al.
    2024) at the base's --pag-scale, else diffusers' default. Each sets all of these, so the rows differ by method
    alone."""
    plain = {"apg": False, "pag_scale": None, "sampler": base.sampler}
    if method == "apg":
        return {**plain, "apg": True}
    if method == "pag":
        return {**plain, "pag_scale": base.pag_scale or DEFAULT_PAG_SCALE}
    if method == "cfgpp":
        cfg_pp = f"{base.sampler}-cfgpp"
        if cfg_pp not in SAMPLER_NAMES:
            bases = " or ".join(name.removesuffix("-cfgpp") for name in SAMPLER_NAMES if name.endswith("-cfgpp"))
            raise UsageError(f"--method cfgpp runs the sampler's CFG++ step, which --sampler {base.sampler} has not; "
                             f"give --sampler {bases}")  # fmt: skip
        return {**plain, "sampler": cfg_pp}
    return plain


def lora_weight_settings(weight: float, base: Recipe) -> dict:
    """The settings of a LoRA weight over the sweep's base recipe: its first --lora at that weight (the files load
    once; each row sets its weight)."""
    if not base.loras:
        raise UsageError("--lora-weights sweeps the weight of the first --lora; add --lora PATH (or NAME)")
    reference = parse_lora(base.loras[0])[0]
    if lora_name(reference) in dict(read_tags(base.prompt).loras):
        raise UsageError(f"the prompt's <lora:{lora_name(reference)}> tag sets the weight --lora-weights sweeps; "
                         "leave the tag out of the prompt")  # fmt: skip
    return {"loras": (f"{reference}:{weight!r}", *base.loras[1:])}


# The axes whose values are settings of their own over the base recipe; any other axis is a Recipe field.
ROW_SETTINGS: dict[str, Callable[[object, Recipe], dict]] = {METHOD: method_settings, LORA_WEIGHT: lora_weight_settings}


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
    axis: str | None = None  # a Recipe field swept as rows beside the seeds ("sampler"), one of ROW_SETTINGS, or none
    axis_values: tuple = ()
    column: str = "cfg"  # the guidance scale the columns sweep: one of COLUMNS
    # axis values whose columns have scales of their own (cfgpp's lambdas), as (value, scales) with one per column
    row_scales: tuple[tuple[object, tuple[float, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not self.scales:
            raise UsageError(f"--{self.name} gives no guidance scales; for example --{self.name} 1,3,5,7.5")
        cells = len(self.scales) * len(self.seeds) * len(self.values)
        if cells > MAX_CELLS:
            raise UsageError(f"the sweep has {cells:,} cells (scales x seeds x values), over the limit of "
                             f"{MAX_CELLS:,}; give fewer scales, seeds or values")  # fmt: skip
        unknown = [value for value in self.axis_values if value not in METHODS] if self.axis == METHOD else []
        if unknown:
            raise UsageError(f"--method {unknown[0]!r} is not a guidance method; use some of {', '.join(METHODS)}")
        for value, scales in self.row_scales:
            if len(scales) != len(self.scales):
                raise UsageError(f"--{value}-scales gives {len(scales)} scales for the {len(self.scales)} columns of "
                                 f"--{self.name}; give one per column")  # fmt: skip
        for value in self.values:  # every cell must make a valid request
            for scale in self.scales_of(value):
                self.base.with_recipe(**{self.column: scale, **self.row_settings(value)})

    @property
    def values(self) -> tuple:
        """The axis values, (None,) without an axis."""
        return self.axis_values if self.axis is not None else (None,)

    def row_settings(self, value: object) -> dict:
        """The settings an axis value sets: its field's, or a guidance method's or LoRA weight's; none without an
        axis."""
        if self.axis is None:
            return {}
        return ROW_SETTINGS[self.axis](value, self.base.recipe) if self.axis in ROW_SETTINGS else {self.axis: value}

    def scales_of(self, value: object) -> tuple[float, ...]:
        """The column scales of an axis value's rows: its own (cfgpp's lambdas), else the sweep's."""
        return dict(self.row_scales).get(value, self.scales)

    def column_label(self, column: int) -> str:
        """`cfg 3`, with the scales of the rows that have their own: `cfg 3, cfgpp 0.4`."""
        own = "".join(f", {value} {scales[column]:g}" for value, scales in self.row_scales)
        return f"{self.name} {self.scales[column]:g}{own}"

    @property
    def name(self) -> str:
        """The column setting as named in options, files, labels and metrics."""
        return COLUMNS[self.column]

    @property
    def rows(self) -> list[tuple[object, int]]:
        """(axis value, seed) per row, axis value None when there is no second axis."""
        return [(value, seed) for value in self.values for seed in self.seeds]

    @property
    def cells(self) -> list[tuple[float, object, int, int]]:
        """(scale, axis value, seed, row) of every cell, in the order they are made: column by column."""
        return [(self.scales_of(value)[column], value, seed, row) for column in range(len(self.scales))
                for row, (value, seed) in enumerate(self.rows)]  # fmt: skip

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
        settings = {self.column: scale, **self.row_settings(value)}
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
    """One guidance scale's measurements over its cells (those of one axis value)."""

    scale: float
    axis_value: object  # None without an axis
    images: int
    adherence: float | None  # the mean over cells (judge: the fraction judged right)
    diversity: float | None  # mean pairwise distance between seeds; None for 1 seed
    fid: float | None  # against the model's world (`World`; None without one): sdcli.workflows.distribution
    precision: float | None
    recall: float | None
    coverage: float | None
    seconds_per_image: float | None  # over the cells made by this run; None when it made none


NOT_MEASURED = DistributionScores(fid=None, precision=None, recall=None, coverage=None)
DISTRIBUTION = tuple(f.name for f in fields(DistributionScores))  # their names in Summary and the metrics
# the images of one scale (and axis value) -> their distribution scores
DistributionMeasure = Callable[[list[Image.Image]], DistributionScores]


# (images, prompt) -> one adherence value per image
Scorer = Callable[[list[Image.Image], str], list[float]]


def named_text(recipe: Recipe) -> str:
    """What the images are asked to show, as text: the prompt, then the labels classifier guidance steers to."""
    targets = [label for _, _, label in (item.partition("=") for item in (recipe.classifier or "").split(","))]
    return " ".join([read_tags(recipe.prompt).text, *targets])


def make_scorer(judge: Judge | None, recipe: Recipe) -> tuple[str | None, Scorer | None]:
    """Without --clip-model, adherence is measured by the model's own judge (the built-in shapes model has one),
    on the attributes the prompt names, then those classifier guidance targets (none named: not measured).
    Returns (name of the measure, scorer)."""
    if judge is None:
        return None, None
    attributes = judge.named_attributes(named_text(recipe))
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
    for column in range(len(sweep.scales)):
        for value in sweep.values:
            scale = sweep.scales_of(value)[column]
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
        recipe = sweep.cell_recipe(*cells[path])
        check_made_with(path, recipe, recorded_loras(recipe))
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


def distribution_measure(world: World | None, sweep: Sweep) -> DistributionMeasure | None:
    """The distribution scores of a set of images against the world's draw for what they are asked to show (drawn
    and measured once here); None without a world."""
    if world is None:
        return None
    text = named_text(sweep.base.recipe)
    reference = sweep_reference(world, text, len(sweep.seeds))
    return lambda images: distribution_scores(world, reference, images, text)


def summarize(
    sweep: Sweep, cells: list[CellResult], images: dict[Path, Image.Image], measure: DistributionMeasure | None = None
) -> list[Summary]:
    """Per axis value and guidance scale: mean adherence, diversity between seeds, the distribution scores, time."""
    summaries = []
    for value in sweep.values:
        for scale in sweep.scales_of(value):
            group = [c for c in cells if c.axis_value == value and c.scale == scale]
            pictures = [images[c.path] for c in group]
            scores = measure(pictures) if measure else NOT_MEASURED
            summaries.append(
                Summary(
                    scale=scale,
                    axis_value=value,
                    images=len(group),
                    adherence=_mean([c.adherence for c in group if c.adherence is not None]),
                    diversity=diversity(pictures) if len(pictures) > 1 else None,
                    **asdict(scores),
                    seconds_per_image=_mean([c.seconds for c in group if c.seconds is not None]),
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
    scale, value = row.pop("scale"), row.pop("axis_value")
    return {sweep.column: scale, **({sweep.axis: value} if sweep.axis else {}), **row}


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
    """One row per cell (kind `cell`), then one per guidance scale and axis value (kind `summary`)."""
    axis = [sweep.axis] if sweep.axis else []
    columns = ["kind", sweep.column, *axis, "seed", "path", "adherence", "diversity", *DISTRIBUTION, "seconds",
               "images"]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        writer.writerow({"kind": "cell", **_cell_row(sweep, cell)})
    for s in summary:
        row = _summary_row(sweep, s)
        seconds = _round(row.pop("seconds_per_image"), 4)
        writer.writerow({"kind": "summary", **row, "seconds": seconds})
    return buffer.getvalue()


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(sweep: Sweep, measure: str | None, summary: list[Summary]) -> str:
    """The summary as a plain text table (for stderr): a row per axis value and scale; the distribution scores'
    columns where they were measured."""
    axis = sweep.axis.replace("_", "-") if sweep.axis else None
    measured = any(s.fid is not None for s in summary)
    scores = DISTRIBUTION if measured else ()
    header = [*([axis] if axis else []), sweep.name, "images", "adherence", "diversity", *scores, "s/image"]
    rows = []
    for s in summary:
        values = [_fmt(getattr(s, name), 2 if name == "fid" else 3) for name in scores]
        rows.append([*([_text(s.axis_value)] if axis else []), f"{s.scale:g}", str(s.images), _fmt(s.adherence, 3),
                     _fmt(s.diversity, 4), *values, _fmt(s.seconds_per_image, 3)])  # fmt: skip
    widths = [max(len(text) for text in column) for column in zip(header, *rows)]
    lines = ["  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in [header, *rows]]
    lines.append(f"adherence: {measure or 'not measured (give --clip-model, or use the shapes model)'}")
    if measured:
        lines.append(f"fid, precision, recall (k={K_NEAREST}), coverage: against the model's world, over "
                     f"{len(sweep.seeds)} seeds a scale (FID means little under about 24)")  # fmt: skip
    return "\n".join(lines)


def _lines(sweep: Sweep, summary: list[Summary], y: str, x: str = "scale") -> dict[str, list[tuple]]:
    """One line per axis value (named by it; "" without an axis): the summary's (x, y) fields over its scales."""
    return {_text(value) if sweep.axis else "": [(getattr(s, x), getattr(s, y)) for s in summary
            if s.axis_value == value] for value in sweep.values}  # fmt: skip


TITLES = {
    "fid": "FID against the model's world",
    "precision": f"precision (k={K_NEAREST})",
    "recall": f"recall (k={K_NEAREST})",
    "coverage": "coverage (1 - mean TV of what the prompt leaves free)",
}


def plots(sweep: Sweep, measure: str | None, summary: list[Summary]) -> dict[str, Image.Image]:
    """metrics.png, the summary against the scale; with the distribution scores frontier.png, adherence and
    precision against recall (the trade-off of Dhariwal & Nichol 2021, Table 4): one line per axis value in both."""
    adherence = f"adherence ({measure})"
    panels = {adherence: _lines(sweep, summary, "adherence")} if measure else {}
    panels["diversity (mean pairwise RMS distance)"] = _lines(sweep, summary, "diversity")
    measured = any(s.fid is not None for s in summary)
    panels |= {TITLES[name]: _lines(sweep, summary, name) for name in DISTRIBUTION if measured}
    panels["seconds per image"] = _lines(sweep, summary, "seconds_per_image")
    scale = "guidance scale" if sweep.column == "cfg" else "classifier scale"
    pictures = {"metrics.png": xy_plot(panels, scale, sweep.scales)}
    if measured:
        frontier = {f"{adherence} against recall": _lines(sweep, summary, "adherence", "recall")} if measure else {}
        frontier[f"{TITLES['precision']} against recall"] = _lines(sweep, summary, "precision", "recall")
        pictures["frontier.png"] = xy_plot(frontier, TITLES["recall"])
    return pictures


REPORTS = ("grid.png", "metrics.csv", "metrics.json", "metrics.png", "frontier.png")  # frontier: with a World


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
    world: World | None = None,
) -> Iterator[tuple[Path, dict | None]]:
    """Make, measure and write the sweep; yields (path, its JSON object) per cell image as it lands, then
    (path, None) per report file. A rerun resumes: cells already made with the same settings are kept (unless
    `overwrite`), and the reports are made again from every cell. `report(text)` receives the number of cells kept
    and the summary table. With the model's `world`, each scale's images are also measured against it."""
    # 1. Check inputs and outputs before the model loads.
    for value in sweep.values:  # each row's init image and strength
        check_inputs(sweep.cell_recipe(sweep.scales_of(value)[0], value, sweep.seeds[0]))
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
    # 4. The contact sheet, the metrics and their plots, from every cell on disk (in column order).
    cells, images = all_cells(sweep, out_dir, made_now, scorer)
    summary = summarize(sweep, cells, images, distribution_measure(world, sweep))
    grid = [[images[c.path] for c in cells if c.row == r] for r in range(len(sweep.rows))]
    columns = [sweep.column_label(i) for i in range(len(sweep.scales))]
    sheet = contact_sheet(grid, columns, [sweep.row_label(*row) for row in sweep.rows])
    contents = {
        "grid.png": _png(sheet),
        "metrics.csv": metrics_csv(sweep, cells, summary).encode(),
        "metrics.json": metrics_json(sweep, measure, cells, summary).encode(),
        **{name: _png(picture) for name, picture in plots(sweep, measure, summary).items()},
    }
    for name in (name for name in REPORTS if name in contents):
        write_atomic(out_dir / name, contents[name], overwrite or bool(done))  # a resumed sweep's are made again
        yield out_dir / name, None
    if report is not None:
        report(summary_table(sweep, measure, summary))
