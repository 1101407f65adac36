"""The generate workflow: a `Request` to PNG files at paths checked before the model loads (`plan_paths`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sdcli.engine import Generated, load_for, make_images
from sdcli.output.metadata import encode_png
from sdcli.output.writes import write_atomic
from sdcli.recipe import Request
from sdcli.sampling.loop import StepCallback


def generate(
    request: Request, paths: list[Path], overwrite: bool = False, on_step: StepCallback | None = None
) -> Iterator[tuple[Path, Generated]]:
    """Make and write the request's images to `paths` (one per image, checked before: `plan_paths`); yields each
    (path, image) once it is on disk."""
    model = load_for(request)
    for path, made in zip(paths, make_images(model, request, on_step), strict=True):
        write_atomic(path, encode_png(made.image, made.record), overwrite)
        yield path, made
