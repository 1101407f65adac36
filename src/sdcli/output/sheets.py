"""Pictures of a run, drawn with Pillow alone: a labelled contact sheet of images, and simple line plots (y
against x, one line or several per panel).

Pure functions: images and numbers in, a new `PIL.Image` out; nothing is written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
LINE = (31, 119, 180)
GAP = 2  # pixels between cells
PAD = 4  # pixels around labels
MIN_CELL = 96  # smaller images are enlarged (nearest neighbour, by a whole factor) so that labels fit


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=_font())
    return right - left, bottom - top


@dataclass(frozen=True)
class SheetLayout:
    """Where everything sits on a contact sheet of `rows` x `columns` cells of `cell` (width, height) pixels."""

    rows: int
    columns: int
    cell: tuple[int, int]  # (width, height) of a cell after enlarging
    scale: int  # the whole factor the images were enlarged by
    left: int  # width of the row-label strip
    top: int  # height of the column-label strip

    def origin(self, row: int, column: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of cell (row, column)."""
        width, height = self.cell
        return self.left + column * (width + GAP), self.top + row * (height + GAP)

    @property
    def size(self) -> tuple[int, int]:
        width, height = self.cell
        return (
            self.left + self.columns * (width + GAP) - GAP + PAD,
            self.top + self.rows * (height + GAP) - GAP + PAD,
        )


def sheet_layout(image_size: tuple[int, int], column_labels: Sequence[str], row_labels: Sequence[str]) -> SheetLayout:
    """The layout for images of `image_size` (width, height) under `column_labels` and beside `row_labels`."""
    width, height = image_size
    scale = max(1, math.ceil(MIN_CELL / max(width, height)))
    label_width = max((_text_size(label)[0] for label in column_labels), default=0)
    text_height = max((_text_size(label)[1] for label in [*column_labels, *row_labels]), default=0)
    row_label_width = max((_text_size(label)[0] for label in row_labels), default=0)
    cell_width = max(width * scale, label_width + 2 * PAD)
    return SheetLayout(
        rows=len(row_labels),
        columns=len(column_labels),
        cell=(cell_width, height * scale),
        scale=scale,
        left=row_label_width + 2 * PAD,
        top=text_height + 2 * PAD,
    )


def contact_sheet(
    cells: Sequence[Sequence[Image.Image]], column_labels: Sequence[str], row_labels: Sequence[str]
) -> Image.Image:
    """A grid of `cells[row][column]` (all one size) with each column's label above it and each row's beside it.
    Each image is centred in its cell."""
    if len(cells) != len(row_labels) or any(len(row) != len(column_labels) for row in cells):
        raise ValueError("contact_sheet: one label per row and per column")
    layout = sheet_layout(cells[0][0].size, column_labels, row_labels)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    cell_width, cell_height = layout.cell
    for c, label in enumerate(column_labels):
        x, _ = layout.origin(0, c)
        text_width, _ = _text_size(label)
        draw.text((x + (cell_width - text_width) // 2, PAD), label, fill=INK, font=_font())
    for r, label in enumerate(row_labels):
        _, y = layout.origin(r, 0)
        _, text_height = _text_size(label)
        draw.text((PAD, y + (cell_height - text_height) // 2), label, fill=INK, font=_font())
        for c, image in enumerate(cells[r]):
            x, y = layout.origin(r, c)
            big = image.convert("RGB").resize(
                (image.width * layout.scale, image.height * layout.scale), Image.Resampling.NEAREST
            )
            sheet.paste(big, (x + (cell_width - big.width) // 2, y))
    return sheet


PANEL = (360, 150)  # plot area of one panel, pixels
MARGIN = (56, 26, 16, 30)  # left, top, right, bottom around a panel's plot area
PALETTE = (LINE, (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))  # one per line
LEGEND_LINE = 12  # pixels between the names of a panel's lines

Points = Sequence[tuple[float, float | None]]  # (x, y) of one line, in drawing order


def _tick(value: float) -> str:
    return f"{value:.3g}"


def line_plot(xs: Sequence[float], series: dict[str, Sequence[float | None]], x_label: str) -> Image.Image:
    """One panel per series, stacked: y against x as a line with dots (None values are left out), the series'
    name as the panel's title, its min and max on the y axis, every x value on the x axis."""
    return xy_plot({name: {name: list(zip(xs, ys, strict=True))} for name, ys in series.items()}, x_label, xs)


def xy_plot(panels: dict[str, dict[str, Points]], x_label: str, x_ticks: Sequence[float] = ()) -> Image.Image:
    """One panel per entry, stacked, all on one x range: each of its lines as (x, y) points joined in order, with
    dots (None values are left out), each line in its colour and named at the panel's right when it has several;
    the panel's name as its title, its y min and max on the y axis, `x_ticks` (default: the x range's ends) on the x
    axis."""
    left, top, right, bottom = MARGIN
    panel_width, panel_height = PANEL
    names = [name for lines in panels.values() if len(lines) > 1 for name in lines]
    legend = max((_text_size(name)[0] + 2 * PAD for name in names), default=0)
    height_each = top + panel_height + bottom
    plot = Image.new("RGB", (left + panel_width + right + legend, max(1, len(panels)) * height_each), BACKGROUND)
    draw = ImageDraw.Draw(plot)
    all_x = [x for lines in panels.values() for points in lines.values() for x, _ in points] + list(x_ticks)
    x_low, x_high = min(all_x, default=0.0), max(all_x, default=1.0)
    x_span = (x_high - x_low) or 1.0
    ticks = list(x_ticks) or sorted({x_low, x_high})

    def px(x: float) -> float:
        return left + (x - x_low) / x_span * panel_width

    for i, (title, lines) in enumerate(panels.items()):
        y0 = i * height_each + top  # top of this panel's plot area
        draw.text((left, y0 - top + 6), title, fill=INK, font=_font())
        draw.line([(left, y0), (left, y0 + panel_height), (left + panel_width, y0 + panel_height)], fill=INK)
        for x in ticks:
            draw.line([(px(x), y0 + panel_height), (px(x), y0 + panel_height + 4)], fill=INK)
            label = _tick(x)
            draw.text((px(x) - _text_size(label)[0] / 2, y0 + panel_height + 6), label, fill=INK, font=_font())
        draw.text((left + panel_width - _text_size(x_label)[0], y0 + panel_height + 18), x_label, fill=INK,
                  font=_font())  # fmt: skip
        known = {name: [(x, y) for x, y in points if y is not None and math.isfinite(y)]
                 for name, points in lines.items()}  # fmt: skip
        ys = [y for points in known.values() for _, y in points]
        if not ys:
            continue
        y_low, y_high = min(ys), max(ys)
        y_span = (y_high - y_low) or 1.0

        def py(y: float, y0: int = y0, y_low: float = y_low, y_span: float = y_span) -> float:
            return y0 + panel_height - (y - y_low) / y_span * (panel_height - 10) - 5

        for value in {y_low, y_high}:
            label = _tick(value)
            draw.text((left - 6 - _text_size(label)[0], py(value) - 5), label, fill=INK, font=_font())
        for j, (name, points) in enumerate(known.items()):
            colour = PALETTE[j % len(PALETTE)]
            if len(lines) > 1:
                draw.text((left + panel_width + right + PAD, y0 + j * LEGEND_LINE), name, fill=colour, font=_font())
            xy = [(px(x), py(y)) for x, y in points]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    return plot
