"""ControlNet in sdcli's own loop: the pixels of diffusers' `StableDiffusionControlNetPipeline` with a tiny random
ControlNet (with and without CFG, over part of the steps, a second-order sampler), with PAG's pipeline too, the
record and the replay, and the inputs refused."""

from __future__ import annotations

import hashlib
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
from tiny_sd import build_tiny_sd, build_tiny_sdxl, make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import load_for, make_images
from sdcli.loading.components import Model
from sdcli.modes.controlnet import keeps
from sdcli.output.metadata import parse_infotext, settings_from_png
from sdcli.sampling.samplers import get_sampler

STEPS = 4
SIZE = (24, 16)  # (width, height): not square, and not the control image's size, so it is resized


def short_hash(folder: Path) -> str:
    """AUTOMATIC1111's old model hash of a ControlNet folder's weights, as its ControlNet extension writes it after
    the model's name: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits."""
    data = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    return hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


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
    return load_for(make_request(PROMPT, model=str(tiny_model), control_nets=(str(tiny_controlnet),),
                                 control_images=(str(control_image),)))  # fmt: skip


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
    """One image with the ControlNet `net`; control_scale, control_start and control_end as one-item groups."""
    for name in ("control_scale", "control_start", "control_end"):
        if name in settings:
            settings[name + "s"] = (settings.pop(name),)
    request = make_request(PROMPT, seed=SEED, steps=STEPS, sampler=sampler, width=SIZE[0], height=SIZE[1],
                           control_nets=(str(net),), control_images=(str(control_image),), **settings)  # fmt: skip
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


@pytest.mark.parametrize("cfg", [7.5, 1.0])
def test_sdxl_matches_diffusers_sdxl_controlnet_pipeline(tmp_path_factory: pytest.TempPathFactory, control_image: Path,
                                                         cfg: float):  # fmt: skip
    from diffusers import StableDiffusionXLControlNetPipeline

    root = tmp_path_factory.mktemp("sdxl-controlnet")
    folder = build_tiny_sdxl(root / "sdxl")
    net = build_controlnet(UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), root / "cn")
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
        folder, controlnet=ControlNetModel.from_pretrained(net), add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    want = oracle_image(pipe, "euler", control_image, guidance_scale=cfg, controlnet_conditioning_scale=0.8,
                        control_guidance_end=0.75)  # fmt: skip
    model = load_for(make_request(PROMPT, model=str(folder), control_nets=(str(net),),
                                  control_images=(str(control_image),)))  # fmt: skip
    got = ours(model, net, control_image, cfg=cfg, control_scale=0.8, control_end=0.75)
    plain = ours(model, net, control_image, cfg=cfg, control_scale=0.0)
    assert got.shape == (SIZE[1], SIZE[0], 3) and want.std() > 5
    assert max_difference(got, plain) > 10  # the ControlNet steers SDXL's U-Net...
    assert max_difference(got, want) <= TOLERANCE  # ...as diffusers' SDXL ControlNet pipeline does


