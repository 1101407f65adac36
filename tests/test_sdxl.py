"""SDXL in sdcli's own loop, on tiny random SDXL models: two text encoders, the pooled embedding, size conditioning
and `force_zeros_for_empty_prompt`, checked against diffusers' `StableDiffusionXLPipeline` pixel for pixel."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image
from test_bad_input import refused
from test_img2img import Img2ImgOracle, draw_init_image
from test_img2img import ours as ours_img2img
from test_oracle import CASES, PROMPT, SEED, STEPS, TOLERANCE, Oracle, max_difference, ours
from tiny_sd import build_tiny_sdxl, make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import make_images
from sdcli.loading.components import Model, load_model
from sdcli.loading.references import resolve_model
from sdcli.text.prompts import encode_prompt

CPU = torch.device("cpu")
SAMPLERS = ["euler", "euler-a", "dpm++2m-karras", "ddim"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """Two tiny SDXL models with the same weights, by their `force_zeros_for_empty_prompt`."""
    root = tmp_path_factory.mktemp("sdxl")
    return {
        zeros: build_tiny_sdxl(root / f"zeros-{zeros}", force_zeros_for_empty_prompt=zeros) for zeros in (True, False)
    }


@pytest.fixture(scope="module")
def models(folders: dict[bool, Path]) -> dict[bool, Model]:
    return {zeros: load_model(resolve_model(str(folder)), CPU, torch.float32) for zeros, folder in folders.items()}


@pytest.fixture(scope="module")
def oracles(folders: dict[bool, Path]) -> dict[bool, Oracle]:
    return {
        zeros: Oracle(folder, StableDiffusionXLPipeline, add_watermarker=False) for zeros, folder in folders.items()
    }


def test_an_sdxl_folder_loads_both_encoders_and_its_pipeline_config(models: dict[bool, Model]):
    model = models[True]
    assert type(model.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert model.tokenizer_2.pad_token == "!" and model.tokenizer.pad_token == "<|endoftext|>"
    assert model.size_conditioned and model.native_size == (16, 16)
    assert models[True].force_zeros_for_empty_prompt and not models[False].force_zeros_for_empty_prompt


def test_force_zeros_defaults_to_true_as_in_diffusers(folders: dict[bool, Path], tmp_path: Path):
    folder = shutil.copytree(folders[False], tmp_path / "no-key")
    index = json.loads((folder / "model_index.json").read_text())
    del index["force_zeros_for_empty_prompt"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert load_model(resolve_model(str(folder)), CPU, torch.float32).force_zeros_for_empty_prompt


@pytest.mark.parametrize("text", ["a red circle on a white background", "", "zebra unknown words", "red " * 75])
def test_plain_prompts_equal_diffusers_encode_prompt_to_the_bit(models, oracles, text: str):
    theirs = oracles[True].pipe.encode_prompt(text, device=CPU, negative_prompt=text)
    context, negative_context, pooled, negative_pooled = theirs
    ours_ = encode_prompt(models[True].text_encoders, text)
    assert ours_.context.shape == (1, 77, 64 + 128)  # both encoders' penultimate hidden states, side by side
    assert ours_.pooled.shape == (1, 32)  # the second encoder's projection
    assert torch.equal(ours_.context, context) and torch.equal(ours_.pooled, pooled)
    assert torch.equal(ours_.context, negative_context) and torch.equal(ours_.pooled, negative_pooled)


def test_without_long_prompts_an_over_long_prompt_is_truncated_as_diffusers_does(models, oracles):
    text = "red " * 90
    context, _, pooled, _ = oracles[True].pipe.encode_prompt(text, device=CPU, do_classifier_free_guidance=False)
    ours_ = encode_prompt(models[True].text_encoders, text, long_prompts=False)
    assert torch.equal(ours_.context, context) and torch.equal(ours_.pooled, pooled)


def test_a_long_prompt_is_chunked_under_both_encoders_and_pooled_from_its_first_chunk(models):
    encoders = models[True].text_encoders
    words = ["red", "blue"] * 50  # 100 tokens: two chunks
    chunked = encode_prompt(encoders, " ".join(words))
    first, second = encode_prompt(encoders, " ".join(words[:75])), encode_prompt(encoders, " ".join(words[75:]))
    assert chunked.context.shape == (1, 2 * 77, 192)
    assert torch.allclose(chunked.context, torch.cat([first.context, second.context], dim=1), atol=1e-6)
    assert torch.allclose(chunked.pooled, first.pooled, atol=1e-6)


def test_emphasis_weights_the_hidden_states_but_not_the_pooled_embedding(models):
    encoders = models[True].text_encoders
    plain, weighted = encode_prompt(encoders, "a red circle"), encode_prompt(encoders, "a (red:1.5) circle")
    assert torch.equal(weighted.pooled, plain.pooled)
    assert not torch.allclose(weighted.context, plain.context, atol=1e-3)


@pytest.mark.parametrize("zeros", [True, False], ids=["force-zeros", "encoded-empty"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sdxl_matches_diffusers_pipeline(sampler: str, zeros: bool, models, oracles):
    for negative, width, height in CASES:
        want = oracles[zeros].image(sampler, negative=negative, width=width, height=height)
        got = ours(models[zeros], sampler, negative=negative, width=width, height=height)
        assert got.shape == (height, width, 3)
        assert want.std() > 5, "a flat image would make the comparison meaningless"
        assert max_difference(got, want) <= TOLERANCE, (negative, width, height)


@pytest.fixture(scope="module")
def init_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_init_image(tmp_path_factory.mktemp("init"))


@pytest.fixture(scope="module")
def img2img_oracle(folders: dict[bool, Path]) -> Img2ImgOracle:
    return Img2ImgOracle(folders[True], StableDiffusionXLImg2ImgPipeline, add_watermarker=False)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sdxl_img2img_matches_diffusers_img2img_pipeline(sampler: str, models, img2img_oracle, init_image: Path):
    """A base model's img2img (`requires_aesthetics_score` False: the size conditioning of text to image, the
    image's own size), the VAE encoding in its dtype, no `denoising_start`: diffusers' pixels."""
    for strength, negative in ((0.3, ""), (0.8, "blue square"), (0.8, "")):
        want = img2img_oracle.image(sampler, init_image, strength, negative)
        got = ours_img2img(models[True], sampler, init_image, strength, negative)
        assert got.shape == want.shape == (16, 24, 3)
        assert want.std() > 5
        assert max_difference(got, want) <= TOLERANCE, (strength, negative)


def test_force_zeros_changes_only_images_with_an_empty_negative_prompt(models):
    for negative, changes in (("", True), ("blue square", False)):
        images = [ours(models[zeros], "euler", negative=negative, width=16, height=16) for zeros in (True, False)]
        assert (max_difference(*images) > TOLERANCE) == changes, negative


def test_every_branch_gets_its_pooled_embedding_and_the_size_in_one_unet_call(models):
    model = models[True]
    calls: list[dict] = []
    hook = model.unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    try:
        request = make_request(PROMPT, seed=SEED, steps=2, sampler="euler", width=24, height=16, num_images=2,
                          batch_size=2, negative_prompt="blue", neg_mode="separate")  # fmt: skip
        batched = [np.asarray(made.image) for made in make_images(model, request)]
    finally:
        hook.remove()
    added = calls[0]["added_cond_kwargs"]
    assert calls[0]["encoder_hidden_states"].shape == (3 * 2, 77, 192)  # empty, prompt, negative; 2 images each
    assert added["text_embeds"].shape == (6, 32)
    assert torch.equal(added["text_embeds"][:2], torch.zeros(2, 32))  # the empty prompt, zeroed
    assert torch.equal(added["time_ids"], torch.tensor([[16.0, 24, 0, 0, 16, 24]]).repeat(6, 1))  # (H, W, 0, 0, H, W)
    one_by_one = [
        np.asarray(made.image) for made in make_images(model, replace(request, run=replace(request.run, batch_size=1)))
    ]
    # The same noise and conditioning per image; oneDNN may pick another convolution algorithm for another batch
    # size, which can move a value across a rounding step (seen on an AVX-512 CPU: one pixel, one level).
    for a, b in zip(batched, one_by_one, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_the_command_line_writes_the_pipelines_pixels_and_info_says_sdxl(folders, oracles, tmp_path: Path):
    out = tmp_path / "image.png"
    args = ["generate", PROMPT, "-m", str(folders[True]), "--neg", "blue square", "--steps", str(STEPS)]
    args += ["--seed", str(SEED), "--sampler", "dpm++2m-karras", "--width", "24", "--height", "16", "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--dtype", "fp32"])
    assert result.exit_code == 0, result.stderr
    want = oracles[True].image("dpm++2m-karras", negative="blue square", width=24, height=16)
    with Image.open(out) as image:
        assert max_difference(np.asarray(image), want) <= TOLERANCE
    info = json.loads(CliRunner().invoke(app, ["info", str(folders[True]), "--json"]).stdout)
    assert (info["family"], info["width"], info["height"]) == ("sdxl", 16, 16)
    assert set(info["parameters"]) == {"unet", "vae", "text_encoder", "text_encoder_2"}


def test_an_sdxl_folder_without_its_second_encoder_is_one_line(folders, tmp_path: Path):
    folder = shutil.copytree(folders[True], tmp_path / "partial")
    index = json.loads((folder / "model_index.json").read_text())
    index["tokenizer_2"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    result = CliRunner().invoke(app, ["generate", "a cat", "-m", str(folder), "-o", str(tmp_path / "x.png")])
    refused(result, 2, "tokenizer_2", "SDXL")
