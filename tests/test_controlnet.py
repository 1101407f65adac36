"""ControlNet in sdcli's own loop: the pixels of diffusers' `StableDiffusionControlNetPipeline` with a tiny random
ControlNet (with and without CFG, over part of the steps, a second-order sampler), with PAG's pipeline too, the
record and the replay, and the inputs refused."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPAGPipeline,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from test_bad_input import refused
from test_oracle import PROMPT, SEED, TOLERANCE, max_difference
from tiny_sd import make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import load_for, make_images
from sdcli.loading.components import Model
from sdcli.modes.controlnet import keeps
from sdcli.output.metadata import settings_from_png
from sdcli.sampling.samplers import get_sampler

STEPS = 4
SIZE = (24, 16)  # (width, height): not square, and not the control image's size, so it is resized


def build_controlnet(unet: UNet2DConditionModel, folder: Path, seed: int = 0) -> Path:
    """A ControlNet copied from `unet` (one downsampling in its image embedding: the tiny VAE's latent scale is 2),
    its zero convolutions made random so that it changes the image, saved as a diffusers folder."""
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in [*zero_convs, controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(0, 0.3)
            conv.bias.normal_(0, 0.3)
    controlnet.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    return build_controlnet(unet, tmp_path_factory.mktemp("controlnet") / "tiny-controlnet")


@pytest.fixture(scope="module")
def control_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30x20 edge-map-like picture: white lines on black, resized to 24x16 for the output."""
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[4:6, 3:27] = 255
    pixels[6:18, 14:16] = (255, 200, 100)
    path = tmp_path_factory.mktemp("control") / "edges.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def controlled(tiny_model: Path, tiny_controlnet: Path, control_image: Path) -> Model:
    """The tiny model loaded with the ControlNet, as a run loads it."""
    return load_for(make_request(PROMPT, model=str(tiny_model), control_net=str(tiny_controlnet),
                                 control_image=str(control_image)))  # fmt: skip


def oracle_image(pipe, sampler: str, control_image: Path, **call) -> np.ndarray:
    entry = get_sampler(sampler)
    pipe.scheduler = getattr(diffusers, entry.scheduler).from_config(pipe.scheduler.config, **entry.settings)
    with Image.open(control_image) as picture:
        image = pipe(
            PROMPT,
            image=picture.convert("RGB"),
            width=SIZE[0],
            height=SIZE[1],
            num_inference_steps=STEPS,
            generator=torch.Generator("cpu").manual_seed(SEED),
            **call,
        ).images[0]
    return np.asarray(image)


@pytest.fixture(scope="module")
def pipe(tiny_model: Path, tiny_controlnet: Path):
    controlnet = ControlNetModel.from_pretrained(tiny_controlnet)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_model, controlnet=controlnet, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours(model: Model, net: Path, control_image: Path, sampler: str = "euler", **settings) -> np.ndarray:
    request = make_request(PROMPT, seed=SEED, steps=STEPS, sampler=sampler, width=SIZE[0], height=SIZE[1],
                           control_net=str(net), control_image=str(control_image), **settings)  # fmt: skip
    (made,) = make_images(model, request)
    return np.asarray(made.image)


CASES = [  # (sampler, cfg, scale, start, end)
    ("euler", 7.5, 1.0, 0.0, 1.0),
    ("euler", 1.0, 1.0, 0.0, 1.0),  # no CFG: the conditional branch alone
    ("euler-a", 7.5, 0.7, 0.25, 0.75),  # steps 1 and 2 of 4
    ("dpm++2m", 4.0, 1.5, 0.5, 1.0),
    ("heun", 7.5, 1.0, 0.0, 0.6),  # 7 model calls: the pipeline's keep is per call, as sdcli's
]


@pytest.mark.parametrize(("sampler", "cfg", "scale", "start", "end"), CASES)
def test_matches_diffusers_controlnet_pipeline(
    pipe,
    controlled: Model,
    tiny_controlnet: Path,
    control_image: Path,
    sampler: str,
    cfg: float,
    scale: float,
    start: float,
    end: float,
):
    want = oracle_image(pipe, sampler, control_image, guidance_scale=cfg, controlnet_conditioning_scale=scale,
                        control_guidance_start=start, control_guidance_end=end)  # fmt: skip
    got = ours(
        controlled,
        tiny_controlnet,
        control_image,
        sampler,
        cfg=cfg,
        control_scale=scale,
        control_start=start,
        control_end=end,
    )
    assert got.shape == (SIZE[1], SIZE[0], 3) and want.std() > 5
    assert max_difference(got, want) <= TOLERANCE


def test_the_controlnet_changes_the_image_and_scale_0_is_without_it(
    loaded: Model, controlled: Model, tiny_controlnet: Path, control_image: Path
):
    plain = make_request(PROMPT, seed=SEED, steps=STEPS, sampler="euler", width=SIZE[0], height=SIZE[1])
    (without,) = make_images(loaded, plain)
    assert max_difference(ours(controlled, tiny_controlnet, control_image), np.asarray(without.image)) > 20
    assert np.array_equal(
        ours(controlled, tiny_controlnet, control_image, control_scale=0.0), np.asarray(without.image)
    )


def test_pag_with_controlnet_matches_diffusers(tiny_model: Path, tiny_controlnet: Path, controlled: Model,
                                               control_image: Path):  # fmt: skip
    controlnet = ControlNetModel.from_pretrained(tiny_controlnet)
    pag = StableDiffusionControlNetPAGPipeline.from_pretrained(
        tiny_model, controlnet=controlnet, safety_checker=None, pag_applied_layers=["mid"]
    )
    pag.set_progress_bar_config(disable=True)
    want = oracle_image(pag, "euler", control_image, guidance_scale=5.0, pag_scale=3.0)
    got = ours(controlled, tiny_controlnet, control_image, cfg=5.0, pag_scale=3.0)
    assert max_difference(got, want) <= TOLERANCE


def test_a_batch_gives_each_image_as_alone(controlled: Model, tiny_controlnet: Path, control_image: Path):
    settings = {"seed": SEED, "steps": STEPS, "sampler": "euler-a", "width": SIZE[0], "height": SIZE[1],
                "control_net": str(tiny_controlnet), "control_image": str(control_image)}  # fmt: skip
    together = make_images(controlled, make_request(PROMPT, num_images=2, batch_size=2, **settings))
    for i, made in enumerate(together):
        (alone,) = make_images(controlled, make_request(PROMPT, **{**settings, "seed": SEED + i}))
        assert max_difference(np.asarray(made.image), np.asarray(alone.image)) <= TOLERANCE


def test_keeps_are_diffusers():
    n, start, end = 7, 0.2, 0.7
    want = [1.0 - float(i / n < start or (i + 1) / n > end) for i in range(n)]  # the pipeline's controlnet_keep
    assert keeps(n, start, end) == [bool(k) for k in want]


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_the_command_line_records_the_controlnet_and_replays_it(
    tiny_model: Path, tiny_controlnet: Path, control_image: Path, tmp_path: Path
):
    out, again, copy = tmp_path / "out.png", tmp_path / "again.png", tmp_path / "edges.png"
    copy.write_bytes(control_image.read_bytes())
    result = run("generate", PROMPT, "-m", str(tiny_model), "--control-net", str(tiny_controlnet),
                 "--control-image", str(copy), "--control-scale", "0.8", "--control-end", "0.75", "--steps", "4",
                 "--seed", "3", "--width", "24", "--height", "16", "-o", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["control_net"] == str(tiny_controlnet.resolve()) and row["control_image"] == str(copy.resolve())
    assert len(row["control_image_sha256"]) == 64
    assert (row["control_scale"], row["control_start"], row["control_end"]) == (0.8, 0.0, 0.75)
    with Image.open(out) as image:
        assert (
            'ControlNet 0: "Module: none, Model: tiny-controlnet, Weight: 0.8, Resize Mode: Just Resize, '
            'Guidance Start: 0, Guidance End: 0.75, Control Mode: Balanced"'
        ) in image.text["parameters"]
    replay = run("generate", "--from", str(out), "-o", str(again))
    assert replay.exit_code == 0, replay.stderr
    assert again.read_bytes() == out.read_bytes()
    # The control image changed since: refused, naming it.
    Image.new("RGB", (30, 20), "white").save(copy)
    refused(run("generate", "--from", str(out), "-o", str(tmp_path / "a.png")), 2, "--control-image", "sha256")
    assert not (tmp_path / "a.png").exists()


def test_without_a_controlnet_no_controlnet_is_written(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    result = run("generate", "x", "-m", str(tiny_model), "--steps", "2", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as image:
        assert "ControlNet" not in image.text["parameters"]
    assert settings_from_png(out)["control_net"] is None


@pytest.fixture(scope="module")
def other_family_controlnet(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ControlNet for a model whose text encoder is 64 wide, not the tiny model's 32."""
    config = dict(UNet2DConditionModel.load_config(tiny_model, subfolder="unet"), cross_attention_dim=64)
    return build_controlnet(UNet2DConditionModel.from_config(config), tmp_path_factory.mktemp("other") / "cn")


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("no image", 2, ["--control-net", "--control-image IMAGE"]),
        ("no net", 2, ["--control-image", "--control-net MODEL"]),
        ("text image", 2, ["--control-image", "not a readable image"]),
        ("missing image", 2, ["--control-image", "does not exist"]),
        ("empty folder", 2, ["--control-net", "config.json"]),
        ("a U-Net", 2, ["--control-net", "UNet2DConditionModel", "not a ControlNet"]),
        ("a file", 2, ["--control-net", "is a file"]),
        ("no weights", 1, ["could not load the ControlNet"]),
        ("other family", 2, ["another model family", "cross-attention width"]),
        ("scale alone", 2, ["--control-scale", "--control-net"]),
        ("start after end", 2, ["--control-start", "--control-end"]),
        ("hires", 2, ["--hires-scale", "--control-net"]),
    ],
)
def test_bad_controlnet_input(tiny_model: Path, tiny_controlnet: Path, other_family_controlnet: Path,
                              control_image: Path, tmp_path: Path, case: str, code: int, words: list[str]):  # fmt: skip
    net, image, more = ["--control-net", str(tiny_controlnet)], ["--control-image", str(control_image)], []
    if case == "no image":
        image = []
    elif case == "no net":
        net = []
    elif case in ("text image", "missing image"):
        path = tmp_path / "edges.png"
        if case == "text image":
            path.write_text("not a picture")
        image = ["--control-image", str(path)]
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        net = ["--control-net", str(tmp_path / "empty")]
    elif case == "a U-Net":
        net = ["--control-net", str(tiny_model / "unet")]
    elif case == "a file":
        net = ["--control-net", str(control_image)]
    elif case == "no weights":
        (tmp_path / "cn").mkdir()
        (tmp_path / "cn" / "config.json").write_bytes((tiny_controlnet / "config.json").read_bytes())
        net = ["--control-net", str(tmp_path / "cn")]
    elif case == "other family":
        net = ["--control-net", str(other_family_controlnet)]
    elif case == "scale alone":
        net, image, more = [], [], ["--control-scale", "0.5"]
    elif case == "start after end":
        more = ["--control-start", "0.6", "--control-end", "0.5"]
    elif case == "hires":
        more = ["--hires-scale", "2"]
    out = tmp_path / "out"
    refused(run("generate", "x", "-m", str(tiny_model), *net, *image, *more, "--steps", "2", "--out-dir", str(out)),
            code, *words)  # fmt: skip
    assert not out.exists()


def test_the_steps_it_runs_at_matter(controlled: Model, tiny_controlnet: Path, control_image: Path):
    full = ours(controlled, tiny_controlnet, control_image)
    assert max_difference(full, ours(controlled, tiny_controlnet, control_image, control_start=0.5)) > 5
    assert max_difference(full, ours(controlled, tiny_controlnet, control_image, control_end=0.5)) > 5


def test_inpainting_with_controlnet_matches_diffusers(
    tiny_inpaint_model: Path, tiny_controlnet: Path, control_image: Path, tmp_path: Path
):
    """An inpainting U-Net's mask channels are its own: the ControlNet sees the latents alone, as in diffusers'
    StableDiffusionControlNetInpaintPipeline."""
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(init)
    levels = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
    levels[2:12, 4:16] = 255
    Image.fromarray(levels, mode="L").save(mask)
    controlnet = ControlNetModel.from_pretrained(tiny_controlnet)
    pipe = StableDiffusionControlNetInpaintPipeline.from_pretrained(
        tiny_inpaint_model, controlnet=controlnet, safety_checker=None
    )
    pipe.set_progress_bar_config(disable=True)
    with Image.open(init) as picture, Image.open(mask) as mask_image, Image.open(control_image) as control:
        want = pipe(PROMPT, image=picture.convert("RGB"), mask_image=mask_image, control_image=control.convert("RGB"),
                    strength=0.75, width=SIZE[0], height=SIZE[1], num_inference_steps=STEPS, guidance_scale=7.5,
                    controlnet_conditioning_scale=0.5,  # this pipeline's default is 0.5, the others' 1
                    generator=torch.Generator("cpu").manual_seed(SEED)).images[0]  # fmt: skip
    settings = {
        "model": str(tiny_inpaint_model),
        "control_net": str(tiny_controlnet),
        "control_image": str(control_image),
    }
    model = load_for(make_request(PROMPT, **settings))
    request = make_request(PROMPT, seed=SEED, steps=STEPS, sampler="pndm", init_image=str(init), mask=str(mask),
                           strength=0.75, mask_blur=0, mask_overlay=False, control_scale=0.5, **settings)  # fmt: skip
    (made,) = make_images(model, request)
    assert max_difference(np.asarray(made.image), np.asarray(want)) <= TOLERANCE
