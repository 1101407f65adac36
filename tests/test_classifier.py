"""Classifier guidance (Dhariwal & Nichol 2021): the formula against a hand computation, the gradient of a toy
classifier whose log-probability is known in closed form, target parsing, and end to end on a tiny model that
carries a random noise-aware classifier (scale 0 is bit for bit no guidance; bad use gets one clear line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.errors import UsageError
from sdcli.guidance.classifier import (
    NoisyClassifier,
    classifier_guidance,
    classifier_shift,
    load_classifier,
    log_prob_gradient,
    parse_targets,
)
from sdcli.loading.components import Model, load_model
from sdcli.loading.references import resolve_model
from sdcli.sampling.loop import sigma_of_timestep
from sdcli.shapes.judge import judge

HEADS = {"color": ["red", "green", "blue"], "shape": ["circle", "square"]}
FAST = {"steps": 3, "sampler": "euler", "seed": 7, "width": 16, "height": 16}


def test_the_shift_is_s_sqrt_one_minus_alphabar_times_the_gradient():
    grad = torch.tensor([[[[1.0, -2.0]]]])  # (1, 1, 1, 2)
    shifted = classifier_shift(grad, alphabar=0.36, scale=5.0)  # 5 * sqrt(0.64) = 4
    assert torch.equal(shifted, torch.tensor([[[[4.0, -8.0]]]]))


class LinearClassifier(torch.nn.Module):
    """logits = W @ (sum of x over pixels), one head: grad_x log softmax(logits)[y] = W[y] - softmax(logits) @ W,
    the same at every pixel."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)  # (classes, C)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"color": x.sum(dim=(2, 3)) @ self.weight.T}  # (B, classes)


def test_the_gradient_of_log_p_is_the_closed_form_one():
    torch.manual_seed(0)
    weight = torch.randn(3, 4)
    x = torch.randn(2, 4, 3, 3)
    expected = weight[1] - torch.softmax(x.sum(dim=(2, 3)) @ weight.T, dim=-1) @ weight  # (2, 4)
    with torch.inference_mode():  # as in the denoising loop
        grad = log_prob_gradient(LinearClassifier(weight), {"color": 1}, x, torch.tensor(500))
    torch.testing.assert_close(grad, expected[:, :, None, None].expand(2, 4, 3, 3))


def test_the_guided_prediction_subtracts_the_shift_from_epsilon():
    torch.manual_seed(1)
    alphas_cumprod = torch.linspace(0.99, 0.01, 1000)
    classifier = LinearClassifier(torch.randn(3, 4))
    x, t, eps = torch.randn(1, 4, 2, 2), torch.tensor(250.0), torch.randn(1, 4, 2, 2)
    guided = classifier_guidance(lambda x, t: eps, classifier, {"color": 2}, 3.0, alphas_cumprod)(x, t)
    alphabar = 1 / (1 + sigma_of_timestep(t, alphas_cumprod) ** 2)
    assert alphabar == pytest.approx(alphas_cumprod[250].item(), rel=1e-6)
    grad = log_prob_gradient(classifier, {"color": 2}, x, t)
    torch.testing.assert_close(guided, eps - 3.0 * (1 - alphabar) ** 0.5 * grad)


def test_the_noisy_classifier_has_a_head_per_attribute():
    classifier = NoisyClassifier(heads=HEADS, block_out_channels=(8, 16), norm_num_groups=4)
    logits = classifier(torch.randn(2, 4, 8, 8), torch.tensor([10, 900]))
    assert {name: tuple(v.shape) for name, v in logits.items()} == {"color": (2, 3), "shape": (2, 2)}


def test_targets_are_parsed_against_the_heads():
    assert parse_targets("color=blue, shape=square", HEADS) == {"color": 2, "shape": 1}
    assert parse_targets("shape=circle", HEADS) == {"shape": 0}
    for bad, words in [
        ("colour=red", "HEAD=LABEL"),
        ("color=pink", "color: red, green, blue"),
        ("color=red,color=blue", "twice"),
        (",", "at least one"),
    ]:
        with pytest.raises(UsageError, match=words):
            parse_targets(bad, HEADS)


