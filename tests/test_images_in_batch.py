"""Init images and masks in batch files: per line in JSONL and CSV, relative to the batch file's folder (stdin: the
working directory), the size they give checked against the model, the pixels `generate` makes, and bad files refused
with their line number before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdcli.cli import app

FAST = ["--steps", "4", "--sampler", "euler"]
SIZE = (24, 16)  # (width, height): not the tiny model's native 16x16


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def pixels(path: Path | str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A batch folder with two pictures and a mask in a subfolder: `pictures/` `warm.png`, `cool.png`, `left.png`."""
    folder = tmp_path / "job"
    (folder / "pictures").mkdir(parents=True)
    ramp = Image.linear_gradient("L").resize(SIZE)
    Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM), ramp.point(lambda v: 60))).save(
        folder / "pictures" / "warm.png"
    )
    Image.merge("RGB", (ramp.point(lambda v: 30), ramp, ramp.rotate(90))).save(folder / "pictures" / "cool.png")
    mask = Image.new("L", SIZE)
    mask.paste(255, (0, 0, 12, 16))  # repaint the left half
    mask.save(folder / "pictures" / "left.png")
    return folder


def generated(model: Path, out: Path, *args: str) -> np.ndarray:
    """The image `sdcli generate` makes with these options."""
    result = run("generate", *args, "-m", str(model), *FAST, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    return pixels(out)


def test_jsonl_lines_take_init_images_from_the_files_folder(tiny_model: Path, files: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    (files / "p.jsonl").write_text(
        '{"prompt": "a red circle", "init_image": "pictures/warm.png", "strength": 0.5, "seed": 3}\n'
        '{"prompt": "a blue square", "init_image": "pictures/cool.png"}\n'
        '{"prompt": "a cat"}\n'
    )
    monkeypatch.chdir(tmp_path)  # elsewhere: the paths are the file's, not the working directory's
    result = run("batch", "job/p.jsonl", "-m", str(tiny_model), *FAST, "--out-dir", "out", "--json")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["init_image"] for r in rows] == [str(files / "pictures" / n) for n in ("warm.png", "cool.png")] + [None]
    assert [r["strength"] for r in rows] == [0.5, 0.75, None]
    assert [(r["width"], r["height"]) for r in rows] == [SIZE, SIZE, (16, 16)]  # the init image's size
    warm = generated(tiny_model, tmp_path / "warm.png", "a red circle", "-i", str(files / "pictures" / "warm.png"),
                     "--strength", "0.5", "--seed", "3")  # fmt: skip
    cool = generated(tiny_model, tmp_path / "cool.png", "a blue square", "-i", str(files / "pictures" / "cool.png"),
                     "--seed", "0")  # fmt: skip
    assert (pixels(rows[0]["path"]) == warm).all() and (pixels(rows[1]["path"]) == cool).all()


def test_csv_cells_take_init_images_from_the_files_folder(tiny_model: Path, files: Path, tmp_path: Path):
    (files / "p.csv").write_text("prompt,init_image,strength,seed\na red circle,pictures/warm.png,0.8,5\n")
    out = tmp_path / "out"
    result = run("batch", str(files / "p.csv"), "-m", str(tiny_model), *FAST, "--out-dir", str(out))
    assert result.exit_code == 0, result.stderr
    (path,) = result.stdout.splitlines()
    alone = generated(tiny_model, tmp_path / "alone.png", "a red circle", "-i", str(files / "pictures" / "warm.png"),
                      "--strength", "0.8", "--seed", "5")  # fmt: skip
    assert pixels(path).shape == (SIZE[1], SIZE[0], 3) and (pixels(path) == alone).all()


def test_a_line_inpaints_with_a_mask_from_the_files_folder(tiny_model: Path, files: Path, tmp_path: Path):
    (files / "p.jsonl").write_text(
        '{"prompt": "a cat", "init_image": "pictures/warm.png", "mask": "pictures/left.png", "seed": 4}\n'
    )
    result = run("batch", str(files / "p.jsonl"), "-m", str(tiny_model), *FAST, "--out-dir", str(tmp_path / "out"),
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["mask"] == str(files / "pictures" / "left.png") and len(row["mask_sha256"]) == 64
    alone = generated(tiny_model, tmp_path / "alone.png", "a cat", "-i", str(files / "pictures" / "warm.png"),
                      "--mask", str(files / "pictures" / "left.png"), "--seed", "4")  # fmt: skip
    assert (pixels(row["path"]) == alone).all()


def test_stdin_lines_take_init_images_from_the_working_directory(tiny_model: Path, files: Path,
                                                                monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    monkeypatch.chdir(files / "pictures")
    line = '{"prompt": "a cat", "init_image": "warm.png", "strength": 0.5}\n'
    result = run("batch", "-", "--format", "jsonl", "-m", str(tiny_model), *FAST, "--out-dir", "out", "--json",
                 input=line)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["init_image"] == str(files / "pictures" / "warm.png")


@pytest.mark.parametrize(
    ("line", "words", "sized"),  # sized: found once the model's latent scale is known, else before it loads
    [
        ('{"prompt": "b", "init_image": "pictures/missing.png"}', ["missing.png", "does not exist"], False),
        ('{"prompt": "b", "init_image": "notes.txt"}', ["notes.txt", "not a readable image"], False),
        ('{"prompt": "b", "init_image": "pictures"}', ["is a folder"], False),
        ('{"prompt": "b", "init_image": "pictures/warm.png", "strength": 0.1}', ["--strength", "runs no step"], False),
        ('{"prompt": "b", "strength": 0.5}', ["--strength", "--init-image"], False),
        ('{"prompt": "b", "init_image": "tiny.png"}', ["tiny.png", "smaller than 2 pixels"], True),
        ('{"prompt": "b", "init_image": "pictures/warm.png", "width": 17}', ["17"], True),
        ('{"prompt": "b", "init_image": "pictures/cool.png", "mask": "gone.png"}', ["gone.png", "not exist"], True),
    ],
)
def test_a_bad_init_image_is_refused_with_its_line_number_before_any_work(
    tiny_model: Path, files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, words, sized: bool
):
    if not sized:
        monkeypatch.setattr("sdcli.workflows.batch.load_for", pytest.fail)
    (files / "notes.txt").write_text("not a picture")
    Image.new("RGB", (1, 1)).save(files / "tiny.png")
    (files / "p.jsonl").write_text(f'{{"prompt": "a"}}\n{line}\n')
    out = tmp_path / "out"
    result = run("batch", str(files / "p.jsonl"), "-m", str(tiny_model), *FAST, "--out-dir", str(out))
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "p.jsonl line 2: " in result.stderr and all(word in result.stderr for word in words), result.stderr
    assert not out.exists()  # not even line 1's image
