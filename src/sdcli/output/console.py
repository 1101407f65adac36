"""Everything the command line writes to stderr: log lines, warnings, the one-line error, the progress bar.

stdout carries results only (paths or JSON lines); this module never writes there.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

LIBRARY_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "accelerate")


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (test runners swap it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        sys.stderr.write(f"{prefix}{record.getMessage()}\n")


_handler = _StderrHandler()


def setup_logging(verbose: bool) -> None:
    """sdcli's warnings on stderr, and its progress messages when `verbose`; the libraries' chatter and bars off."""
    logger = logging.getLogger("sdcli")
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # The libraries' tqdm bars ("Loading weights") go off through their own switches.
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def error_line(message: str) -> None:
    """The one line a failed command prints."""
    sys.stderr.write(f"error: {message}\n")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "-.-- it/s")


@contextmanager
def step_progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar over denoising steps on stderr (step, it/s, ETA), or None when not `enabled`."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("denoising"), BarColumn(), MofNCompleteColumn(), _RateColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("denoising", total=None)

        def on_step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield on_step


class _ImagesPerMinuteColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed * 60:.1f} images/min" if task.speed else "-.- images/min")


@contextmanager
def image_progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """One overall rich bar over images on stderr (done / total, images per minute, ETA); `advance(k)` counts k
    more images done. A no-op when not `enabled`."""
    if not enabled:
        yield lambda k: None
        return
    columns = (TextColumn("images"), BarColumn(), MofNCompleteColumn(), _ImagesPerMinuteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("images", total=total)
        yield lambda k: progress.advance(task, k)
