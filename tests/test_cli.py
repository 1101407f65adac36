"""`sdcli generate` end to end on a tiny model: stdout, files, --json, stdin, --from replay, built-in models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.loading import references
from sdcli.output.metadata import settings_from_png

FAST = ["--steps", "2", "--sampler", "euler"]


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def test_generate_prints_one_path_per_image_and_nothing_else(tiny_model: Path, tmp_path: Path):
    result = run(
        "generate", "a red circle", "-m", str(tiny_model), *FAST, "--seed", "7", "-n", "2", "--out-dir", str(tmp_path)
    )
    assert result.exit_code == 0, result.stderr
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert paths == [tmp_path / "7-a-red-circle.png", tmp_path / "8-a-red-circle.png"]
    assert all(p.is_file() for p in paths)
    assert sorted(tmp_path.iterdir()) == sorted(paths)  # no temporary files left behind
    assert result.stderr == ""  # no progress or messages when stderr is not a terminal


def test_json_prints_one_object_per_image(tiny_model: Path, tmp_path: Path):
    result = run(
        "generate", "a red circle", "-m", str(tiny_model), *FAST, "--seed", "3", "-n", "2", "--batch-size", "2",
        "--neg", "blue", "--cfg", "5", "--width", "24", "--height", "16", "--out-dir", str(tmp_path), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["seed"] for row in rows] == [3, 4]
    for row in rows:
        assert set(row) >= {"path", "prompt", "negative_prompt", "seed", "cfg", "steps", "sampler", "width", "height",
                            "model", "seconds"}  # fmt: skip
        assert (row["prompt"], row["negative_prompt"], row["cfg"], row["steps"]) == ("a red circle", "blue", 5.0, 2)
        assert (row["sampler"], row["width"], row["height"]) == ("euler", 24, 16)
        assert row["model"] == str(tiny_model.resolve()) and row["seconds"] > 0
        assert settings_from_png(Path(row["path"]))["seed"] == row["seed"]


def test_size_defaults_to_the_models_native_size(tiny_model: Path, tmp_path: Path):
    result = run("generate", "a red circle", "-m", str(tiny_model), *FAST, "--out-dir", str(tmp_path), "--json")
    row = json.loads(result.stdout)
    assert (row["width"], row["height"]) == (16, 16)  # U-Net sample size 8 x latent scale 2


def test_prompt_dash_reads_stdin(tiny_model: Path, tmp_path: Path):
    result = run("generate", "-", "-m", str(tiny_model), *FAST, "-o", str(tmp_path / "a.png"), input="a green square\n")
    assert result.exit_code == 0, result.stderr
    assert settings_from_png(tmp_path / "a.png")["prompt"] == "a green square"


def test_from_replays_an_image_bit_for_bit(tiny_model: Path, tmp_path: Path):
    original = tmp_path / "original.png"
    result = run(
        "generate", "a red circle", "-m", str(tiny_model), "--steps", "3", "--sampler", "dpm++2m-sde-karras",
        "--neg", "blue", "--cfg", "4.5", "--seed", "11", "-n", "3", "--batch-size", "3", "--out-dir", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    third = Path(result.stdout.splitlines()[2])  # seed 13, made in a batch of three
    replay = run("generate", "--from", str(third), "-o", str(original))
    assert replay.exit_code == 0, replay.stderr
    assert original.read_bytes() == third.read_bytes()


def test_options_beside_from_override_it(tiny_model: Path, tmp_path: Path):
    first = tmp_path / "first.png"
    run("generate", "a red circle", "-m", str(tiny_model), *FAST, "--seed", "1", "-o", str(first))
    second = tmp_path / "second.png"
    result = run("generate", "a blue square", "--from", str(first), "--seed", "2", "--cfg", "3", "-o", str(second))
    assert result.exit_code == 0, result.stderr
    settings = settings_from_png(second)
    assert (settings["prompt"], settings["seed"], settings["cfg"]) == ("a blue square", 2, 3.0)
    assert (settings["steps"], settings["sampler"], settings["model"]) == (2, "euler", str(tiny_model.resolve()))


def test_a_negative_prompt_at_cfg_one_is_a_warning(tiny_model: Path, tmp_path: Path):
    result = run("generate", "a red circle", "-m", str(tiny_model), *FAST, "--cfg", "1", "--neg", "blue", "--out-dir",
                 str(tmp_path))  # fmt: skip
    assert result.exit_code == 0
    assert result.stderr == "warning: at --cfg 1 only the conditional branch runs: the negative prompt has no effect\n"


def test_model_comes_from_the_environment(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDCLI_MODEL", str(tiny_model))
    result = run("generate", "a red circle", *FAST, "--out-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"] == str(tiny_model.resolve())


def test_overwrite_replaces_an_existing_file(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "a.png"
    out.write_bytes(b"old")
    result = run("generate", "a red circle", "-m", str(tiny_model), *FAST, "-o", str(out), "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")


@pytest.fixture
def builtin_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "builtin"
    root.mkdir()
    monkeypatch.setattr(references, "builtin_root", lambda: root)
    return root


def test_built_in_models_are_found_by_name_and_are_the_default(tiny_model: Path, builtin_root: Path, tmp_path: Path):
    shutil.copytree(tiny_model, builtin_root / "shapes")
    (builtin_root / "not-a-model").mkdir()
    listed = run("models", "--json")
    assert [json.loads(line) for line in listed.stdout.splitlines()] == [
        {"name": "shapes", "width": 16, "height": 16, "path": str(builtin_root / "shapes")}
    ]
    result = run("generate", "a red circle", *FAST, "--out-dir", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.stderr
    path = Path(json.loads(result.stdout)["path"])
    assert settings_from_png(path)["model"] == "shapes"  # recorded by name, so it replays on any install


def test_a_missing_default_model_says_to_pass_model(builtin_root: Path, tmp_path: Path):
    result = run("generate", "a red circle", "--out-dir", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "shapes" in result.stderr and "--model" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert run("models").stdout == ""


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("sdcli ")
