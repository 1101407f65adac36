"""Hostile input: two runs in one folder, other people's files in it, names the file system refuses, paths that
break lines, overflowing ranges, planted checkpoints, PNG text bombs. Each is refused before any work with one
line naming the problem and the fix, or handled without touching what is not sdcli's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_bad_input import refused
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.errors import Failure, UsageError
from sdcli.loading.components import Model
from sdcli.output.files import NAME_MAX, TEMP_EXTRA
from sdcli.output.images import decode
from sdcli.output.metadata import read_chunks
from sdcli.output.writes import BATCH_LOCK
from sdcli.recipe import MAX_SEED
from sdcli.shapes.train_classifier import train_classifier
from sdcli.workflows import batch as batch_workflow
from sdcli.workflows import sweep as sweep_workflow
from sdcli.workflows.sweep import parse_numbers, parse_seeds

FAST = ["--steps", "2", "--sampler", "euler"]


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def prompts(folder: Path, text: str, name: str = "p.txt") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# 1. One batch per folder.


def test_a_second_batch_in_the_same_folder_is_refused_naming_the_first(tiny_model: Path, tmp_path: Path):
    """Two batches of one file into one folder (--cfg 3 and --cfg 9) would mix their images: the second fails
    naming the process that holds the folder, and makes nothing; the lock goes with the first."""
    file = prompts(tmp_path, "a red circle\n")
    out = tmp_path / "out"
    args = ["batch", str(file), "-m", str(tiny_model), *FAST, "-n", "200", "--out-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "sdcli", *args, "--cfg", "3"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*.png")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        second = run(*args, "--cfg", "9")
        refused(second, 1, f"process {first.pid} on ", "in use by another sdcli batch", "--out-dir")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert not (out / BATCH_LOCK).exists()  # removed on the way out
    assert {row["cfg"] for row in manifest(out)} == {3}


def test_a_lock_file_left_by_a_dead_batch_does_not_stop_the_next(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / BATCH_LOCK).write_text("process 999999 on a-crashed-host")  # no process holds it any more
    result = run("batch", str(prompts(tmp_path, "a cat\n")), "-m", str(tiny_model), *FAST, "--out-dir", str(out))
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["00001-000-0-a-cat.png", "manifest.jsonl"]


def test_an_image_that_appears_during_the_batch_is_not_replaced(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    out = tmp_path / "out"
    theirs = out / "00002-000-0-a-dog.png"
    encode = batch_workflow.encode_png

    def encode_then_plant(*args, **kwargs):  # someone writes the second image while the first is being made
        if not theirs.exists():
            theirs.parent.mkdir(parents=True, exist_ok=True)
            theirs.write_bytes(b"theirs")
        return encode(*args, **kwargs)

    monkeypatch.setattr(batch_workflow, "encode_png", encode_then_plant)
    result = run("batch", str(prompts(tmp_path, "a cat\na dog\n")), "-m", str(tiny_model), *FAST,
                 "--out-dir", str(out))  # fmt: skip
    assert result.exit_code == 2 and "00002-000-0-a-dog.png already exists" in result.stderr
    assert theirs.read_bytes() == b"theirs"


# 2. Only the batch's own temporary files are removed.


def test_a_batch_removes_only_its_own_temporary_files(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    ours = [".00001-000-0-a-cat.png.k2j4_x9a.part", ".manifest.jsonl.abcd1234.part"]
    theirs = [".notes.txt.abcd1234.part", ".download.part", ".00001-000-0-a-dog.png.abcd1234.part"]
    for name in ours + theirs:
        (out / name).write_bytes(b"x")
    result = run("batch", str(prompts(tmp_path, "a cat\n")), "-m", str(tiny_model), *FAST, "--out-dir", str(out))
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.glob(".*.part")) == sorted(theirs)


# 3. A manifest.jsonl that is not sdcli's is refused, not rewritten.


@pytest.mark.parametrize(
    "content",
    ['{"path": "a.png", "label": 3}\n', "a shopping list\n", '["00001-000-0-a-cat.png"]\n', b"\xff\xfe\n"],
    ids=["no-prompt", "text", "json-list", "binary"],
)
def test_a_manifest_that_is_not_sdclis_is_refused(tiny_model: Path, tmp_path: Path, content: str | bytes):
    out = tmp_path / "out"
    out.mkdir()
    data = content if isinstance(content, bytes) else content.encode()
    (out / "manifest.jsonl").write_bytes(data)
    result = run("batch", str(prompts(tmp_path, "a cat\n")), "-m", str(tiny_model), *FAST, "--out-dir", str(out))
    refused(result, 2, "manifest.jsonl is not sdcli's manifest", "move it away")
    assert (out / "manifest.jsonl").read_bytes() == data
    assert not list(out.glob("*.png"))


def test_a_manifest_line_cut_short_by_a_crash_is_dropped(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "out"
    file = prompts(tmp_path, "a cat\n")
    assert run("batch", str(file), "-m", str(tiny_model), *FAST, "--out-dir", str(out)).exit_code == 0
    with (out / "manifest.jsonl").open("a") as handle:
        handle.write('{"path": "00002-000-0-a-d')  # no newline: the write of a killed process
    result = run("batch", str(file), "-m", str(tiny_model), *FAST, "--out-dir", str(out))
    assert result.exit_code == 0, result.stderr
    assert [row["path"] for row in manifest(out)] == ["00001-000-0-a-cat.png"]


# 4. Manifest paths are relative to the output folder.


def test_a_rerun_from_another_directory_keeps_every_manifest_row(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Rows of two batches into one folder, written as older sdcli did (paths relative to the directory it ran
    in): a rerun of one batch from elsewhere keeps the other's rows, and writes paths relative to the folder."""
    monkeypatch.chdir(tmp_path)
    cats, dogs = prompts(tmp_path, "a cat\n", "cats.txt"), prompts(tmp_path, "a dog\n", "dogs.txt")
    for file in (cats, dogs):
        result = run("batch", str(file), "-m", str(tiny_model), *FAST, "--out-dir", "out", "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["path"].startswith("out/")  # stdout keeps the path as given
    rows = manifest(tmp_path / "out")
    assert [row["path"] for row in rows] == ["00001-000-0-a-dog.png", "00001-000-0-a-cat.png"]
    old_style = "".join(json.dumps({**row, "path": f"out/{row['path']}"}) + "\n" for row in rows)
    (tmp_path / "out" / "manifest.jsonl").write_text(old_style)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = run("batch", str(dogs), "-m", str(tiny_model), *FAST, "--out-dir", "../out")
    assert result.exit_code == 0 and "skipped 1 of 1" in result.stderr, result.stderr
    assert manifest(tmp_path / "out") == rows  # the same rows, seconds and all, relative to the folder


# 7. File names fit the file system, in bytes.


def test_a_prompt_of_four_byte_letters_makes_names_the_file_system_takes(tiny_model: Path, tmp_path: Path):
    prompt = "\U0001d49c" * 80  # MATHEMATICAL SCRIPT CAPITAL A, 4 bytes in UTF-8, a letter to the slug
    result = run("generate", prompt, "-m", str(tiny_model), *FAST, "--out-dir", str(tmp_path / "g"))
    assert result.exit_code == 0, result.stderr
    batch = run("batch", "-", "-m", str(tiny_model), *FAST, "--seed", str(2**64 - 1), "--out-dir",
                str(tmp_path / "b"), input=prompt + "\n")  # fmt: skip
    assert batch.exit_code == 0, batch.stderr
    for line in result.stdout.splitlines() + batch.stdout.splitlines():
        name = Path(line).name
        assert "\U0001d49c" in name and len(name.encode()) <= NAME_MAX - TEMP_EXTRA


def test_an_output_name_too_long_for_the_file_system_is_refused_before_any_work(tiny_model: Path, tmp_path: Path):
    long_name = "a" * (NAME_MAX - TEMP_EXTRA) + ".png"
    refused(run("generate", "a cat", "-m", str(tiny_model), "-o", str(tmp_path / long_name)), 2, "bytes", "shorter")
    refused(run("generate", "a cat", "-m", "nowhere", "--out-dir", str(tmp_path / ("d" * 300))), 2, "300 bytes")
    assert list(tmp_path.iterdir()) == []


# 8. Control characters in output paths.


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "a cat", "--out-dir", "out\nx"],
        ["generate", "a cat", "-o", "a\tb.png"],
        ["generate", "a cat", "-o", "x\n.jpg"],
        ["batch", "-", "--out-dir", "out\u2028x"],
        ["sweep-guidance", "a cat", "--out-dir", "out\x1b[2Jx"],
    ],
    ids=["generate-newline", "output-tab", "output-before-suffix", "batch-line-separator", "sweep-escape"],
)
def test_control_characters_in_output_paths_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args):
    monkeypatch.chdir(tmp_path)
    refused(run(*args, "-m", "nowhere", input="a cat\n"), 2, "control character")
    assert list(tmp_path.iterdir()) == []