def test_the_hires_fix_runs_the_controlnet_in_both_passes_its_image_at_each_size(
    loaded: Model, controlled: Model, tiny_controlnet: Path, control_image: Path
):
    seen: list[tuple[int, ...]] = []  # the control image's shape at each ControlNet call
    network = controlled.controlnets[0].network
    hook = network.register_forward_pre_hook(lambda _, a, kw: seen.append(tuple(kw["controlnet_cond"].shape)),
                                             with_kwargs=True)  # fmt: skip
    hires = {"hires_scale": 2.0, "hires_steps": 4, "hires_strength": 0.5}  # the second pass: 2 of 4 steps
    try:
        with_net = ours(controlled, tiny_controlnet, control_image, cfg=1.0, **hires)
    finally:
        hook.remove()
    height, width = SIZE[1], SIZE[0]
    assert seen == [(1, 3, height, width)] * STEPS + [(1, 3, 2 * height, 2 * width)] * 2
    assert with_net.shape == (2 * height, 2 * width, 3)
    plain = make_request(PROMPT, seed=SEED, steps=STEPS, sampler="euler", width=width, height=height, cfg=1.0, **hires)
    (without,) = make_images(loaded, plain)
    assert max_difference(with_net, np.asarray(without.image)) > 20
    assert np.array_equal(  # scale 0 in both passes: bit for bit the hires fix without it
        ours(controlled, tiny_controlnet, control_image, cfg=1.0, control_scale=0.0, **hires), np.asarray(without.image)
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
                "control_nets": (str(tiny_controlnet),), "control_images": (str(control_image),)}  # fmt: skip
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
    assert row["control_nets"] == [str(tiny_controlnet.resolve())] and row["control_images"] == [str(copy.resolve())]
    weights = tiny_controlnet / "diffusion_pytorch_model.safetensors"
    assert row["control_nets_sha256"] == [hashlib.sha256(weights.read_bytes()).hexdigest()]  # the folder's weights
    assert len(row["control_images_sha256"][0]) == 64
    assert (row["control_scales"], row["control_starts"], row["control_ends"]) == ([0.8], [0.0], [0.75])
    with Image.open(out) as image:
        assert (
            f'ControlNet 0: "Module: none, Model: tiny-controlnet [{short_hash(tiny_controlnet)}], Weight: 0.8, '
            'Resize Mode: Just Resize, Guidance Start: 0, Guidance End: 0.75, Control Mode: Balanced"'
        ) in image.text["parameters"]
    replay = run("generate", "--from", str(out), "-o", str(again))
    assert replay.exit_code == 0, replay.stderr
    assert again.read_bytes() == out.read_bytes()
    # The control image changed since: refused, naming it.
    Image.new("RGB", (30, 20), "white").save(copy)
    refused(run("generate", "--from", str(out), "-o", str(tmp_path / "a.png")), 2, "--control-image", "sha256")
    assert not (tmp_path / "a.png").exists()


