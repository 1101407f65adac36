"""stderr reporting: the progress bar never writes to stdout."""

from __future__ import annotations

import logging

import pytest

from sdcli.output.console import setup_logging, step_progress


def test_progress_is_off_unless_enabled():
    with step_progress(False) as on_step:
        assert on_step is None


def test_progress_writes_to_stderr_only(capsys: pytest.CaptureFixture):
    with step_progress(True) as on_step:
        assert on_step is not None
        for done in range(1, 5):
            on_step(done, 4)
    assert capsys.readouterr().out == ""


def test_warnings_always_show_and_messages_only_when_verbose(capsys: pytest.CaptureFixture):
    log = logging.getLogger("sdcli.test")
    setup_logging(verbose=False)
    log.info("a message")
    log.warning("a warning")
    assert capsys.readouterr().err == "warning: a warning\n"
    setup_logging(verbose=True)
    log.info("a message")
    assert capsys.readouterr().err == "a message\n"
