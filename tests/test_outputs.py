"""File names and atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tiny_sd import make_request

from sdcli.errors import Failure, UsageError
from sdcli.output import writes as outputs
from sdcli.output.files import Output, image_name, plan_paths
from sdcli.output.writes import write_atomic


def test_names_come_from_seed_and_prompt():
    assert image_name("A Red circle, on white!", 42) == "42-a-red-circle-on-white.png"
    assert image_name("", 7) == "7.png"
    assert image_name("x" * 100, 1) == f"1-{'x' * 60}.png"


def test_paths_for_several_images(tmp_path: Path):
    request = make_request("a cat", seed=5, num_images=3)
    assert plan_paths(request, Output(out_dir=tmp_path)) == [tmp_path / f"{s}-a-cat.png" for s in (5, 6, 7)]
    assert not any(tmp_path.iterdir())  # planning writes nothing


def test_an_output_that_is_a_folder_is_refused(tmp_path: Path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        plan_paths(make_request("a cat", seed=1), Output(file=tmp_path / "dir.png"))


def test_write_atomic_creates_folders_and_respects_the_umask(tmp_path: Path):
    target = tmp_path / "a" / "b" / "image.png"
    old = os.umask(0o027)
    try:
        write_atomic(target, b"data", overwrite=False)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"data"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(target.parent) == ["image.png"]


def test_write_atomic_never_clobbers_without_overwrite(tmp_path: Path):
    target = tmp_path / "image.png"
    target.write_bytes(b"old")
    with pytest.raises(UsageError):
        write_atomic(target, b"new", overwrite=False)
    write_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_an_interrupted_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interruption):
    def fail(*_):
        raise interruption("disk full" if interruption is OSError else "")

    monkeypatch.setattr(outputs.os, "replace", fail)
    with pytest.raises(Failure if interruption is OSError else KeyboardInterrupt):
        write_atomic(tmp_path / "image.png", b"data", overwrite=False)
    assert list(tmp_path.iterdir()) == []