def test_a_controlnet_folder_whose_weights_changed_is_refused_on_replay(
    tiny_model: Path, tiny_controlnet: Path, second_controlnet: Path, control_image: Path, tmp_path: Path
):
    import shutil

    net, out = tmp_path / "net", tmp_path / "out.png"
    shutil.copytree(tiny_controlnet, net)
    result = run("generate", PROMPT, "-m", str(tiny_model), "--control-net", str(net), "--control-image",
                 str(control_image), "--steps", "2", "--width", "24", "--height", "16", "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    weights = "diffusion_pytorch_model.safetensors"
    (net / weights).write_bytes((second_controlnet / weights).read_bytes())  # retrained in place, as it were
    refused(run("generate", "--from", str(out), "-o", str(tmp_path / "a.png")), 2, "--control-net", "sha256")
    assert not (tmp_path / "a.png").exists()


def write_record(path: Path, record: dict, pixels: np.ndarray) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("sdcli", json.dumps(record))
    Image.fromarray(pixels).save(path, pnginfo=info)


def test_a_record_of_one_controlnet_under_the_old_singular_names_replays_it(
    tiny_model: Path, tiny_controlnet: Path, control_image: Path, tmp_path: Path
):
    out, old, again = tmp_path / "out.png", tmp_path / "old.png", tmp_path / "again.png"
    result = run("generate", PROMPT, "-m", str(tiny_model), "--control-net", str(tiny_controlnet),
                 "--control-image", str(control_image), "--control-scale", "0.8", "--control-start", "0.25",
                 "--steps", "4", "--seed", "3", "--width", "24", "--height", "16", "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as image:
        record = json.loads(image.text["sdcli"])
        pixels = np.asarray(image.convert("RGB"))
    renamed = {"control_nets": "control_net", "control_images": "control_image", "control_scales": "control_scale",
               "control_starts": "control_start", "control_ends": "control_end",
               "control_images_sha256": "control_image_sha256"}  # fmt: skip
    for plural, singular in renamed.items():
        (record[singular],) = record.pop(plural)
    del record["control_nets_sha256"]
    write_record(old, record, pixels)
    replay = run("generate", "--from", str(old), "-o", str(again))
    assert replay.exit_code == 0, replay.stderr
    assert "ignoring" not in replay.stderr
    with Image.open(again) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels)
    assert settings_from_png(again)["control_scales"] == [0.8] and settings_from_png(again)["control_starts"] == [0.25]
    # A record of no ControlNet (control_net null beside the singular defaults) replays as none, without a warning.
    record = {key: value for key, value in record.items() if not key.startswith("control_")}
    record |= {"control_net": None, "control_image": None, "control_scale": 1.0, "control_start": 0.0,
               "control_end": 1.0}  # fmt: skip
    write_record(tmp_path / "none.png", record, pixels)
    assert "control_nets" not in settings_from_png(tmp_path / "none.png")


def test_without_a_controlnet_no_controlnet_is_written(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    result = run("generate", "x", "-m", str(tiny_model), "--steps", "2", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as image:
        assert "ControlNet" not in image.text["parameters"]
    assert settings_from_png(out)["control_nets"] == []


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
        ("a file", 2, ["--control-net", "not a ControlNet file", ".safetensors"]),
        ("no weights", 1, ["could not load the ControlNet"]),
        ("other family", 2, ["another model family", "cross-attention width"]),
        ("scale alone", 2, ["--control-scale", "--control-net"]),
        ("start after end", 2, ["--control-start", "--control-end"]),
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
        "control_nets": (str(tiny_controlnet),),
        "control_images": (str(control_image),),
    }
    model = load_for(make_request(PROMPT, **settings))
    request = make_request(PROMPT, seed=SEED, steps=STEPS, sampler="pndm", init_image=str(init), mask=str(mask),
                           strength=0.75, mask_blur=0, mask_overlay=False, control_scales=(0.5,),
                           **settings)  # fmt: skip
    (made,) = make_images(model, request)
    assert max_difference(np.asarray(made.image), np.asarray(want)) <= TOLERANCE


# Several ControlNets: diffusers' MultiControlNetModel, its lists of images, scales, starts and ends.


@pytest.fixture(scope="module")
def second_controlnet(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    return build_controlnet(unet, tmp_path_factory.mktemp("controlnet") / "second-controlnet", seed=1)


@pytest.fixture(scope="module")
def second_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20x20 blob picture, unlike the edges: each ControlNet gets its own."""
    pixels = np.zeros((20, 20, 3), dtype=np.uint8)
    pixels[5:15, 5:15] = (40, 220, 90)
    path = tmp_path_factory.mktemp("control") / "blob.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def two_nets(tiny_model: Path, tiny_controlnet: Path, second_controlnet: Path, control_image: Path, second_image: Path):
    nets = (str(tiny_controlnet), str(second_controlnet))
    images = (str(control_image), str(second_image))
    return nets, images, load_for(make_request(PROMPT, model=str(tiny_model), control_nets=nets, control_images=images))


TWO_CASES = [  # (sampler, cfg, scales, starts, ends)
    ("euler", 7.5, (1.0, 0.6), (0.0, 0.0), (1.0, 1.0)),
    ("euler-a", 5.0, (0.8, 1.2), (0.0, 0.5), (0.5, 1.0)),  # one net over the first half, the other the second
    ("dpm++2m", 1.0, (1.5, 0.5), (0.25, 0.0), (1.0, 0.75)),  # no CFG
]


@pytest.mark.parametrize(("sampler", "cfg", "scales", "starts", "ends"), TWO_CASES)
def test_two_controlnets_match_diffusers_multicontrolnet(
    tiny_model: Path, second_image: Path, control_image: Path, two_nets, sampler, cfg, scales, starts, ends
):
    nets, images, model = two_nets
    controlnets = [ControlNetModel.from_pretrained(net) for net in nets]
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_model, controlnet=controlnets, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.controlnet).__name__ == "MultiControlNetModel"
    entry = get_sampler(sampler)
    pipe.scheduler = getattr(diffusers, entry.scheduler).from_config(pipe.scheduler.config, **entry.settings)
    with Image.open(control_image) as first, Image.open(second_image) as second:
        want = pipe(PROMPT, image=[first.convert("RGB"), second.convert("RGB")], width=SIZE[0], height=SIZE[1],
                    num_inference_steps=STEPS, guidance_scale=cfg, controlnet_conditioning_scale=list(scales),
                    control_guidance_start=list(starts), control_guidance_end=list(ends),
                    generator=torch.Generator("cpu").manual_seed(SEED)).images[0]  # fmt: skip
    request = make_request(PROMPT, seed=SEED, steps=STEPS, sampler=sampler, width=SIZE[0], height=SIZE[1], cfg=cfg,
                           control_nets=nets, control_images=images, control_scales=scales, control_starts=starts,
                           control_ends=ends)  # fmt: skip
    (made,) = make_images(model, request)
    want = np.asarray(want)
    assert want.std() > 5 and max_difference(np.asarray(made.image), want) <= TOLERANCE


def test_each_controlnet_counts_and_a_zero_scale_drops_one(
    controlled: Model, two_nets, tiny_controlnet: Path, control_image: Path
):
    nets, images, model = two_nets
    settings = {"seed": SEED, "steps": STEPS, "sampler": "euler", "width": SIZE[0], "height": SIZE[1]}
    (both,) = make_images(model, make_request(PROMPT, control_nets=nets, control_images=images, **settings))
    (first_only,) = make_images(
        model, make_request(PROMPT, control_nets=nets, control_images=images, control_scales=(1.0, 0.0), **settings)
    )
    alone = ours(controlled, tiny_controlnet, control_image)
    assert max_difference(np.asarray(both.image), alone) > 5
    assert np.array_equal(np.asarray(first_only.image), alone)


def test_one_scale_start_end_stands_for_all(two_nets):
    nets, images, model = two_nets
    settings = {"seed": SEED, "steps": STEPS, "sampler": "euler", "width": SIZE[0], "height": SIZE[1],
                "control_nets": nets, "control_images": images}  # fmt: skip
    (once,) = make_images(model, make_request(PROMPT, control_scales=(0.7,), control_ends=(0.5,), **settings))
    (each,) = make_images(model, make_request(PROMPT, control_scales=(0.7, 0.7), control_ends=(0.5, 0.5), **settings))
    assert np.array_equal(np.asarray(once.image), np.asarray(each.image))
    assert once.record.control_scales == (0.7, 0.7) and once.record.control_starts == (0.0, 0.0)


def test_two_controlnets_on_the_command_line_are_recorded_and_replayed(
    tiny_model: Path, tiny_controlnet: Path, second_controlnet: Path, control_image: Path, second_image: Path,
    tmp_path: Path,
):  # fmt: skip
    out, again = tmp_path / "out.png", tmp_path / "again.png"
    result = run("generate", PROMPT, "-m", str(tiny_model),
                 "--control-net", str(tiny_controlnet), "--control-image", str(control_image),
                 "--control-scale", "0.8",
                 "--control-net", str(second_controlnet), "--control-image", str(second_image),
                 "--control-scale", "0.5",
                 "--control-start", "0.25", "--steps", "4", "--seed", "3", "--width", "24", "--height", "16",
                 "-o", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["control_nets"] == [str(tiny_controlnet.resolve()), str(second_controlnet.resolve())]
    assert row["control_images"] == [str(control_image.resolve()), str(second_image.resolve())]
    assert [len(sha) for sha in row["control_images_sha256"]] == [64, 64]
    assert (row["control_scales"], row["control_starts"], row["control_ends"]) == ([0.8, 0.5], [0.25, 0.25], [1, 1])
    with Image.open(out) as image:
        text = image.text["parameters"]
    assert (
        f'ControlNet 0: "Module: none, Model: tiny-controlnet [{short_hash(tiny_controlnet)}], Weight: 0.8, '
        'Resize Mode: Just Resize, Guidance Start: 0.25, Guidance End: 1, Control Mode: Balanced", '
        f'ControlNet 1: "Module: none, Model: second-controlnet [{short_hash(second_controlnet)}], Weight: 0.5, '
        'Resize Mode: Just Resize, Guidance Start: 0.25, Guidance End: 1, Control Mode: Balanced"'
    ) in text
    params = parse_infotext(text)
    names = (f"tiny-controlnet [{short_hash(tiny_controlnet)}]", f"second-controlnet [{short_hash(second_controlnet)}]")
    for i, (name, weight) in enumerate(zip(names, (0.8, 0.5), strict=True)):
        # as the extension's parse_unit reads a unit: items split at "," and ": "
        unit = dict(item.strip().split(": ") for item in params[f"ControlNet {i}"].split(","))
        assert (unit["Model"], float(unit["Weight"]), float(unit["Guidance Start"])) == (name, weight, 0.25)
    replay = run("generate", "--from", str(out), "-o", str(again))
    assert replay.exit_code == 0, replay.stderr
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("more", "words"),
    [
        ("--control-image B", ["2 --control-net but 1 --control-image", "once per --control-net"]),
        ("--control-image A --control-image B --control-scale 1 --control-scale 1 --control-scale 1",
         ["2 --control-net but 3 --control-scale", "once for all of them"]),
        ("--control-image A --control-image B --control-end 0.5 --control-end 0.1 --control-start 0.2",
         ["--control-start 0.2 must be below --control-end 0.1", "of --control-net 2"]),
        ("--control-image A --control-image text", ["--control-image", "not a readable image"]),
    ],
)  # fmt: skip
def test_bad_groups_of_controlnets(tiny_model: Path, tiny_controlnet: Path, second_controlnet: Path,
                                   control_image: Path, tmp_path: Path, more: str, words: list[str]):  # fmt: skip
    (tmp_path / "text.png").write_text("not a picture")
    names = {"A": str(control_image), "B": str(control_image), "text": str(tmp_path / "text.png")}
    more = [names.get(arg, arg) for arg in more.split()]
    out = tmp_path / "out"
    nets = ["--control-net", str(tiny_controlnet), "--control-net", str(second_controlnet)]
    refused(run("generate", "x", "-m", str(tiny_model), *nets, *more, "--steps", "2", "--out-dir", str(out)),
            2, *words)  # fmt: skip
    assert not out.exists()


# Single files: the original ControlNet layout as people share it (control_v11p_sd15_canny.safetensors).

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip


def original_layout(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet's tensors under the original (ldm) names: the inverse of diffusers'
    `convert_controlnet_checkpoint`, which the test that uses it checks."""
    per_block, blocks = config.layers_per_block, len(config.block_out_channels)
    prefixes = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                "conv_in.": "input_blocks.0.0.", "controlnet_mid_block.": "middle_block_out.0.",
                "controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
                "controlnet_cond_embedding.conv_out.": "input_hint_block.14.",
                "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                "mid_block.resnets.1.": "middle_block.2."}  # fmt: skip
    for b in range(blocks):
        for j in range(per_block):
            i = 1 + b * (per_block + 1) + j
            prefixes[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{i}.0."
            prefixes[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{i}.1."
        prefixes[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{1 + b * (per_block + 1) + per_block}.0.op."
    for k in range(len(config.conditioning_embedding_out_channels) * 2):
        prefixes[f"controlnet_cond_embedding.blocks.{k}."] = f"input_hint_block.{2 * k + 2}."
    for k in range(blocks * (per_block + 1)):
        prefixes[f"controlnet_down_blocks.{k}."] = f"zero_convs.{k}.0."
    out = {}
    for key, tensor in state.items():
        prefix = max((p for p in prefixes if key.startswith(p)), key=len)
        rest = key[len(prefix) :]
        if ".resnets." in prefix or prefix.startswith("mid_block.resnets"):
            name, _, tail = rest.partition(".")
            rest = f"{_RESNET[name]}.{tail}"
        out[prefixes[prefix] + rest] = tensor
    return out


@pytest.fixture(scope="module")
def scale8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose VAE has SD's latent scale 8, which the original hint encoder's three downsamplings fit."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-scale8", vae_channels=(32, 32, 32, 32),
                         sample_size=4, seed=3)  # fmt: skip


@pytest.fixture(scope="module")
def scale8_controlnet(scale8_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ControlNet with SD's hint encoder (16, 32, 96, 256), random zero convolutions, as a diffusers folder."""
    unet = UNet2DConditionModel.from_pretrained(scale8_model, subfolder="unet")
    torch.manual_seed(4)
    controlnet = ControlNetModel.from_unet(unet)
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out]:  # fmt: skip
            conv.weight.normal_(0, 0.3)
            conv.bias.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("controlnet") / "tiny-canny"
    controlnet.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("prefix", "suffix"), [("", ".safetensors"), ("control_model.", ".safetensors"),
                                               ("control_model.", ".pth")])  # fmt: skip
def test_a_single_file_controlnet_is_its_folder(
    scale8_model: Path, scale8_controlnet: Path, control_image: Path, tmp_path: Path, prefix: str, suffix: str
):
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import save_file

    controlnet = ControlNetModel.from_pretrained(scale8_controlnet)
    state = controlnet.state_dict()
    original = original_layout(state, controlnet.config)
    assert any(k.startswith("zero_convs.") for k in original) and "input_hint_block.14.weight" in original
    back = convert_controlnet_checkpoint(original, dict(controlnet.config))  # the helper is diffusers' inverse
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], state[k]) for k in state)
    file = tmp_path / f"control_tiny_canny{suffix}"
    tensors = {prefix + k: v.contiguous() for k, v in original.items()}
    if suffix == ".safetensors":
        save_file(tensors, file)
    else:
        torch.save(tensors, file)

    settings = {"model": str(scale8_model), "seed": SEED, "steps": STEPS, "sampler": "euler", "width": 32,
                "height": 32, "control_images": (str(control_image),)}  # fmt: skip
    images = []
    for net in (scale8_controlnet, file):
        request = make_request(PROMPT, control_nets=(str(net),), allow_pickle=suffix == ".pth", **settings)
        model = load_for(request)
        loaded = model.controlnets[0].network.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
        (made,) = make_images(model, request)
        images.append(np.asarray(made.image))
    assert np.array_equal(*images) and images[0].std() > 5
    assert len(made.record.control_nets_sha256[0]) == 64  # a file's sha256 is recorded


def test_a_single_file_controlnet_for_another_family_or_not_a_controlnet_is_refused(
    scale8_model: Path, control_image: Path, tmp_path: Path
):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
               "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(32, 768)}, other)  # fmt: skip
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 32)}, lora)
    pickle = tmp_path / "control.pth"
    torch.save({"input_hint_block.0.weight": torch.zeros(1)}, pickle)
    for net, code, words in ((other, 2, ["another model family", "768"]), (lora, 2, ["not a ControlNet"]),
                             (pickle, 2, ["pickle", "--allow-pickle"])):  # fmt: skip
        out = tmp_path / "out"
        refused(run("generate", "x", "-m", str(scale8_model), "--control-net", str(net), "--control-image",
                    str(control_image), "--steps", "2", "--out-dir", str(out)), code, *words)  # fmt: skip
        assert not out.exists()