# 5. A sweep writes each cell as it is made, and a rerun resumes.


def test_an_interrupted_sweep_keeps_its_cells_and_a_rerun_resumes(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Ctrl-C while the third image of the first column is being made: the two made land; the rerun keeps them,
    makes the other four and writes the reports from all six, the files of an uninterrupted sweep."""
    args = [
        "sweep-guidance",
        "a red circle",
        "-m",
        str(tiny_model),
        *FAST,
        "--cfg",
        "1,4",
        "--seeds",
        "3",
        "--seed",
        "0",
    ]
    out = tmp_path / "s"
    make_images = sweep_workflow.make_images

    def interrupted_at_the_third(*args, **kwargs):
        for number, made in enumerate(make_images(*args, **kwargs), start=1):
            if number == 3:
                raise KeyboardInterrupt
            yield made

    with monkeypatch.context() as patch:
        patch.setattr(sweep_workflow, "make_images", interrupted_at_the_third)
        stopped = run(*args, "--out-dir", str(out))
    assert stopped.exit_code == 130, stopped.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cfg1-seed0.png", "cfg1-seed1.png"]
    resumed = run(*args, "--out-dir", str(out))
    assert resumed.exit_code == 0, resumed.stderr
    assert "kept 2 of 6 cells" in resumed.stderr
    assert [Path(p).name for p in resumed.stdout.splitlines()] == [
        "cfg1-seed2.png", "cfg4-seed0.png", "cfg4-seed1.png", "cfg4-seed2.png",
        "grid.png", "metrics.csv", "metrics.json", "metrics.png",
    ]  # fmt: skip
    whole = run(*args, "--out-dir", str(tmp_path / "whole"))
    assert whole.exit_code == 0, whole.stderr
    for name in ["grid.png", *(f"cfg{c}-seed{s}.png" for c in (1, 4) for s in range(3))]:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    metrics, fresh = (json.loads((folder / "metrics.json").read_text()) for folder in (out, tmp_path / "whole"))
    assert [c["seconds"] is None for c in metrics["cells"]] == [True, True, False, False, False, False]
    assert [s["diversity"] for s in metrics["summary"]] == [s["diversity"] for s in fresh["summary"]]
    # Resuming with other settings would mix two sweeps: refused before any work; --overwrite remakes them all.
    refused(run(*args, "--steps", "3", "--out-dir", str(out)), 2, "cfg1-seed0.png", "steps 2, not 3", "--overwrite")
    again = run(*args, "--steps", "3", "--out-dir", str(out), "--overwrite")
    assert again.exit_code == 0 and len(again.stdout.splitlines()) == 6 + 4, again.stderr


# 6. Ranges and counts are checked, with their limits, before any work.


@pytest.mark.parametrize(
    ("spec", "words"),
    [("1:inf:1", "finite"), ("nan:2:1", "finite"), ("0:1e308:1e-308", "more than 1000 values"),
     (",".join(["1"] * 1001), "limit of 1000")],
)  # fmt: skip
def test_ranges_that_overflow_are_refused_with_the_limit(spec: str, words: str):
    with pytest.raises(UsageError, match=words):
        parse_numbers(spec, "--cfg")


@pytest.mark.parametrize(
    ("spec", "first", "words"),
    [("1" + "0" * 30, 0, "from 1 to 100,000"), ("5", MAX_SEED - 2, "largest seed"), (f"1,{MAX_SEED + 1}", 0, "0 to")],
)
def test_seed_counts_and_seeds_past_the_limits_are_refused(spec: str, first: int, words: str):
    with pytest.raises(UsageError, match=words):
        parse_seeds(spec, first)


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--cfg", "1:inf:1"], ["--cfg", "finite"]), (["--seeds", "1" + "0" * 30], ["--seeds", "100,000"]),
     (["--cfg", "1:1000:1", "--seeds", "1000"], ["1,000,000 cells", "100,000"])],
)  # fmt: skip
def test_huge_sweeps_are_refused_before_any_work(tmp_path: Path, args: list[str], words: list[str]):
    refused(run("sweep-guidance", "a cat", "-m", "nowhere", *args, "--out-dir", str(tmp_path / "s")), 2, *words)
    assert list(tmp_path.iterdir()) == []


# 9. An overflow's advice fits the dtype the denoising ran in.


def test_an_overflow_in_fp32_advises_weaker_guidance_not_fp32(tiny_model: Path, tmp_path: Path):
    result = run("generate", "a cat", "-m", str(tiny_model), *FAST, "--cfg", "1e300", "--dtype", "fp32",
                 "-o", str(tmp_path / "x.png"))  # fmt: skip
    refused(result, 1, "overflowed in float32", "lower --cfg")
    assert "--dtype" not in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("dtype", "advice"),
    [(torch.float16, "rerun with --dtype fp32 (or bf16)"), (torch.bfloat16, "or rerun with --dtype fp32"),
     (torch.float32, "lower --cfg")],
)  # fmt: skip
def test_the_overflow_advice_follows_the_dtype_of_the_latents(loaded: Model, dtype: torch.dtype, advice: str):
    with pytest.raises(Failure) as failure:
        decode(loaded.vae, torch.full((1, 4, 4, 4), float("nan"), dtype=dtype))
    assert advice in str(failure.value) and ("--dtype" in str(failure.value)) == (dtype != torch.float32)


# 10. Checkpoints of a work folder load as plain data only.


class Planted:
    """A pickle that runs code when loaded: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_planted_checkpoint_is_refused_without_running_it(tmp_path: Path):
    work, marker = tmp_path / "work", tmp_path / "ran"
    work.mkdir()
    torch.save({"model": Planted(marker), "opt": {}, "step": 1}, work / "vae.pt")
    args = ["train-shapes", "--out", str(tmp_path / "model"), "--work-dir", str(work), "--vae-steps", "2",
            "--unet-steps", "2", "--scenes", "64"]  # fmt: skip
    result = run(*args)
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr
    assert "vae.pt is not a checkpoint of plain data" in result.stderr.splitlines()[-1]  # after training's log
    assert not marker.exists() and not (tmp_path / "model").exists()
    torch.save({"scenes": [Planted(marker)], "mean": torch.zeros(1), "std": torch.zeros(1)}, work / "latents.pt")
    with pytest.raises(UsageError, match=r"latents\.pt is not a checkpoint of plain data"):
        train_classifier(work, tmp_path / "classifier")
    assert not marker.exists()


# 11. PNG text chunks are capped before they are read.


def _png_with_text(path: Path, key: str, text: str, compressed: bool) -> Path:
    info = PngInfo()
    info.add_text(key, text, zip=compressed)
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    ("text", "compressed", "words"),
    [("a " * 1_000_000, True, "Decompressed"), ("a " * 2_500_000, False, "tEXt chunk of 5,000,011 bytes"),
     ("a " * 40_000, True, "80,000 characters once decompressed")],
    ids=["compressed-over-pillows-1-MB", "5-MB-prompt", "compressed-over-the-limit"],
)  # fmt: skip
def test_a_png_with_too_much_text_is_refused_at_once(tmp_path: Path, text: str, compressed: bool, words: str):
    image = _png_with_text(tmp_path / "bomb.png", "parameters", text, compressed)
    start = time.monotonic()
    refused(run("inspect", str(image)), 2, words, "64 KiB per chunk")
    refused(run("generate", "--from", str(image), "-m", "nowhere", "-o", str(tmp_path / "x.png")), 2, "64 KiB")
    assert time.monotonic() - start < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.png"]


