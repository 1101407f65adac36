"""`sdcli batch`: the three file formats and stdin, line checks with line numbers, stable names, resuming after
an interruption, the manifest, and the split across two accelerate processes on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.workflows.batch import Line, plan, read_lines, share_batches

FAST = ["--steps", "2", "--sampler", "euler"]
DEFAULTS = {"model": "m", "seed": 0, "cfg": 7.5}
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def images(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


# Reading lines.


def test_txt_one_prompt_per_line_skipping_blanks_and_comments():
    lines, invalid = read_lines("a red circle\n\n# a comment\n  a blue square  \n", "txt", DEFAULTS)
    assert invalid == []
    assert [(line.number, line.request.recipe.prompt) for line in lines] == [(1, "a red circle"), (4, "a blue square")]
    assert all(line.request.recipe.cfg == 7.5 and line.request.recipe.seed == 0 for line in lines)


def test_jsonl_lines_override_the_command_line():
    text = '{"prompt": "a cat", "neg": "blue", "cfg": 5, "seed": 7, "n": 2}\n\n{"prompt": "a dog", "steps": 3}\n'
    lines, invalid = read_lines(text, "jsonl", DEFAULTS)
    assert invalid == []
    first, second = (line.request.recipe for line in lines)
    assert (first.negative_prompt, first.cfg, first.seed, lines[0].request.num_images) == ("blue", 5, 7, 2)
    assert (second.prompt, second.cfg, second.steps, second.seed) == ("a dog", 7.5, 3, 0)
    assert [line.number for line in lines] == [1, 3]


def test_csv_with_a_header_typed_by_the_settings():
    text = 'prompt,cfg,seed,n,neg\n"a cat, sitting",3.5,4,2,\na dog,,,,red\n'
    lines, invalid = read_lines(text, "csv", DEFAULTS)
    assert invalid == []
    first, second = (line.request.recipe for line in lines)
    assert (first.prompt, first.cfg, first.seed, lines[0].request.num_images, first.negative_prompt) == (
        "a cat, sitting", 3.5, 4, 2, "",
    )  # fmt: skip
    assert (second.prompt, second.cfg, second.negative_prompt) == ("a dog", 7.5, "red")
    assert [line.number for line in lines] == [2, 3]


def test_invalid_lines_are_reported_with_their_numbers():
    text = (
        '{"prompt": "ok"}\n{"prompt": "a", \n{"prompt": "b", "colour": 1}\n{"prompt": "c", "cfg": "high"}\n'
        '["x"]\n{"neg": "no prompt"}\n{"prompt": "d", "model": "other"}\n{"prompt": "e", "steps": 0}\n'
    )
    lines, invalid = read_lines(text, "jsonl", DEFAULTS)
    assert [line.number for line in lines] == [1]
    problems = {bad.number: bad.problem for bad in invalid}
    assert "bad JSON" in problems[2]
    assert "unknown option `colour`" in problems[3]
    assert "--cfg" in problems[4]
    assert "JSON object" in problems[5]
    assert "prompt" in problems[6]
    assert "whole batch" in problems[7]
    assert "--steps" in problems[8]
    csv_lines, csv_invalid = read_lines("prompt,steps\na,two\n", "csv", DEFAULTS)
    assert csv_lines == [] and csv_invalid[0].number == 2 and "steps" in csv_invalid[0].problem


def test_names_are_stable_and_a_share_batches_images_of_one_line(tmp_path: Path):
    lines = [Line(3, make_request(prompt="A cat!", seed=10, num_images=3)), Line(5, make_request(prompt="dog", seed=0))]
    planned = plan(lines, tmp_path)
    assert [p.path.name for p in planned] == [
        "00003-000-10-a-cat.png", "00003-001-11-a-cat.png", "00003-002-12-a-cat.png", "00005-000-0-dog.png",
    ]  # fmt: skip
    assert [(p.recipe.prompt, p.recipe.seed) for p in planned[2:]] == [
        ("A cat!", 12), ("dog", 0),
    ]  # fmt: skip
    # A share missing image 1 of line 3, two at a time: the rest in plan order.
    batches = share_batches([planned[0], planned[2], planned[3]], 2)
    assert [[p.path.name[:9] for p in batch] for batch in batches] == [["00003-000", "00003-002"], ["00005-000"]]


# The command.


def test_batch_writes_images_and_a_manifest_then_resumes(tiny_model: Path, tmp_path: Path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n# skip me\na blue square\n")
    out = tmp_path / "out"
    first = run("batch", str(prompts), "-m", str(tiny_model), *FAST, "-n", "2", "--out-dir", str(out), "--json")
    assert first.exit_code == 0, first.stderr
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    names = ["00001-000-0-a-red-circle.png", "00001-001-1-a-red-circle.png", "00003-000-0-a-blue-square.png",
             "00003-001-1-a-blue-square.png"]  # fmt: skip
    assert [Path(r["path"]).name for r in rows] == names
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "manifest.jsonl"])
    in_folder = [{**row, "path": Path(row["path"]).name} for row in rows]
    assert manifest(out) == in_folder  # the JSON of --json, one line per image, its path relative to the folder
    made = images(out)
    # A rerun of the same file skips everything.
    again = run("batch", str(prompts), "-m", str(tiny_model), *FAST, "-n", "2", "--out-dir", str(out))
    assert again.exit_code == 0 and again.stdout == ""
    assert "skipped 4 of 4" in again.stderr
    assert images(out) == made and manifest(out) == in_folder
    # Deleting an image and asking for 3 per line: only the missing ones are made.
    (out / names[1]).unlink()
    more = run("batch", str(prompts), "-m", str(tiny_model), *FAST, "-n", "3", "--out-dir", str(out))
    assert more.exit_code == 0, more.stderr
    assert [Path(p).name for p in more.stdout.splitlines()] == [
        "00001-001-1-a-red-circle.png", "00001-002-2-a-red-circle.png", "00003-002-2-a-blue-square.png",
    ]  # fmt: skip
    assert images(out)[names[1]] == made[names[1]]  # remade bit for bit
    assert [Path(r["path"]).name for r in manifest(out)] == sorted(images(out))  # plan order, one line each


def test_resuming_with_other_settings_is_refused(tiny_model: Path, tmp_path: Path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    out = tmp_path / "out"
    assert run("batch", str(prompts), "-m", str(tiny_model), *FAST, "--out-dir", str(out)).exit_code == 0
    result = run("batch", str(prompts), "-m", str(tiny_model), *FAST, "--cfg", "3", "--out-dir", str(out))
    assert result.exit_code == 2 and "cfg" in result.stderr and "--overwrite" in result.stderr


def test_stdin_jsonl_and_csv_files(tiny_model: Path, tmp_path: Path):
    result = run("batch", "-", "-m", str(tiny_model), *FAST, "--out-dir", str(tmp_path / "a"), input="a cat\na dog\n")
    assert result.exit_code == 0, result.stderr
    assert [Path(p).name for p in result.stdout.splitlines()] == ["00001-000-0-a-cat.png", "00002-000-0-a-dog.png"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a cat", "seed": 5, "cfg": 2}\n')
    result = run("batch", str(jsonl), "-m", str(tiny_model), *FAST, "--out-dir", str(tmp_path / "b"), "--json")
    row = json.loads(result.stdout)
    assert (Path(row["path"]).name, row["cfg"], row["seed"]) == ("00001-000-5-a-cat.png", 2, 5)
    table = tmp_path / "p.csv"
    table.write_text("prompt,seed\na dog,9\n")
    result = run("batch", str(table), "-m", str(tiny_model), *FAST, "--out-dir", str(tmp_path / "c"))
    assert [Path(p).name for p in result.stdout.splitlines()] == ["00002-000-9-a-dog.png"]
    stdin_csv = run("batch", "-", "--format", "csv", "-m", str(tiny_model), *FAST, "--out-dir", str(tmp_path / "d"),
                    input="prompt\na cat\n")  # fmt: skip
    assert stdin_csv.exit_code == 0 and stdin_csv.stdout.strip().endswith("00002-000-0-a-cat.png")


def test_invalid_lines_stop_the_batch_unless_skipped(tiny_model: Path, tmp_path: Path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "cfg": "x"}\n{bad\n')
    out = tmp_path / "out"
    result = run("batch", str(prompts), "-m", str(tiny_model), *FAST, "--out-dir", str(out))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "line 2" in result.stderr and "lines 3" in result.stderr
    assert "--skip-invalid" in result.stderr and not out.exists()  # nothing made
    skipped = run("batch", str(prompts), "-m", str(tiny_model), *FAST, "--out-dir", str(out), "--skip-invalid")
    assert skipped.exit_code == 0, skipped.stderr
    assert "line 2 skipped" in skipped.stderr and "line 3 skipped" in skipped.stderr
    assert [Path(p).name for p in skipped.stdout.splitlines()] == ["00001-000-0-a-cat.png"]


@pytest.mark.parametrize(
    ("name", "content", "args", "message"),
    [
        ("empty.txt", "\n# nothing\n", [], "no prompts"),
        ("p.yaml", "a cat\n", [], "--format"),
        ("p.txt", "a cat\n", ["--format", "xml"], "--format"),
        ("p.csv", "text\na cat\n", [], "prompt"),
        ("p.txt", "a cat\n", ["--width", "17"], "line 1"),
        ("missing.txt", None, [], "does not exist"),
    ],
)
def test_bad_batches_are_one_line_errors(tiny_model: Path, tmp_path: Path, name, content, args, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    out = tmp_path / "out"
    result = run("batch", str(tmp_path / name), "-m", str(tiny_model), *FAST, *args, "--out-dir", str(out))
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)])
def test_an_interrupted_batch_loses_nothing_and_resumes(tiny_model: Path, tmp_path: Path, sig: int):
    """Kill the process once images are landing (SIGTERM as a stop, SIGKILL as a crash): no partial files left, a
    manifest that names only images on disk; the rerun makes exactly the rest, the bytes of an uninterrupted run."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    args = ["batch", str(prompts), "-m", str(tiny_model), *FAST, "-n", "8", "--out-dir", str(out)]
    process = subprocess.Popen([sys.executable, "-m", "sdcli", *args], cwd=tmp_path, env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while len(list(out.glob("*.png"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0, "the batch finished before it could be interrupted"
    if sig == signal.SIGTERM:
        assert process.returncode == 130 and "Traceback" not in stderr  # stopped as by Ctrl-C
        assert not list(out.glob(".*.part"))  # the image in flight was removed on the way out
    landed = sorted(p.name for p in out.glob("*.png"))
    assert 2 <= len(landed) < 16
    assert {Path(row["path"]).name for row in manifest(out)} <= set(landed)  # every line names an image on disk
    resumed = run(*args)
    assert resumed.exit_code == 0, resumed.stderr
    assert f"skipped {len(landed)} of 16" in resumed.stderr
    assert len(resumed.stdout.splitlines()) == 16 - len(landed)
    assert not list(out.glob(".*.part"))  # a crash's leftovers are cleared
    assert [Path(row["path"]).name for row in manifest(out)] == sorted(p.name for p in out.glob("*.png"))
    assert len(manifest(out)) == 16
    whole = run(*args[:-1], str(tmp_path / "whole"), "--batch-size", "4")
    assert whole.exit_code == 0, whole.stderr
    assert images(out) == images(tmp_path / "whole")


def test_two_accelerate_processes_on_the_cpu_split_the_work(tiny_model: Path, tmp_path: Path):
    """`accelerate launch --multi_gpu --num_processes 2` without CUDA: a gloo group of two; each image made once,
    the same files and one manifest as a single process."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    common = [str(prompts), "-m", str(tiny_model), *FAST, "-n", "2"]
    single = run("batch", *common, "--out-dir", str(tmp_path / "one"))
    assert single.exit_code == 0, single.stderr
    launch = subprocess.run(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
         "-m", "sdcli", "batch", *common, "--out-dir", str(tmp_path / "two")],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert launch.returncode == 0, launch.stderr
    printed = [Path(line).name for line in launch.stdout.splitlines()]
    assert sorted(printed) == sorted(images(tmp_path / "one"))  # each image printed (made) exactly once
    assert len(printed) == 6
    assert images(tmp_path / "two") == images(tmp_path / "one")

    def without_times(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in ("path", "seconds")} for row in rows]

    assert without_times(manifest(tmp_path / "two")) == without_times(manifest(tmp_path / "one"))