def test_a_batch_file_sets_each_line_s_control_images_and_scales(
    tiny_model: Path, tiny_controlnet: Path, second_controlnet: Path, control_image: Path, second_image: Path,
    tmp_path: Path,
):  # fmt: skip
    """The ControlNets load once per batch (the command line's); each line gives its own images (relative to the
    batch file's folder) and scales; a rerun keeps what it made."""
    (tmp_path / "edges.png").write_bytes(control_image.read_bytes())
    (tmp_path / "blob.png").write_bytes(second_image.read_bytes())
    lines = [
        {"prompt": PROMPT, "control_images": ["edges.png", "blob.png"]},
        {"prompt": PROMPT, "control_images": ["blob.png", "edges.png"], "control_scales": [0.5, 1.5]},
    ]
    prompts = tmp_path / "lines.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    nets = ["--control-net", str(tiny_controlnet), "--control-net", str(second_controlnet)]
    args = ["batch", str(prompts), "-m", str(tiny_model), *nets, "--steps", "2", "--width", "24", "--height", "16",
            "--out-dir", str(out)]  # fmt: skip
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["control_images"] for row in rows] == [
        [str(tmp_path / "edges.png"), str(tmp_path / "blob.png")],
        [str(tmp_path / "blob.png"), str(tmp_path / "edges.png")],
    ]
    assert [row["control_scales"] for row in rows] == [[1.0, 1.0], [0.5, 1.5]]
    again = run(*args)
    assert again.exit_code == 0, again.stderr