def test_a_long_prompt_within_the_limit_still_reads(tmp_path: Path):
    prompt = "a red circle " * 1000  # 13,000 characters
    image = _png_with_text(tmp_path / "long.png", "parameters", f"{prompt}\nSteps: 3, Seed: 4, CFG scale: 5", True)
    assert read_chunks(image)["parameters"].startswith(prompt)
    result = run("inspect", str(image), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 3


def test_a_prompt_over_the_limit_is_refused_before_any_work(tmp_path: Path):
    """What sdcli writes, it reads back: a prompt is at most 8 KiB, so a PNG's chunks stay within what is read."""
    refused(run("generate", "a " * 4097, "-o", str(tmp_path / "x.png")), 2, "the prompt", "8,192 bytes")
    refused(run("generate", "a cat", "--neg", "b" * 8193, "-o", str(tmp_path / "x.png")), 2, "--neg", "8,192 bytes")
    assert list(tmp_path.iterdir()) == []


def test_a_settings_line_of_a_long_prompt_parses_in_linear_time(tmp_path: Path):
    """AUTOMATIC1111's pattern with unbounded keys takes quadratic time on a long line (16 KiB: over a second)."""
    prompt = "a " * 30_000  # one line: the whole infotext is its last line
    image = _png_with_text(tmp_path / "long.png", "parameters", prompt, True)
    start = time.monotonic()
    result = run("inspect", str(image), "--json")
    assert result.exit_code == 0, result.stderr
    assert time.monotonic() - start < 5  # quadratic parsing took about 20 s


# Prompts that are not text, and sizes and counts past the limits: refused before any import of the model stack.


@pytest.mark.parametrize(
    ("args", "stdin", "words"),
    [
        (["a \udcff cat"], None, ["the prompt", "UTF-8"]),  # undecodable argv bytes arrive as lone surrogates
        (["-"], b"a \xff cat", ["prompt on stdin", "UTF-8"]),
        (["-"], b"", ["stdin is empty"]),
        (["a cat", "--neg", "b \udcff"], None, ["--neg", "UTF-8"]),
        (["a cat", "--width", "100000"], None, ["--width", "16,384"]),
        (["a cat", "-n", "1000000000"], None, ["--num-images", "100,000"]),
        (["a cat", "--steps", "100000"], None, ["--steps", "10,000"]),
        (["a cat", "--batch-size", "5000"], None, ["--batch-size", "1,024"]),
    ],
)
def test_prompts_that_are_not_text_and_sizes_past_the_limits(tmp_path: Path, args, stdin, words):
    heavy = "print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    code = f"import atexit, sys; atexit.register(lambda: {heavy}); from sdcli.cli import app; app()"
    result = subprocess.run(
        [sys.executable, "-c", code, "generate", *args, "-o", str(tmp_path / "x.png")],
        input=stdin or b"",
        capture_output=True,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:surrogateescape"},
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert result.stdout.decode().strip() == "[]"  # said before the model stack was imported
    assert list(tmp_path.iterdir()) == []


def test_a_batch_line_past_a_limit_says_the_limit(tmp_path: Path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a", "n": 1e9}\n')
    result = CliRunner().invoke(app, ["batch", str(prompts), "--out-dir", str(tmp_path / "out")])
    refused(result, 2, "line 1", "--num-images", "100,000")
