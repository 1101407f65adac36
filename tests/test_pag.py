"""Perturbed-attention guidance (Ahn et al. 2024): its place in the one batched call, diffusers' processors set and
taken out around each call, the pixels of diffusers' StableDiffusionPAGPipeline, and the settings it refuses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPAGPipeline, StableDiffusionXLPAGPipeline
from diffusers.models.attention_processor import (
    AttnProcessor2_0,
    PAGCFGIdentitySelfAttnProcessor2_0,
    PAGIdentitySelfAttnProcessor2_0,
)
from test_bad_input import refused
from test_oracle import PROMPT, SEED, STEPS, TOLERANCE, max_difference
from tiny_sd import build_tiny_sdxl, make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.errors import UsageError
from sdcli.guidance.context import GuidanceContext
from sdcli.guidance.pag import pag_guided
from sdcli.guidance.registry import METHODS
from sdcli.loading.components import Model, load_model
from sdcli.loading.references import resolve_model
from sdcli.output.metadata import settings_from_png
from sdcli.recipe import Recipe
from sdcli.sampling.cfgpp import GuidedPrediction
from sdcli.sampling.samplers import get_sampler
from sdcli.text.conditioning import Branches, Conditioning

MID = "mid_block.attentions.0.transformer_blocks.0.attn1"  # the tiny U-Net's mid-block self-attention
UP = [f"up_blocks.0.attentions.{i}.transformer_blocks.0.attn1" for i in (0, 1)]


class ToyDenoiser:
    """pred = x t + the sum of the context + 10 x the row's index in the batch (so each branch is told apart); it
    records, at each call, the context and which of the U-Net's attention layers have which PAG processor."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.calls: list[torch.Tensor] = []
        self.perturbed: list[dict[str, type]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.calls.append(cond.context)
        processors = self.unet.attn_processors.items()
        pag = (PAGCFGIdentitySelfAttnProcessor2_0, PAGIdentitySelfAttnProcessor2_0)
        self.perturbed.append({n.removesuffix(".processor"): type(p) for n, p in processors if isinstance(p, pag)})
        rows = torch.arange(x.shape[0], dtype=x.dtype).view(-1, 1, 1, 1)
        return x * t + cond.context.sum(dim=(1, 2)).view(-1, 1, 1, 1) + 10 * rows


def toy_guided(loaded: Model, with_uncond: bool, **settings: Any) -> tuple[ToyDenoiser, Any]:
    """PAG's registry entry over the toy denoiser for 2 images (contexts summing to 40 and 0), evaluated once at
    x = 1, t = 2."""
    model = ToyDenoiser(loaded.unet)
    cond, uncond = Conditioning(torch.full((2, 5, 8), 1.0)), Conditioning(torch.zeros(2, 5, 8))
    branches = Branches(cond, uncond if with_uncond else None, ())
    context = GuidanceContext(model, branches, Recipe(**settings), torch.ones(1000), loaded)
    return model, pag_guided(context.conditional, context)(torch.ones(2, 4, 3, 3), torch.tensor(2.0))


def test_with_cfg_the_batch_is_uncond_cond_perturbed_in_one_call(loaded: Model):
    model, pred = toy_guided(loaded, with_uncond=True, cfg=3.0, pag_scale=0.5)
    (context,) = model.calls
    assert torch.equal(context, torch.cat([torch.zeros(2, 5, 8), torch.ones(2, 5, 8), torch.ones(2, 5, 8)]))
    # Rows 0-1 uncond (2 + 0, 2 + 10), 2-3 cond (42 + 20, 42 + 30), 4-5 perturbed (42 + 40, 42 + 50):
    # eps_u + w (eps_c - eps_u) + s (eps_c - eps_p) = eps_u + 3 (40 + 20) + 0.5 (-20).
    want = torch.tensor([2.0, 12.0]).view(2, 1, 1, 1) + 3 * 60 - 0.5 * 20
    assert torch.equal(pred, want.expand(2, 4, 3, 3))
    assert model.perturbed == [{MID: PAGCFGIdentitySelfAttnProcessor2_0}]  # in thirds, the last perturbed


def test_without_cfg_the_batch_is_cond_perturbed(loaded: Model):
    model, pred = toy_guided(loaded, with_uncond=False, cfg=1.0, pag_scale=2.0)
    (context,) = model.calls
    assert torch.equal(context, torch.ones(4, 5, 8))
    # eps_c (42 + 0, 42 + 10) + s (eps_c - eps_p) = eps_c + 2 (-20).
    want = torch.tensor([42.0, 52.0]).view(2, 1, 1, 1) - 2 * 20
    assert torch.equal(pred, want.expand(2, 4, 3, 3))
    assert model.perturbed == [{MID: PAGIdentitySelfAttnProcessor2_0}]  # in halves, the last perturbed


def test_a_cfgpp_step_gets_the_unconditional_prediction_as_it_is(loaded: Model):
    _, pred = toy_guided(loaded, with_uncond=True, sampler="euler-cfgpp", cfg=0.5, pag_scale=1.0)
    assert isinstance(pred, GuidedPrediction)
    assert torch.equal(pred.uncond, torch.tensor([2.0, 12.0]).view(2, 1, 1, 1).expand(2, 4, 3, 3))
    assert torch.equal(pred.guided, pred.uncond + 0.5 * 60 - 20)


def test_the_unets_own_processors_are_back_after_each_call(loaded: Model):
    before = loaded.unet.attn_processors
    model, _ = toy_guided(loaded, with_uncond=True, cfg=3.0, pag_scale=1.0, pag_layers="mid,up_blocks.0")
    assert model.perturbed == [dict.fromkeys([MID, *UP], PAGCFGIdentitySelfAttnProcessor2_0)]
    after = loaded.unet.attn_processors
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert isinstance(loaded.unet.get_submodule(MID).processor, AttnProcessor2_0)


def test_pag_comes_in_cfgs_place_and_composes_with_the_interval_and_the_classifier():
    recipe = Recipe(pag_scale=3.0, guidance_interval="1,5", classifier="color=red")
    assert [method.name for method in METHODS if method.applies(recipe)] == ["pag", "interval", "classifier"]
    assert [method.name for method in METHODS if method.applies(Recipe(pag_scale=0.0))] == ["cfg"]


# The exactness contract for PAG: StableDiffusionPAGPipeline's pixels, built with the same layers.


class PAGOracle:
    def __init__(self, folder: Path, pipeline: type = StableDiffusionPAGPipeline, **options: Any):
        self.folder, self.pipeline, self.options = folder, pipeline, options
        self.pipes: dict[str, Any] = {}

    def images(self, sampler: str, layers: str, scale: float, *, cfg: float, n: int = 1, **call: Any) -> np.ndarray:
        """(n, H, W, 3) uint8 of seeds SEED .. SEED + n - 1, the pipeline built with `pag_applied_layers`."""
        if layers not in self.pipes:
            pipe = self.pipeline.from_pretrained(self.folder, pag_applied_layers=layers.split(","), **self.options)
            pipe.set_progress_bar_config(disable=True)
            self.pipes[layers] = pipe
        pipe = self.pipes[layers]
        entry = get_sampler(sampler)
        pipe.scheduler = getattr(diffusers, entry.scheduler).from_config(pipe.scheduler.config, **entry.settings)
        images = pipe(
            PROMPT,
            num_inference_steps=STEPS,
            guidance_scale=cfg,
            pag_scale=scale,
            width=16,
            height=16,
            num_images_per_prompt=n,
            generator=[torch.Generator("cpu").manual_seed(SEED + i) for i in range(n)],
            **call,
        ).images
        return np.stack([np.asarray(image) for image in images])


@pytest.fixture(scope="module")
def oracles(tiny_model: Path, tiny_v_model: Path) -> dict[str, PAGOracle]:
    return {"epsilon": PAGOracle(tiny_model), "v_prediction": PAGOracle(tiny_v_model)}


def ours(model: Model, sampler: str, layers: str | None, scale: float | None, *, n: int = 1, **settings) -> np.ndarray:
    request = make_request(
        PROMPT, seed=SEED, steps=STEPS, sampler=sampler, pag_scale=scale, pag_layers=layers, width=16, height=16,
        num_images=n, batch_size=n, **settings,
    )  # fmt: skip
    return np.stack([np.asarray(made.image) for made in make_images(model, request)])


PAG_CASES = [  # (sampler, cfg, layers, scale, prediction type, negative prompt)
    ("euler", 7.5, "mid", 3.0, "epsilon", ""),
    ("euler-a", 7.5, "down_blocks.1", 2.0, "epsilon", "blue square"),
    ("dpm++2m-karras", 1.0, "mid", 3.0, "epsilon", ""),
    ("heun", 4.0, "up_blocks.0.attentions.1", 5.0, "epsilon", ""),
    ("ddim", 1.0, "mid,up", 1.5, "v_prediction", ""),
    ("dpm++2m-sde", 7.5, "down_blocks.1,mid", 3.0, "v_prediction", "blue"),
]


@pytest.mark.parametrize("sampler, cfg, layers, scale, prediction, negative", PAG_CASES)
def test_pag_matches_diffusers_pag_pipeline(
    sampler: str,
    cfg: float,
    layers: str,
    scale: float,
    prediction: str,
    negative: str,
    oracles: dict[str, PAGOracle],
    loaded: Model,
    loaded_v: Model,
):
    model = loaded if prediction == "epsilon" else loaded_v
    want = oracles[prediction].images(sampler, layers, scale, cfg=cfg, negative_prompt=negative or None)
    got = ours(model, sampler, layers, scale, cfg=cfg, negative_prompt=negative)
    assert want.std() > 5, "a flat image would make the comparison meaningless"
    assert max_difference(got, want) <= TOLERANCE
    assert max_difference(got, ours(model, sampler, None, None, cfg=cfg, negative_prompt=negative)) > TOLERANCE


@pytest.mark.parametrize("cfg", [7.5, 1.0])
def test_a_batch_of_two_matches_the_pipelines_two_images(cfg: float, oracles: dict[str, PAGOracle], loaded: Model):
    want = oracles["epsilon"].images("euler-a", "mid", 3.0, cfg=cfg, n=2)
    got = ours(loaded, "euler-a", "mid", 3.0, cfg=cfg, n=2)
    assert got.shape == (2, 16, 16, 3)
    assert max_difference(got, want) <= TOLERANCE


def test_cfg_rescale_applies_after_pag_as_the_pipelines_guidance_rescale(oracles: dict[str, PAGOracle], loaded: Model):
    want = oracles["epsilon"].images("euler", "mid", 3.0, cfg=7.5, guidance_rescale=0.7)
    assert max_difference(ours(loaded, "euler", "mid", 3.0, cfg=7.5, cfg_rescale=0.7), want) <= TOLERANCE


@pytest.mark.parametrize("cfg", [5.0, 1.0])
def test_sdxl_matches_diffusers_sdxl_pag_pipeline(cfg: float, tmp_path_factory: pytest.TempPathFactory):
    folder = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")
    want = PAGOracle(folder, StableDiffusionXLPAGPipeline, add_watermarker=False).images("euler", "mid", 3.0, cfg=cfg)
    model = load_model(resolve_model(str(folder)), torch.device("cpu"), torch.float32)
    got = ours(model, "euler", "mid", 3.0, cfg=cfg)
    assert max_difference(got, want) <= TOLERANCE
    assert max_difference(got, ours(model, "euler", None, None, cfg=cfg)) > TOLERANCE


@pytest.mark.parametrize("cfg", [7.5, 1.0])
def test_scale_zero_is_the_image_without_pag_to_the_bit(loaded: Model, cfg: float):
    request = make_request(PROMPT, seed=SEED, steps=STEPS, sampler="euler", cfg=cfg, width=16, height=16)
    (plain,) = make_images(loaded, request)
    (zero,) = make_images(loaded, request.with_recipe(pag_scale=0.0, pag_layers="up"))
    assert np.array_equal(np.asarray(zero.image), np.asarray(plain.image))
    assert zero.unet_evaluations == plain.unet_evaluations


def test_pag_runs_a_third_branch_and_leaves_the_model_as_it_was(loaded: Model):
    request = make_request(PROMPT, seed=SEED, steps=STEPS, sampler="euler", width=16, height=16)
    (before,) = make_images(loaded, request)
    (guided,) = make_images(loaded, request.with_recipe(pag_scale=3.0))
    (after,) = make_images(loaded, request)
    assert (before.unet_evaluations, guided.unet_evaluations) == (2 * STEPS, 3 * STEPS)
    assert np.array_equal(np.asarray(after.image), np.asarray(before.image))
    within = request.with_recipe(pag_scale=3.0, guidance_interval="0%,50%")  # outside: the conditional pass alone
    evaluations = next(iter(make_images(loaded, within))).unet_evaluations
    assert STEPS < evaluations < 3 * STEPS and (evaluations - STEPS) % 2 == 0


def test_the_record_keeps_the_layers_and_from_replays_the_image(tiny_model: Path, tmp_path: Path):
    first, replayed = tmp_path / "first.png", tmp_path / "replayed.png"
    args = ["generate", PROMPT, "-m", str(tiny_model), "--steps", "2", "--sampler", "euler", "--pag-scale", "2.5"]
    result = CliRunner().invoke(app, [*args, "-o", str(first)])
    assert result.exit_code == 0, result.stderr
    settings = settings_from_png(first)
    assert (settings["pag_scale"], settings["pag_layers"]) == (2.5, "mid")  # the default, as it ran
    result = CliRunner().invoke(app, ["generate", "--from", str(first), "-o", str(replayed)])
    assert result.exit_code == 0, result.stderr
    assert replayed.read_bytes() == first.read_bytes()


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"pag_scale": math.nan}, "--pag-scale must be a finite number"),
        ({"pag_layers": "mid"}, "--pag-layers is PAG's: it needs --pag-scale S"),
        ({"pag_scale": 3.0, "pag_layers": " , "}, "--pag-layers needs at least one layer name"),
        ({"pag_scale": 3.0, "pag_layers": "mid,up("}, "--pag-layers 'up(' is not a pattern"),
        ({"pag_scale": 3.0, "apg": True}, "leave out --apg or --pag-scale"),
        ({"pag_scale": 3.0, "neg_mode": "separate"}, "use --neg-mode replace, or leave out --pag-scale"),
    ],
)
def test_bad_pag_settings_are_usage_errors(settings: dict, words: str):
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        Recipe(**settings)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--pag-scale", "3", "--pag-layers", "down.block_1"], ["'down.block_1'", "down_blocks.1.attentions.0"]),
        (["--pag-scale", "nan"], ["--pag-scale", "finite"]),
        (["--pag-layers", "mid"], ["--pag-layers", "--pag-scale"]),
        (["--pag-scale", "3", "--apg"], ["--apg", "--pag-scale"]),
        (["--pag-scale", "3", "--neg-mode", "separate"], ["separate", "--neg-mode replace"]),
    ],
)
def test_the_command_line_refuses_bad_pag_input_in_one_line(tiny_model: Path, tmp_path: Path, args, words):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", "x", "-m", str(tiny_model), *args, "--out-dir", str(out)])
    refused(result, 2, *words)
    assert not out.exists()
