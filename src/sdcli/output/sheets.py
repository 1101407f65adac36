"""Pictures of a run, drawn with Pillow alone: a labelled contact sheet of images, and simple line plots.

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


def _tick(value: float) -> str:
    return f"{value:.3g}"


def line_plot(xs: Sequence[float], series: dict[str, Sequence[float | None]], x_label: str) -> Image.Image:
    """One panel per series, stacked: y against x as a line with dots (None values are left out), the series'
    name as the panel's title, its min and max on the y axis, every x value on the x axis."""
    left, top, right, bottom = MARGIN
    panel_width, panel_height = PANEL
    height_each = top + panel_height + bottom
    plot = Image.new("RGB", (left + panel_width + right, max(1, len(series)) * height_each), BACKGROUND)
    draw = ImageDraw.Draw(plot)
    x_low, x_high = min(xs), max(xs)
    x_span = (x_high - x_low) or 1.0

    def px(x: float) -> float:
        return left + (x - x_low) / x_span * panel_width

    for i, (name, ys) in enumerate(series.items()):
        y0 = i * height_each + top  # top of this panel's plot area
        draw.text((left, y0 - top + 6), name, fill=INK, font=_font())
        draw.line([(left, y0), (left, y0 + panel_height), (left + panel_width, y0 + panel_height)], fill=INK)
        for x in xs:
            draw.line([(px(x), y0 + panel_height), (px(x), y0 + panel_height + 4)], fill=INK)
            label = _tick(x)
            draw.text((px(x) - _text_size(label)[0] / 2, y0 + panel_height + 6), label, fill=INK, font=_font())
        draw.text((left + panel_width - _text_size(x_label)[0], y0 + panel_height + 18), x_label, fill=INK,
                  font=_font())  # fmt: skip
        known = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
        if not known:
            continue
        y_low, y_high = min(y for _, y in known), max(y for _, y in known)
        y_span = (y_high - y_low) or 1.0

        def py(y: float, y0: int = y0, y_low: float = y_low, y_span: float = y_span) -> float:
            return y0 + panel_height - (y - y_low) / y_span * (panel_height - 10) - 5

        for value in {y_low, y_high}:
            label = _tick(value)
            draw.text((left - 6 - _text_size(label)[0], py(value) - 5), label, fill=INK, font=_font())
        points = [(px(x), py(y)) for x, y in known]
        if len(points) > 1:
            draw.line(points, fill=LINE, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=LINE)
    return plot
