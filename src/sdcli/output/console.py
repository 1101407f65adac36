"""Everything the command line writes to stderr: log lines, warnings, the one-line error, the progress bar.

stdout carries results only (paths or JSON lines); this module never writes there. rich is imported only when a bar
is shown, so that the commands without one (`--help`, `samplers`, `info`, ...) start without it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

LIBRARY_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "accelerate")


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (test runners swap it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        sys.stderr.write(f"{prefix}{record.getMessage()}\n")


_handler = _StderrHandler()


def setup_logging(verbose: bool) -> None:
    """sdcli's warnings on stderr, and its progress messages when `verbose`; the libraries' chatter off, by logger
    name, without importing them (seconds): `sdcli.loading.components.load_model` turns their progress bars off."""
    logger = logging.getLogger("sdcli")
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def error_line(message: str) -> None:
    """The one line a failed command prints."""
    sys.stderr.write(f"error: {message}\n")


def _steps_per_second(speed: float | None) -> str:
    return f"{speed:.2f} it/s" if speed else "-.-- it/s"


def _images_per_minute(speed: float | None) -> str:
    return f"{speed * 60:.1f} images/min" if speed else "-.- images/min"


@contextmanager
def _bar(label: str, total: int | None, speed: Callable[[float | None], str]) -> Iterator[tuple[Progress, TaskID]]:
    """A transient rich bar on stderr, and its task: label, bar, done / total, `speed(items per second)`, ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class SpeedColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(speed(task.speed))

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), SpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield progress, progress.add_task(label, total=total)


@contextmanager
def step_progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar over denoising steps on stderr (step, it/s, ETA), or None when not `enabled`."""
    if not enabled:
        yield None
        return
    with _bar("denoising", None, _steps_per_second) as (progress, task):

        def on_step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield on_step


@contextmanager
def image_progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """One overall rich bar over images on stderr (done / total, images per minute, ETA); `advance(k)` counts k
    more images done. A no-op when not `enabled`."""
    if not enabled:
        yield lambda k: None
        return
    with _bar("images", total, _images_per_minute) as (progress, task):
        yield lambda k: progress.advance(task, k)
