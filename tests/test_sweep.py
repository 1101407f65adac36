"""`sdcli sweep-guidance`: value parsing, the contact sheet's geometry and labels, the metrics on known images,
and the command end to end on a tiny model (cells equal `generate`'s images, every report file written)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.errors import UsageError
from sdcli.guidance.classifier import NoisyClassifier
from sdcli.output.sheets import BACKGROUND, PALETTE, contact_sheet, line_plot, sheet_layout, xy_plot
from sdcli.recipe import Request
from sdcli.shapes.judge import judged_adherence, named_attributes
from sdcli.shapes.reference import ShapesWorld
from sdcli.shapes.train_classifier import HEADS
from sdcli.shapes.world import Scene, render
from sdcli.workflows.distribution import distribution_scores, sweep_reference
from sdcli.workflows.metrics import ClipScorer, diversity
from sdcli.workflows.sweep import METHOD, Sweep, parse_numbers, parse_seeds

FAST = ["--steps", "2", "--sampler", "euler"]


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


# Parsing the axes.


def test_scales_as_a_list_or_an_inclusive_range():
    assert parse_numbers("1,3,5,7.5,10", "--cfg") == (1, 3, 5, 7.5, 10)
    assert parse_numbers("1:13:2", "--cfg") == (1, 3, 5, 7, 9, 11, 13)
    assert parse_numbers("1:2:0.5", "--cfg") == (1, 1.5, 2)
    assert parse_numbers("0:1:0.1", "--cfg")[-1] == 1.0  # no float drift past the stop
    assert parse_numbers("1:12:2", "--cfg")[-1] == 11


@pytest.mark.parametrize("spec", ["a,b", "1:5", "5:1:1", "1:5:0", "1,1", "nan", "1:1e9:0.001"])
def test_bad_scales_are_usage_errors(spec: str):
    with pytest.raises(UsageError, match="--cfg"):
        parse_numbers(spec, "--cfg")


def test_seeds_as_a_count_from_the_first_seed_or_a_list():
    assert parse_seeds("4", 10) == (10, 11, 12, 13)
    assert parse_seeds("1,5,9", 10) == (1, 5, 9)
    for bad in ("0", "x", "1,1", "-1,2"):
        with pytest.raises(UsageError, match="--seeds"):
            parse_seeds(bad, 0)


# The contact sheet and the plot.


def _solid(rgb: tuple[int, int, int], size: int = 16) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


def test_contact_sheet_puts_each_image_in_its_cell_with_its_labels():
    colours = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(255, 255, 0), (0, 255, 255), (255, 0, 255)]]
    cells = [[_solid(c) for c in row] for row in colours]
    columns, rows = ["cfg 1", "cfg 3", "cfg 7.5"], ["seed 0", "seed 1"]
    sheet = contact_sheet(cells, columns, rows)
    layout = sheet_layout((16, 16), columns, rows)
    assert sheet.size == layout.size
    assert layout.scale == 6 and layout.cell[1] == 96  # 16-pixel images enlarged to fit labels
    pixels = np.asarray(sheet)
    width, height = layout.cell
    for r, row in enumerate(colours):
        for c, rgb in enumerate(row):
            x, y = layout.origin(r, c)
            offset = (width - 96) // 2
            block = pixels[y : y + 96, x + offset : x + offset + 96]
            assert (block == rgb).all(), (r, c)  # the whole enlarged image, nothing else
    ink = (pixels != BACKGROUND).any(axis=-1)
    for c in range(3):  # a label above each column
        x, _ = layout.origin(0, c)
        assert ink[: layout.top, x : x + width].any()
    for r in range(2):  # a label beside each row
        _, y = layout.origin(r, 0)
        assert ink[y : y + height, : layout.left].any()
    assert not ink[: layout.top, : layout.left].any()  # the corner stays empty


def test_contact_sheet_needs_one_label_per_row_and_column():
    with pytest.raises(ValueError):
        contact_sheet([[_solid((0, 0, 0))]], ["a", "b"], ["x"])


def test_line_plot_draws_one_panel_per_series():
    plot = line_plot([1, 3, 7.5], {"a": [0.1, 0.5, 0.9], "b": [0.3, None, 0.1]}, "guidance scale")
    one = line_plot([1, 3, 7.5], {"a": [0.1, 0.5, 0.9]}, "guidance scale")
    assert plot.width == one.width and plot.height == 2 * one.height
    pixels = np.asarray(plot)
    assert ((pixels == (31, 119, 180)).all(axis=-1)).sum() > 50  # the lines and dots


def test_xy_plot_draws_each_line_of_a_panel_in_its_own_colour_and_names_them():
    lines = {"cfg": [(0.9, 0.5), (0.6, 0.8), (0.3, 1.0)], "apg": [(0.95, 0.5), (0.8, 0.9)]}
    plot = xy_plot({"adherence against recall": lines}, "recall")
    alone = xy_plot({"adherence against recall": {"cfg": lines["cfg"]}}, "recall")
    assert plot.height == alone.height and plot.width > alone.width  # the names beside the panel
    pixels = np.asarray(plot)
    for colour in PALETTE[:2]:
        assert ((pixels == colour).all(axis=-1)).sum() > 50, colour
    assert not ((np.asarray(alone) == PALETTE[1]).all(axis=-1)).any()


# Metrics on known images.


def test_diversity_is_the_mean_pairwise_rms_distance():
    black, white, grey = _solid((0, 0, 0)), _solid((255, 255, 255)), _solid((51, 51, 51))
    assert diversity([black, black, black]) == 0
    assert diversity([black, white]) == pytest.approx(1.0)
    assert diversity([black, white, grey]) == pytest.approx((1.0 + 0.2 + 0.8) / 3)
    assert diversity([black]) == 0


def test_prompt_attributes_name_only_what_the_prompt_says():
    assert named_attributes("a red circle on a white background") == {
        "colour": "red", "shape": "circle", "background": "white"
    }  # fmt: skip
    assert named_attributes("A Blue shape") == {"colour": "blue"}
    assert named_attributes("triangle") == {"shape": "triangle"}
    assert named_attributes("a cat") == {}


def test_judged_adherence_checks_only_the_named_attributes():
    image = Image.fromarray(render(Scene("circle", "red", "white", 32, 32, 36)))
    assert judged_adherence(image, {"colour": "red", "shape": "circle", "background": "white"})
    assert judged_adherence(image, {"colour": "red"})
    assert not judged_adherence(image, {"colour": "blue"})
    assert not judged_adherence(image, {"colour": "red", "shape": "square"})
    assert not judged_adherence(image, {"background": "black"})


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIPModel with its word tokenizer and an image processor, saved as a local folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from sdcli.shapes.tokenizer import write_word_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    words = ["a", "red", "green", "blue", "circle", "square", "on", "white", "background", "cat"]
    tokenizer = write_word_tokenizer(words, folder / "_tok")
    torch.manual_seed(0)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "vocab_size": len(tokenizer), "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_clip_score_is_100_times_the_cosine_floored_at_zero(tiny_clip: Path):
    scorer = ClipScorer(tiny_clip)
    images = [_solid((255, 0, 0), 32), _solid((0, 0, 255), 32)]
    scores = scorer(images, "a red circle")
    assert len(scores) == 2 and all(0 <= s <= 100 for s in scores)
    assert scorer(images, "a red circle") == scores  # deterministic
    assert scorer(images[:1], "a red circle")[0] == pytest.approx(scores[0], abs=1e-4)


def test_clip_model_folder_must_exist(tmp_path: Path):
    with pytest.raises(UsageError, match="--clip-model"):
        ClipScorer(tmp_path)


# The command end to end.


def test_sweep_writes_cells_sheet_and_metrics(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    result = run("sweep-guidance", "a red circle", "-m", str(tiny_model), *FAST, "--cfg", "1,3,5", "--seeds", "2",
                 "--seed", "5", "--batch-size", "2", "--out-dir", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    printed = [Path(line) for line in result.stdout.splitlines()]
    cells = [out / f"cfg{c}-seed{s}.png" for c in (1, 3, 5) for s in (5, 6)]
    reports = [out / name for name in ("grid.png", "metrics.csv", "metrics.json", "metrics.png")]
    assert printed == cells + reports
    assert sorted(out.iterdir()) == sorted(cells + reports)  # nothing else, no temporary files
    # The summary table on stderr, one row per scale.
    assert "adherence" in result.stderr and "diversity" in result.stderr
    # The sheet: 2 rows (seeds) x 3 columns (scales) of enlarged 16x16 images.
    layout = sheet_layout((16, 16), ["cfg 1", "cfg 3", "cfg 5"], ["seed 5", "seed 6"])
    with Image.open(out / "grid.png") as sheet:
        assert sheet.size == layout.size
        pixels = np.asarray(sheet.convert("RGB"))
    with Image.open(out / "cfg3-seed6.png") as cell:
        expected = np.asarray(cell.convert("RGB").resize((96, 96), Image.Resampling.NEAREST))
    x, y = layout.origin(1, 1)
    x += (layout.cell[0] - 96) // 2
    assert (pixels[y : y + 96, x : x + 96] == expected).all()
    # metrics.json: one row per cell, a summary per scale; diversity from the images themselves.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["adherence_measure"] is None  # a tiny model, no --clip-model: left out
    assert [(c["cfg"], c["seed"]) for c in metrics["cells"]] == [(c, s) for c in (1, 3, 5) for s in (5, 6)]
    assert [s["cfg"] for s in metrics["summary"]] == [1, 3, 5]
    pair = [Image.open(out / f"cfg5-seed{s}.png") for s in (5, 6)]
    assert metrics["summary"][2]["diversity"] == pytest.approx(diversity(pair))
    assert all(s["images"] == 2 and s["adherence"] is None for s in metrics["summary"])
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["kind"] for r in rows] == ["cell"] * 6 + ["summary"] * 3
    with Image.open(out / "metrics.png") as plot:
        assert plot.format == "PNG" and plot.height > plot.width / 2


def test_a_cell_is_the_image_generate_makes_with_its_settings(tiny_model: Path, tmp_path: Path):
    """The same seed gives the same noise in every column: each cell is generate's image at its scale."""
    sweep = run("sweep-guidance", "a red circle", "-m", str(tiny_model), *FAST, "--cfg", "1,4", "--seeds", "3,9",
                "--out-dir", str(tmp_path / "s"), "--json", "-q")  # fmt: skip
    assert sweep.exit_code == 0, sweep.stderr
    assert sweep.stderr == ""  # --quiet: no table
    rows = [json.loads(line) for line in sweep.stdout.splitlines()]
    assert [(r["cfg"], r["seed"]) for r in rows[:4]] == [(1, 3), (1, 9), (4, 3), (4, 9)]
    assert [Path(r["path"]).name for r in rows[4:]] == ["grid.png", "metrics.csv", "metrics.json", "metrics.png"]
    alone = run("generate", "a red circle", "-m", str(tiny_model), *FAST, "--cfg", "4", "--seed", "9",
                "-o", str(tmp_path / "alone.png"))  # fmt: skip
    assert alone.exit_code == 0, alone.stderr
    cell = np.asarray(Image.open(tmp_path / "s" / "cfg4-seed9.png"))
    assert (cell == np.asarray(Image.open(tmp_path / "alone.png"))).all()