@pytest.fixture(scope="module")
def with_classifier(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a random noise-aware classifier beside it."""
    folder = tmp_path_factory.mktemp("models") / "tiny-classified"
    shutil.copytree(tiny_model, folder)
    torch.manual_seed(0)
    classifier = NoisyClassifier(heads=HEADS, block_out_channels=(8, 16), norm_num_groups=4)
    classifier.save_pretrained(folder / "classifier", safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def classified(with_classifier: Path) -> Model:
    return load_model(resolve_model(str(with_classifier)), torch.device("cpu"), torch.float32)


def pixels(model: Model, **settings) -> np.ndarray:
    (made,) = make_images(model, make_request("a red circle", **{**FAST, **settings}))
    return np.asarray(made.image).astype(np.int16)


@pytest.mark.parametrize("sampler", ["euler", "euler-a", "ddim", "dpm++2m-sde-karras"])
def test_scale_zero_is_bit_for_bit_no_guidance_and_a_scale_changes_the_image(classified: Model, sampler: str):
    plain = pixels(classified, sampler=sampler)
    assert np.array_equal(plain, pixels(classified, sampler=sampler, classifier="color=red", classifier_scale=0.0))
    steered = pixels(classified, sampler=sampler, classifier="color=red", classifier_scale=50.0)
    assert np.abs(steered - plain).max() > 0


def test_the_classifier_is_loaded_once_in_fp32(classified: Model, with_classifier: Path):
    pixels(classified, classifier="shape=square", classifier_scale=1.0)
    first = classified.classifier
    pixels(classified, classifier="color=green", classifier_scale=1.0)
    assert classified.classifier is first and next(first.parameters()).dtype == torch.float32
    assert isinstance(load_classifier(with_classifier, "tiny", torch.device("cpu")), NoisyClassifier)


def run(*args: str):
    return CliRunner().invoke(app, ["generate", *args])


def test_the_settings_are_recorded(with_classifier: Path, tmp_path: Path):
    out = tmp_path / "c.png"
    result = run("", "-m", str(with_classifier), "--classifier", "color=blue", "-o", str(out), "--steps", "2")
    assert result.exit_code == 0, result.output
    inspected = CliRunner().invoke(app, ["inspect", str(out), "--json"]).stdout
    assert '"classifier": "color=blue"' in inspected and '"classifier_scale": 10.0' in inspected
    again = tmp_path / "again.png"
    assert run("--from", str(out), "-o", str(again)).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("model", "args", "words"),
    [
        ("classified", ["--classifier", "color=pink"], "not HEAD=LABEL of this classifier"),
        ("classified", ["--classifier", "red"], "HEAD=LABEL pairs"),
        ("classified", ["--classifier-scale", "3"], "needs --classifier"),
        ("plain", ["--classifier", "color=red"], "has no noise-aware classifier"),
        ("v", ["--classifier", "color=red"], "needs an epsilon-prediction model"),
    ],
)
def test_bad_classifier_use(
    with_classifier: Path, tiny_model: Path, tiny_v_model: Path, tmp_path: Path, model, args, words
):
    folder = {"classified": with_classifier, "plain": tiny_model, "v": tiny_v_model}[model]
    result = run("a red circle", "-m", str(folder), "--steps", "2", "-o", str(tmp_path / "x.png"), *args)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_sweep_guidance_sweeps_the_classifier_scale_as_its_columns(with_classifier: Path, tmp_path: Path):
    out, fast = tmp_path / "s", ["--steps", "2", "--sampler", "euler", "--seeds", "2", "--seed", "4"]
    result = run_sweep("", "-m", str(with_classifier), *fast, "--classifier", "color=red",
                       "--classifier-scale", "0,20", "--cfg", "1", "--out-dir", str(out), "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("classifier-scale*.png")) == [
        f"classifier-scale{s}-seed{seed}.png" for s in (0, 20) for seed in (4, 5)
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["columns"] == "classifier_scale"
    assert [s["classifier_scale"] for s in metrics["summary"]] == [0, 20]
    # Scale 0 is the unguided image; the prompt is empty and the cfg 1.
    plain = run("", "-m", str(with_classifier), "--steps", "2", "--sampler", "euler", "--cfg", "1", "--seed", "5",
                "-o", str(tmp_path / "plain.png"))  # fmt: skip
    assert plain.exit_code == 0, plain.output
    swept = np.asarray(Image.open(out / "classifier-scale0-seed5.png"))
    assert np.array_equal(swept, np.asarray(Image.open(tmp_path / "plain.png")))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--classifier-scale", "0,5"], "needs --classifier"),
        (["--classifier", "color=red", "--classifier-scale", "0,5", "--cfg", "1,3"], "not both"),
    ],
)
def test_bad_classifier_sweeps(with_classifier: Path, tmp_path: Path, args: list[str], words: str):
    result = run_sweep("", "-m", str(with_classifier), "--out-dir", str(tmp_path / "s"), *args)
    assert result.exit_code == 2 and words in result.output


def run_sweep(*args: str):
    return CliRunner().invoke(app, ["sweep-guidance", *args])


SHAPES = Path(__file__).resolve().parents[1] / "src" / "sdcli" / "models" / "shapes"


@pytest.mark.slow
@pytest.mark.skipif(not (SHAPES / "classifier" / "config.json").exists(), reason="the shapes classifier is not built")
def test_classifier_guidance_steers_the_built_in_model_to_a_colour():
    """Pure classifier guidance (empty prompt, w = 1): at least 80% of 24 seeds show the colour (chance: 1 in 6)."""
    model = load_model(resolve_model("shapes"), torch.device("cpu"), torch.float32)
    settings = {"seed": 0, "num_images": 24, "batch_size": 24, "cfg": 1.0}
    guided = make_images(model, make_request("", classifier="color=purple", **settings))
    unguided = make_images(model, make_request("", **settings))
    purple = [sum(judge(np.asarray(m.image)).colour == "purple" for m in made) for made in (guided, unguided)]
    assert purple[0] >= 0.8 * 24 and purple[1] < purple[0]
