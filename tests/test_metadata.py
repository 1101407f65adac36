"""Settings inside PNGs: AUTOMATIC1111's infotext, the sdcli JSON chunk, and `sdcli inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

import sdcli
from sdcli.cli import app
from sdcli.errors import UsageError
from sdcli.output.metadata import (
    encode_png,
    infotext,
    parse_infotext,
    read_chunks,
    settings_from_infotext,
    settings_from_png,
)
from sdcli.recipe import ImageRecord, Request

RECORD = ImageRecord(
    prompt="a red circle on a white background",
    negative_prompt="blue",
    seed=42,
    cfg=7.5,
    steps=30,
    sampler="dpm++2m-karras",
    width=512,
    height=512,
    model="shapes",
    device="cpu",
    dtype="fp32",
)


def test_infotext_is_automatic1111s_format():
    assert infotext(RECORD) == (
        "a red circle on a white background\n"
        "Negative prompt: blue\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: shapes"
    )


def test_infotext_leaves_out_an_empty_negative_and_names_a_folder_model_by_its_name():
    record = ImageRecord(**{**RECORD.as_dict(), "negative_prompt": "", "model": "/models/my-model", "cfg": 7})
    assert infotext(record) == (
        "a red circle on a white background\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 42, Size: 512x512, Model: my-model"
    )


def test_values_with_commas_colons_or_newlines_are_json_quoted():
    record = ImageRecord(**{**RECORD.as_dict(), "model": "/models/a,b: c"})
    assert infotext(record).endswith('Model: "a,b: c"')
    assert parse_infotext(infotext(record))["Model"] == "a,b: c"


def test_infotext_parses_back():
    record = ImageRecord(**{**RECORD.as_dict(), "prompt": "line one\nline two, with: punctuation"})
    parsed = parse_infotext(infotext(record))
    assert parsed["Prompt"] == "line one\nline two, with: punctuation"
    assert parsed["Negative prompt"] == "blue"
    assert parsed["Sampler"] == "DPM++ 2M Karras" and parsed["Seed"] == "42" and parsed["Size"] == "512x512"
    settings = settings_from_infotext(infotext(record))
    assert settings == {
        "prompt": record.prompt,
        "negative_prompt": "blue",
        "steps": 30,
        "cfg": 7.5,
        "seed": 42,
        "width": 512,
        "height": 512,
        "sampler": "dpm++2m-karras",
        "model": "shapes",
    }


def test_an_automatic1111_infotext_with_a_separate_schedule_type():
    text = (
        "masterpiece, a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
    )
    settings = settings_from_infotext(text)
    assert (settings["sampler"], settings["schedule"]) == ("dpm++2m", "karras")  # dpm++2m-karras's pixels
    assert (settings["width"], settings["height"], settings["cfg"]) == (512, 768, 7.0)
    assert settings["prompt"] == "masterpiece, a cat" and settings["negative_prompt"] == "blurry"


def test_an_unknown_automatic1111_sampler_is_a_usage_error():
    with pytest.raises(UsageError, match="Restart"):
        settings_from_infotext("a cat\nSteps: 20, Sampler: Restart, CFG scale: 7, Seed: 1, Size: 512x512")


def write_png(path: Path, record: ImageRecord) -> Path:
    path.write_bytes(encode_png(Image.new("RGB", (4, 4), (200, 10, 10)), record))
    return path


def test_png_round_trip(tmp_path: Path):
    path = write_png(tmp_path / "a.png", RECORD)
    chunks = read_chunks(path)
    assert chunks["parameters"] == infotext(RECORD)
    assert json.loads(chunks["sdcli"]) == {"version": sdcli.__version__, **RECORD.as_dict()}
    assert settings_from_png(path) == RECORD.as_dict()
    # Whatever the PNG holds, it makes a valid request again.
    assert Request.of(settings_from_png(path)).recipe.seed == 42


def test_png_round_trip_of_non_latin_text(tmp_path: Path):
    record = ImageRecord(**{**RECORD.as_dict(), "prompt": "un cercle rouge, 赤い円 ☺"})
    path = write_png(tmp_path / "u.png", record)
    assert settings_from_png(path)["prompt"] == "un cercle rouge, 赤い円 ☺"
    assert read_chunks(path)["parameters"].startswith("un cercle rouge, 赤い円 ☺\n")


def test_settings_fall_back_to_the_infotext(tmp_path: Path):
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 12, Sampler: Euler a, CFG scale: 5, Seed: 9, Size: 64x64")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    assert settings_from_png(path) == {
        "prompt": "a cat",
        "negative_prompt": "",
        "steps": 12,
        "cfg": 5.0,
        "seed": 9,
        "width": 64,
        "height": 64,
        "sampler": "euler-a",
    }


def test_unknown_keys_in_the_sdcli_chunk_are_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    info = PngInfo()
    info.add_text("sdcli", json.dumps({**RECORD.as_dict(), "future_option": 0.7}))
    path = tmp_path / "future.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    assert settings_from_png(path) == RECORD.as_dict()
    assert "future_option" in caplog.text


def test_inspect_prints_the_infotext_and_json(tmp_path: Path):
    path = write_png(tmp_path / "a.png", RECORD)
    plain = CliRunner().invoke(app, ["inspect", str(path)])
    assert plain.exit_code == 0 and plain.stdout == infotext(RECORD) + "\n"
    as_json = CliRunner().invoke(app, ["inspect", "--json", str(path)])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == RECORD.as_dict()


@pytest.mark.parametrize("content", [b"not an image", None])
def test_inspect_refuses_what_is_not_a_png(tmp_path: Path, content: bytes | None):
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr and "Traceback" not in result.stderr


def test_inspect_refuses_a_png_without_settings(tmp_path: Path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(path)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2 and "no generation settings" in result.stderr