def test_samplers_as_a_second_axis(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "s"
    result = run("sweep-guidance", "a cat", "-m", str(tiny_model), "--steps", "2", "--sampler", "euler,ddim",
                 "--cfg", "1,7", "--seeds", "1", "--seed", "2", "--out-dir", str(out), "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in out.glob("cfg*.png"))
    assert names == ["cfg1-sampler" + s + "-seed2.png" for s in ("ddim", "euler")] + [
        "cfg7-sampler" + s + "-seed2.png" for s in ("ddim", "euler")
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["axis"] == "sampler" and {c["sampler"] for c in metrics["cells"]} == {"euler", "ddim"}
    assert all(s["diversity"] is None for s in metrics["summary"])  # one seed: no diversity to measure
    assert [(s["sampler"], s["cfg"]) for s in metrics["summary"]] == [("euler", 1), ("euler", 7), ("ddim", 1),
                                                                       ("ddim", 7)]  # fmt: skip
    layout = sheet_layout((16, 16), ["cfg 1", "cfg 7"], ["sampler euler", "sampler ddim"])
    assert Image.open(out / "grid.png").size == layout.size


def test_negative_scales_as_a_second_axis(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "s"
    result = run("sweep-guidance", "a cat", "-m", str(tiny_model), *FAST, "--neg", "blue", "--neg-scale", "0,4",
                 "--cfg", "3", "--seeds", "1", "--seed", "2", "--out-dir", str(out), "--json", "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()][:2]
    assert [(r["neg_mode"], r["neg_scale"]) for r in rows] == [("separate", 0), ("separate", 4)]
    assert sorted(p.name for p in out.glob("cfg*.png")) == ["cfg3-neg-scale0-seed2.png", "cfg3-neg-scale4-seed2.png"]
    plain = run("generate", "a cat", "-m", str(tiny_model), *FAST, "--cfg", "3", "--seed", "2",
                "-o", str(tmp_path / "plain.png"))  # fmt: skip
    assert plain.exit_code == 0, plain.stderr
    # A separate negative at scale 0 subtracts nothing: the image without a negative prompt.
    swept = np.asarray(Image.open(out / "cfg3-neg-scale0-seed2.png"))
    assert (swept == np.asarray(Image.open(tmp_path / "plain.png"))).all()


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    """A 24x16 init image (the tiny model's native size is 16x16)."""
    ramp = Image.linear_gradient("L").resize((24, 16))
    path = tmp_path / "init.png"
    Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM), ramp.point(lambda v: 60))).save(path)
    return path


def test_strengths_as_a_second_axis_from_an_init_image(tiny_model: Path, picture: Path, tmp_path: Path):
    out = tmp_path / "s"
    result = run("sweep-guidance", "a cat", "-m", str(tiny_model), "--steps", "4", "--sampler", "euler", "-i",
                 str(picture), "--strength", "0.5,1", "--cfg", "3", "--seeds", "1", "--seed", "2",
                 "--out-dir", str(out), "--json", "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()][:2]
    assert [(r["strength"], r["init_image"], r["width"], r["height"]) for r in rows] == [
        (0.5, str(picture), 24, 16), (1.0, str(picture), 24, 16),
    ]  # fmt: skip
    assert sorted(p.name for p in out.glob("cfg*.png")) == ["cfg3-strength0.5-seed2.png", "cfg3-strength1-seed2.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["axis"] == "strength" and [c["strength"] for c in metrics["cells"]] == [0.5, 1.0]
    alone = run("generate", "a cat", "-m", str(tiny_model), "--steps", "4", "--sampler", "euler", "-i", str(picture),
                "--strength", "0.5", "--cfg", "3", "--seed", "2", "-o", str(tmp_path / "alone.png"))  # fmt: skip
    assert alone.exit_code == 0, alone.stderr
    swept = np.asarray(Image.open(out / "cfg3-strength0.5-seed2.png"))
    assert (swept == np.asarray(Image.open(tmp_path / "alone.png"))).all()
    layout = sheet_layout((24, 16), ["cfg 3"], ["strength 0.5", "strength 1"])
    assert Image.open(out / "grid.png").size == layout.size


def test_one_strength_is_the_setting_of_every_cell(tiny_model: Path, picture: Path, tmp_path: Path):
    out = tmp_path / "s"
    result = run("sweep-guidance", "a cat", "-m", str(tiny_model), *FAST, "-i", str(picture), "--strength", "0.5",
                 "--cfg", "1,3", "--seeds", "1", "--seed", "2", "--out-dir", str(out), "--json", "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()][:2]
    assert [(r["cfg"], r["strength"], r["unet_evaluations"]) for r in rows] == [(1, 0.5, 1), (3, 0.5, 2)]
    assert json.loads((out / "metrics.json").read_text())["axis"] is None
    assert sorted(p.name for p in out.glob("cfg*.png")) == ["cfg1-seed2.png", "cfg3-seed2.png"]


@pytest.mark.parametrize(
    ("make", "args", "words"),
    [
        ("text", [], ["not a readable image"]),
        ("missing", [], ["does not exist"]),
        (None, ["--strength", "0.3,0.5"], ["--strength", "--init-image"]),
        ("ok", ["--strength", "0.2,0.5", "--steps", "4"], ["--strength 0.2", "runs no step"]),
        ("ok", ["--strength", "0.5,1.5"], ["--strength", "at most 1"]),
        ("ok", ["--strength", "0.3,x"], ["--strength"]),
        ("ok", ["--strength", "0.3,0.5", "--sampler", "euler,ddim"], ["--sampler and --strength", "second axis"]),
    ],
)
def test_bad_init_images_and_strengths_are_refused_before_any_work(
    tiny_model: Path, picture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, args, words
):
    monkeypatch.setattr("sdcli.workflows.sweep.load_for", pytest.fail)  # refused before the model loads
    path = {"ok": picture, "text": tmp_path / "notes.txt", "missing": tmp_path / "missing.png"}.get(make)
    (tmp_path / "notes.txt").write_text("not a picture")
    init = ["-i", str(path)] if path is not None else []
    result = run("sweep-guidance", "a cat", "-m", str(tiny_model), *init, *args, "--out-dir", str(tmp_path / "s"))
    assert result.exit_code == 2, result.stderr
    assert all(word in result.stderr for word in words) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "s").exists()


def test_shapes_model_is_judged_on_the_attributes_the_prompt_names(tiny_model: Path, tmp_path: Path):
    shapes = tmp_path / "shapes"  # a model folder named like the built-in one gets its judge
    shutil.copytree(tiny_model, shapes)
    out = tmp_path / "s"
    result = run("sweep-guidance", "a red shape", "-m", str(shapes), *FAST, "--cfg", "1,3", "--seeds", "2",
                 "--out-dir", str(out), "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["adherence_measure"] == "judged colour"
    for cell in metrics["cells"]:
        verdict_ok = judged_adherence(Image.open(cell["path"]), {"colour": "red"})
        assert cell["adherence"] == float(verdict_ok)
    for summary in metrics["summary"]:
        cells = [c["adherence"] for c in metrics["cells"] if c["cfg"] == summary["cfg"]]
        assert summary["adherence"] == pytest.approx(sum(cells) / len(cells))


def test_clip_model_gives_clip_scores(tiny_model: Path, tiny_clip: Path, tmp_path: Path):
    out = tmp_path / "s"
    result = run("sweep-guidance", "a red circle", "-m", str(tiny_model), *FAST, "--cfg", "1,3", "--seeds", "1",
                 "--clip-model", str(tiny_clip), "--out-dir", str(out), "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["adherence_measure"] == "clip score"
    scorer = ClipScorer(tiny_clip)
    for cell in metrics["cells"]:
        assert cell["adherence"] == pytest.approx(scorer([Image.open(cell["path"])], "a red circle")[0], abs=1e-3)


def test_guidance_methods_as_a_second_axis(tiny_model: Path, tmp_path: Path):
    """cfg, apg, cfgpp and pag as rows: each cell is generate's image with its method's settings, cfgpp's at the
    lambda of its column, pag's at the default S; a summary per method and scale."""
    out = tmp_path / "s"
    result = run("sweep-guidance", "a cat", "-m", str(tiny_model), *FAST, "--method", "cfg,apg,cfgpp,pag",
                 "--cfg", "1,4", "--cfgpp-scales", "0.2,0.8", "--seeds", "2", "--seed", "3", "--out-dir", str(out),
                 "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.glob("cfg*.png")) == sorted(
        f"cfg{c}-method{m}-seed{s}.png" for m, scales in (("cfg", (1, 4)), ("apg", (1, 4)), ("cfgpp", (0.2, 0.8)),
                                                          ("pag", (1, 4))) for c in scales for s in (3, 4)
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["axis"] == "method"
    assert [(s["method"], s["cfg"], s["images"]) for s in metrics["summary"]] == [
        ("cfg", 1, 2), ("cfg", 4, 2), ("apg", 1, 2), ("apg", 4, 2), ("cfgpp", 0.2, 2), ("cfgpp", 0.8, 2),
        ("pag", 1, 2), ("pag", 4, 2),
    ]  # fmt: skip
    for name, settings in (("cfg4-methodapg-seed4.png", ["--cfg", "4", "--apg"]),
                           ("cfg0.8-methodcfgpp-seed4.png", ["--cfg", "0.8", "--sampler", "euler-cfgpp"]),
                           ("cfg4-methodpag-seed4.png", ["--cfg", "4", "--pag-scale", "3"])):  # fmt: skip
        alone = run("generate", "a cat", "-m", str(tiny_model), *FAST, *settings, "--seed", "4",
                    "-o", str(tmp_path / "alone.png"), "--overwrite")  # fmt: skip
        assert alone.exit_code == 0, alone.stderr
        assert (np.asarray(Image.open(out / name)) == np.asarray(Image.open(tmp_path / "alone.png"))).all(), name
    layout = sheet_layout((16, 16), ["cfg 1, cfgpp 0.2", "cfg 4, cfgpp 0.8"], [f"method {m}, seed {s}"
                          for m in ("cfg", "apg", "cfgpp", "pag") for s in (3, 4)])  # fmt: skip
    assert Image.open(out / "grid.png").size == layout.size
    assert not (out / "frontier.png").exists()  # no world to measure recall against


def test_a_method_sweep_plans_each_row_on_its_own_scales(tiny_model: Path):
    base = Request.of(prompt="a cat", model=str(tiny_model), sampler="euler", seed=0)
    sweep = Sweep(base, (1, 7.5), (0,), METHOD, ("cfg", "cfgpp"), row_scales=(("cfgpp", (0.3, 0.9)),))
    assert sweep.cells == [(1, "cfg", 0, 0), (0.3, "cfgpp", 0, 1), (7.5, "cfg", 0, 0), (0.9, "cfgpp", 0, 1)]
    assert [sweep.column_label(i) for i in range(2)] == ["cfg 1, cfgpp 0.3", "cfg 7.5, cfgpp 0.9"]
    recipe = sweep.cell_recipe(0.9, "cfgpp", 0)
    assert (recipe.sampler, recipe.cfg, recipe.apg) == ("euler-cfgpp", 0.9, False)
    assert sweep.cell_recipe(7.5, "cfg", 0).sampler == "euler"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "cfg,cfgpp", "--sampler", "euler"], "--cfgpp-scales"),
        (["--method", "cfg,apg", "--cfgpp-scales", "0.5"], "--cfgpp-scales"),
        (["--method", "cfg,cfgpp", "--sampler", "euler", "--cfg", "1,3", "--cfgpp-scales", "0.5"], "one per column"),
        (["--method", "cfg,cfgpp", "--sampler", "euler", "--cfg", "1", "--cfgpp-scales", "2"], "lambda"),
        (["--method", "cfg,cfgpp", "--cfg", "1", "--cfgpp-scales", "0.5"], "--sampler euler or euler-a"),
        (["--method", "cfg,nope"], "'nope' is not a guidance method"),
        (["--method", "cfg,apg", "--apg"], "leave out --apg"),
        (["--method", "cfg,apg", "--pag-scale", "2"], "add pag to --method"),
        (["--method", "cfg,apg", "--sampler", "euler,ddim"], "second axis"),
    ],
)
def test_bad_method_sweeps_are_refused_before_any_work(tiny_model: Path, tmp_path: Path, args: list[str], message):
    result = run("sweep-guidance", "a cat", "-m", str(tiny_model), *args, "--out-dir", str(tmp_path / "s"))
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "s").exists()


def test_a_shapes_model_with_its_classifier_is_measured_against_its_world(tiny_model: Path, tmp_path: Path):
    """A copy named shapes that ships a classifier/ has a world: per scale, FID, precision, recall and coverage of
    its images against the world's draw for the prompt, in that classifier's feature space; and the frontier."""
    shapes = tmp_path / "shapes"
    shutil.copytree(tiny_model, shapes)
    torch.manual_seed(0)
    NoisyClassifier(heads=HEADS, block_out_channels=(8, 16), norm_num_groups=4).save_pretrained(
        shapes / "classifier", safe_serialization=True
    )
    out = tmp_path / "s"
    result = run("sweep-guidance", "a red shape", "-m", str(shapes), *FAST, "--cfg", "1,3", "--seeds", "5",
                 "--seed", "0", "--out-dir", str(out), "--batch-size", "5")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (out / "frontier.png").exists() and str(out / "frontier.png") in result.stdout
    assert "fid" in result.stderr and "coverage" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    world = ShapesWorld(shapes)
    reference = sweep_reference(world, "a red shape", 5)
    for summary in metrics["summary"]:
        images = [Image.open(c["path"]) for c in metrics["cells"] if c["cfg"] == summary["cfg"]]
        expected = distribution_scores(world, reference, images, "a red shape")
        assert [summary[k] for k in ("fid", "precision", "recall", "coverage")] == pytest.approx(
            [expected.fid, expected.precision, expected.recall, expected.coverage]
        )
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r["kind"] == "summary"]
    assert float(rows[1]["fid"]) == pytest.approx(metrics["summary"][1]["fid"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cfg", "1:x:2"], "--cfg"),
        (["--seeds", "0"], "--seeds"),
        (["--sampler", "euler,nope"], "nope"),
        (["--sampler", "euler,ddim", "--neg", "x", "--neg-scale", "1,2"], "second axis"),
        (["--clip-model", "/nonexistent/clip"], "--clip-model"),
    ],
)
def test_bad_sweeps_are_refused_before_any_work(tiny_model: Path, tmp_path: Path, args: list[str], message: str):
    result = run("sweep-guidance", "a cat", "-m", str(tiny_model), *args, "--out-dir", str(tmp_path / "s"))
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_existing_sweep_is_not_overwritten(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "grid.png").write_bytes(b"keep")
    result = run("sweep-guidance", "a cat", "-m", str(tiny_model), *FAST, "--cfg", "1", "--seeds", "1",
                 "--out-dir", str(out))  # fmt: skip
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["grid.png"] and (out / "grid.png").read_bytes() == b"keep"


SHAPES = Path(__file__).resolve().parents[1] / "src" / "sdcli" / "models" / "shapes"


@pytest.mark.slow
@pytest.mark.skipif(not (SHAPES / "model_index.json").exists(), reason="the built-in shapes model is not built")
def test_shapes_model_shows_the_guidance_trade_off(tmp_path: Path):
    """Ho & Salimans 2022, Table 1: adherence rises with w from 1 to its best, diversity falls. The prompt names two
    of the three attributes, so the model is free in the third (and in position and size), which is the freedom that
    guidance takes away; a full caption already pins the image down at w = 1."""
    out = tmp_path / "s"
    result = run("sweep-guidance", "a blue square", "--cfg", "1,3,7.5", "--seeds", "12",
                 "--seed", "0", "--steps", "20", "--batch-size", "12", "--device", "cpu",
                 "--out-dir", str(out), "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    adherence = [s["adherence"] for s in summary]
    spread = [s["diversity"] for s in summary]
    assert max(adherence[1:]) > adherence[0]
    assert max(spread[1:]) < spread[0]
