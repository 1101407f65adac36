"""LoRAs by name: AUTOMATIC1111's `<lora:NAME:WEIGHT>` prompt tags and `--lora NAME[:WEIGHT]`, found in --lora-dir,
$SDCLI_LORA_DIR and the model's own loras/; per-image weights without reloading (a batch's lines, a sweep's
--lora-weights rows), every LoRA a recipe does not name at weight 0; recorded and replayed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_loras import kohya, peft
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.errors import UsageError
from sdcli.text.lora_tags import read_tags

FAST = ["--steps", "2", "--sampler", "euler", "--seed", "4"]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(23)
    folder = tmp_path_factory.mktemp("lora-dir")
    kohya(folder / "style.safetensors")
    peft(folder / "detail.safetensors")
    return folder


def cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def generate(model: Path, out: Path, prompt: str, *args: str, env: dict[str, str] | None = None) -> np.ndarray:
    result = cli("generate", prompt, "-m", str(model), *FAST, "-o", str(out), *args, env=env)
    assert result.exit_code == 0, result.output
    return pixels(out)


# The tags, read from the prompt.


@pytest.mark.parametrize(
    ("prompt", "text", "loras"),
    [
        ("<lora:x:0.5>a lighthouse", "a lighthouse", (("x", 0.5),)),
        ("a red  <lora:x>  circle", "a red circle", (("x", 1.0),)),
        ("a circle, <lora:x:-1.5><lora:y:2>", "a circle,", (("x", -1.5), ("y", 2.0))),
        ("no tags  here", "no tags  here", ()),
    ],
)
def test_tags_are_removed_from_the_text_that_is_encoded(prompt: str, text: str, loras: tuple):
    tagged = read_tags(prompt)
    assert (tagged.text, tagged.loras) == (text, loras)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("<lora:x:abc> a cat", "is not a number"),
        ("<lora:x:inf> a cat", "is not a number"),
        ("<lora::1> a cat", "is not a LoRA tag"),
        ("<lora:x:1:2> a cat", "is not a LoRA tag"),
        ("<lora:x:> a cat", "is not a LoRA tag"),
        ("a cat <lora:x", "unclosed"),
        ("<lora:x> a <lora:x:2>", "twice"),
    ],
)
def test_malformed_tags_are_one_line_errors_before_anything_loads(tiny_model: Path, tmp_path: Path, prompt, message):
    with pytest.raises(UsageError, match=message):
        read_tags(prompt)
    result = cli("generate", prompt, "-m", str(tiny_model), "--steps", "1", "--out-dir", str(tmp_path / "out"))
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_unknown_name_lists_the_close_names(tiny_model: Path, lora_dir: Path, tmp_path: Path):
    for args in (["<lora:stlye:0.5> a cat"], ["a cat", "--lora", "stlye:0.5"]):
        result = cli("generate", *args, "-m", str(tiny_model), "--lora-dir", str(lora_dir), "--steps", "1",
                     "--out-dir", str(tmp_path / "out"))  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "no LoRA named 'stlye'" in result.output and "close names: style" in result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    result = cli("generate", "<lora:style> a cat", "-m", str(tiny_model), "--steps", "1")
    assert result.exit_code == 2 and "--lora-dir DIR (or $SDCLI_LORA_DIR)" in result.output


# Names found, and the same image as the file's path.


def test_a_tag_a_bare_name_and_the_environment_give_the_image_of_the_path(
    tiny_model: Path, lora_dir: Path, tmp_path: Path
):
    path = str(lora_dir / "style.safetensors")
    want = generate(tiny_model, tmp_path / "path.png", "a red circle", "--lora", f"{path}:0.7")
    assert not np.array_equal(want, generate(tiny_model, tmp_path / "none.png", "a red circle"))
    tag = generate(tiny_model, tmp_path / "tag.png", "<lora:style:0.7>a red circle", "--lora-dir", str(lora_dir))
    assert np.array_equal(tag, want)
    env = {"SDCLI_LORA_DIR": str(lora_dir)}
    assert np.array_equal(generate(tiny_model, tmp_path / "env.png", "a red <lora:style:0.7> circle", env=env), want)
    assert np.array_equal(generate(tiny_model, tmp_path / "bare.png", "a red circle", "--lora", "style:0.7", env=env),
                          want)  # fmt: skip
    # A tag of a --lora file's name sets that file's weight.
    assert np.array_equal(generate(tiny_model, tmp_path / "both.png", "<lora:style:0.7> a red circle", "--lora",
                                   f"{path}:0.2"), want)  # fmt: skip


def test_a_model_folder_finds_its_own_loras_by_name(tiny_model: Path, lora_dir: Path, tmp_path: Path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "loras").mkdir()
    shutil.copy(lora_dir / "detail.safetensors", model / "loras")
    want = generate(model, tmp_path / "path.png", "a cat", "--lora", f"{model / 'loras' / 'detail.safetensors'}:0.5")
    assert np.array_equal(generate(model, tmp_path / "tag.png", "<lora:detail:0.5> a cat"), want)
    assert np.array_equal(generate(model, tmp_path / "bare.png", "a cat", "--lora", "detail:0.5"), want)


def test_a_tag_is_recorded_as_typed_and_its_file_replays(tiny_model: Path, lora_dir: Path, tmp_path: Path):
    work = tmp_path / "work"
    shutil.copytree(lora_dir, work)
    out = tmp_path / "tag.png"
    made = generate(tiny_model, out, "<lora:style:0.6> a red circle", "--lora-dir", str(work))
    text = Image.open(out).text
    record = json.loads(text["sdcli"])
    assert record["prompt"] == "<lora:style:0.6> a red circle"
    assert text["parameters"].startswith("<lora:style:0.6> a red circle\n")
    assert record["loras"] == [f"{work / 'style.safetensors'}:0.6"] and record["lora_dir"] is None
    assert 'Lora hashes: "style: ' in text["parameters"]
    again = tmp_path / "again.png"
    result = cli("generate", "--from", str(out), "-o", str(again))  # no --lora-dir: the record names the file
    assert result.exit_code == 0, result.output
    assert np.array_equal(pixels(again), made) and Image.open(again).text == text
    kohya(work / "style.safetensors")  # another file of that name: refused
    result = cli("generate", "--from", str(out), "-o", str(tmp_path / "changed.png"))
    assert result.exit_code == 2 and "is not the file this was made with" in result.output


# Weights per image, the files loaded once.


def test_batch_lines_of_other_weights_are_the_images_of_separate_runs(tiny_model: Path, lora_dir: Path, tmp_path: Path):
    style = lora_dir / "style.safetensors"
    lines = [
        {"prompt": "a red circle", "lora": f"{style}:0.8"},
        {"prompt": "a red circle"},  # the batch loads style, at weight 0 here: bit for bit no LoRA
        {"prompt": "<lora:detail:-0.5> a red circle", "lora": [f"{style}:0.3"]},
        {"prompt": "a red circle", "lora": "detail:1"},
    ]
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "batch"
    result = cli("batch", str(tmp_path / "lines.jsonl"), "-m", str(tiny_model), *FAST, "--lora-dir", str(lora_dir),
                 "--batch-size", "2", "--out-dir", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    made = sorted(out.glob("*.png"))
    assert len(made) == 4
    tagged = ["<lora:detail:-0.5> a red circle", "--lora", f"{style}:0.3", "--lora-dir", str(lora_dir)]
    alone = [
        generate(tiny_model, tmp_path / "0.png", "a red circle", "--lora", f"{style}:0.8"),
        generate(tiny_model, tmp_path / "1.png", "a red circle"),
        generate(tiny_model, tmp_path / "2.png", *tagged),
        generate(tiny_model, tmp_path / "3.png", "a red circle", "--lora", str(lora_dir / "detail.safetensors")),
    ]
    for path, want in zip(made, alone, strict=True):
        assert np.array_equal(pixels(path), want), path.name
    records = [json.loads(Image.open(path).text["sdcli"]) for path in made]
    assert [r["loras"] for r in records] == [
        [f"{style}:0.8"],
        [],
        [f"{style}:0.3", f"{lora_dir / 'detail.safetensors'}:-0.5"],
        [f"{lora_dir / 'detail.safetensors'}:1.0"],
    ]


def test_a_batch_rerun_with_other_loras_keeps_nothing_and_says_so(tiny_model: Path, lora_dir: Path, tmp_path: Path):
    lines, out = tmp_path / "lines.jsonl", tmp_path / "batch"
    style = lora_dir / "style.safetensors"

    def run(line: dict):
        lines.write_text(json.dumps(line) + "\n")
        return cli("batch", str(lines), "-m", str(tiny_model), *FAST, "--lora-dir", str(lora_dir), "--out-dir",
                   str(out))  # fmt: skip

    assert run({"prompt": "a red circle", "lora": "style:0.8"}).exit_code == 0
    made = {path: path.read_bytes() for path in out.glob("*.png")}
    assert run({"prompt": "a red circle", "lora": "style:0.8"}).exit_code == 0  # the same run: resumed, kept
    for changed in ({"prompt": "a red circle", "lora": "style:0.5"}, {"prompt": "a red circle", "lora": "style"},
                    {"prompt": "a red circle"}, {"prompt": "a red circle", "lora": "detail:0.8"}):  # fmt: skip
        result = run(changed)
        assert result.exit_code == 2 and f"made with {style}:0.8, not " in result.output, (changed, result.output)
        assert "--overwrite" in result.output
    assert {path: path.read_bytes() for path in out.glob("*.png")} == made


def test_sweep_lora_weights_are_rows_over_the_guidance_columns(tiny_model: Path, lora_dir: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    result = cli("sweep-guidance", "a red circle", "-m", str(tiny_model), "--steps", "2", "--sampler", "euler",
                 "--seeds", "1", "--seed", "4", "--cfg", "1,5", "--lora", "style", "--lora-dir", str(lora_dir),
                 "--lora-weights", "0,0.5,1", "--out-dir", str(out), "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.glob("cfg*.png"))
    assert names == sorted(f"cfg{c}-lora-weight{w}-seed4.png" for c in (1, 5) for w in ("0", "0.5", "1"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["axis"] == "lora_weight"
    assert [(s["lora_weight"], s["cfg"]) for s in metrics["summary"]] == [(w, c) for w in (0, 0.5, 1) for c in (1, 5)]
    style = lora_dir / "style.safetensors"
    assert np.array_equal(pixels(out / "cfg5-lora-weight0.5-seed4.png"),
                          generate(tiny_model, tmp_path / "a.png", "a red circle", "--cfg", "5", "--lora",
                                   f"{style}:0.5"))  # fmt: skip
    assert np.array_equal(pixels(out / "cfg5-lora-weight0-seed4.png"),
                          generate(tiny_model, tmp_path / "b.png", "a red circle", "--cfg", "5"))  # fmt: skip
    again = cli("sweep-guidance", "a red circle", "-m", str(tiny_model), "--steps", "2", "--sampler", "euler",
                "--seeds", "1", "--seed", "4", "--cfg", "1,5", "--lora", "style", "--lora-dir", str(lora_dir),
                "--lora-weights", "0,0.5,1", "--out-dir", str(out))  # fmt: skip
    assert again.exit_code == 0 and "kept 6 of 6 cells" in again.output, again.output
    result = cli("sweep-guidance", "a cat", "-m", str(tiny_model), "--lora-weights", "0,1", "--out-dir",
                 str(tmp_path / "none"))  # fmt: skip
    assert result.exit_code == 2 and "first --lora" in result.output
    result = cli("sweep-guidance", "<lora:style> a cat", "-m", str(tiny_model), "--lora", "style", "--lora-dir",
                 str(lora_dir), "--lora-weights", "0,1", "--out-dir", str(tmp_path / "tagged"))  # fmt: skip
    assert result.exit_code == 2 and "tag sets the weight --lora-weights sweeps" in result.output
