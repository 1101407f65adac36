"""LoRA: kohya/AUTOMATIC1111 and diffusers/peft files, against diffusers' `load_lora_weights` + `set_adapters` on
the tiny model, several at once, weights changed without reloading, recorded and replayed, and every bad file
refused in one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import save_file
from test_oracle import SEED, STEPS, TOLERANCE, max_difference
from tiny_sd import build_tiny_sdxl, make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import load_for, make_images

PROMPT = "a red circle on a white background"
RANK = 4
BLOCK = "down_blocks.1.attentions.0.transformer_blocks.0"  # the tiny U-Net's cross-attention block (64 channels)


def _pair(down: tuple[int, ...], up: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(down) * 0.3, torch.randn(up) * 0.3


# Module -> (down shape, up shape) for the tiny model: attention and projections, a 3x3 convolution, CLIP's layers.
UNET = {
    **{f"{BLOCK}.attn1.{name}": ((RANK, 64), (64, RANK)) for name in ("to_q", "to_k", "to_v", "to_out.0")},
    f"{BLOCK}.attn2.to_k": ((RANK, 32), (64, RANK)),
    "down_blocks.1.attentions.0.proj_in": ((RANK, 64, 1, 1), (64, RANK, 1, 1)),
    "down_blocks.0.resnets.0.conv1": ((RANK, 32, 3, 3), (32, RANK, 1, 1)),
}
TEXT = {
    **{f"encoder.layers.0.self_attn.{p}": ((RANK, 32), (32, RANK)) for p in ("q_proj", "k_proj", "v_proj", "out_proj")},
    "encoder.layers.1.mlp.fc1": ((RANK, 32), (64, RANK)),
}


def kohya(path: Path, alpha: float = 2.0) -> Path:
    """kohya-ss / AUTOMATIC1111: `lora_unet_<module with _>.lora_down.weight`, `lora_up`, `alpha`; `lora_te_`."""
    tensors = {}
    for prefix, modules in (("lora_unet_", UNET), ("lora_te_text_model_", TEXT)):
        for module, (down, up) in modules.items():
            key = prefix + module.replace(".", "_")
            tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = _pair(down, up)
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, path)
    return path


def peft(path: Path) -> Path:
    """diffusers / peft: `unet.<module>.lora_A.weight`, `lora_B`; `text_encoder.text_model.<module>`; alpha = rank."""
    tensors = {}
    for prefix, modules in (("unet.", UNET), ("text_encoder.text_model.", TEXT)):
        for module, (down, up) in modules.items():
            tensors[f"{prefix}{module}.lora_A.weight"], tensors[f"{prefix}{module}.lora_B.weight"] = _pair(down, up)
    save_file(tensors, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(11)
    folder = tmp_path_factory.mktemp("loras")
    return {"kohya": kohya(folder / "style.safetensors"), "peft": peft(folder / "detail.safetensors")}


def diffusers_image(model: Path, loras: list[tuple[Path, float]]) -> np.ndarray:
    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    for path, _ in loras:
        pipe.load_lora_weights(str(path), adapter_name=path.stem)
    if loras:
        pipe.set_adapters([path.stem for path, _ in loras], [weight for _, weight in loras])
    generator = torch.Generator("cpu").manual_seed(SEED)
    return np.asarray(pipe(PROMPT, num_inference_steps=STEPS, generator=generator).images[0])


def ours(model: Path, loras: list[tuple[Path, float]]) -> np.ndarray:
    request = make_request(PROMPT, model=str(model), seed=SEED, steps=STEPS, sampler="pndm",
                           loras=tuple(f"{path}:{weight}" for path, weight in loras))  # fmt: skip
    (made,) = make_images(load_for(request), request)
    return np.asarray(made.image)


@pytest.mark.parametrize("which", [["kohya"], ["peft"], ["kohya", "peft"]])
def test_images_match_diffusers_load_lora_weights(tiny_model: Path, files: dict[str, Path], which: list[str]):
    loras = [(files[name], weight) for name, weight in zip(which, (0.7, -0.6), strict=False)]
    want = diffusers_image(tiny_model, loras)
    assert max_difference(want, diffusers_image(tiny_model, [])) > 10  # the LoRAs change the image
    assert max_difference(ours(tiny_model, loras), want) <= TOLERANCE


def test_weights_change_without_reloading_and_zero_is_no_lora(tiny_model: Path, files: dict[str, Path]):
    request = make_request(PROMPT, model=str(tiny_model), seed=SEED, steps=2,
                           loras=(f"{files['kohya']}:0.8", str(files["peft"])))  # fmt: skip
    model = load_for(request)
    (with_loras,) = make_images(model, request)
    zero = request.with_recipe(loras=(f"{files['kohya']}:0", f"{files['peft']}:0.0"))
    (at_zero,) = make_images(model, zero)
    plain = make_request(PROMPT, model=str(tiny_model), seed=SEED, steps=2)
    (without,) = make_images(load_for(plain), plain)
    assert np.array_equal(np.asarray(at_zero.image), np.asarray(without.image))
    assert not np.array_equal(np.asarray(with_loras.image), np.asarray(without.image))
    assert at_zero.record.loras == (f"{files['kohya']}:0.0", f"{files['peft']}:0.0")


def generate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["generate", *args])
    return result.exit_code, result.output


def test_recorded_as_a1111_writes_it_and_replayed(tiny_model: Path, files: dict[str, Path], tmp_path: Path):
    out = tmp_path / "one.png"
    code, output = generate(PROMPT, "-m", str(tiny_model), "--lora", f"{files['kohya']}:0.5", "--lora",
                            str(files["peft"]), "--steps", "1", "--seed", "3", "-o", str(out))  # fmt: skip
    assert code == 0, output
    text = Image.open(out).text
    short = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}
    assert f'Lora hashes: "style: {short["kohya"][:12]}, detail: {short["peft"][:12]}"' in text["parameters"]
    record = json.loads(text["sdcli"])
    assert record["loras"] == [f"{files['kohya']}:0.5", f"{files['peft']}:1.0"]
    assert record["loras_sha256"] == [short["kohya"], short["peft"]]
    again = tmp_path / "again.png"
    assert generate("--from", str(out), "-o", str(again))[0] == 0
    assert Image.open(again).text == text
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))
    changed = tmp_path / "changed.png"
    saved = files["peft"].read_bytes()
    try:
        peft(files["peft"])
        code, output = generate("--from", str(out), "-o", str(changed))
    finally:
        files["peft"].write_bytes(saved)
    assert code == 2 and "is not the file this was made with" in output and not changed.exists()


def _bad(folder: Path, case: str) -> list[str]:
    if case == "missing":
        return ["--lora", str(folder / "none.safetensors")]
    if case == "not safetensors":
        (folder / "notes.txt").write_text("hello")
        return ["--lora", str(folder / "notes.txt")]
    if case == "truncated":
        whole = kohya(folder / "cut.safetensors").read_bytes()
        (folder / "cut.safetensors").write_bytes(whole[: len(whole) - 20])
        return ["--lora", str(folder / "cut.safetensors")]
    if case == "pickle":
        torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, folder / "old.pt")
        return ["--lora", str(folder / "old.pt")]
    if case == "not a LoRA":
        save_file({"model.weight": torch.zeros(2)}, folder / "model.safetensors")
        return ["--lora", str(folder / "model.safetensors")]
    if case == "keys that fit no module":
        down, up = _pair((RANK, 64), (64, RANK))
        save_file({"unet.nowhere.to_q.lora_A.weight": down, "unet.nowhere.to_q.lora_B.weight": up},
                  folder / "nowhere.safetensors")  # fmt: skip
        return ["--lora", str(folder / "nowhere.safetensors")]
    if case == "another family":  # SD 1.x's widths: 320 channels, 768 text
        down, up = _pair((RANK, 320), (320, RANK))
        key = f"lora_unet_{BLOCK.replace('.', '_')}_attn1_to_q"
        save_file({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(1.0)},
                  folder / "sd15.safetensors")  # fmt: skip
        return ["--lora", str(folder / "sd15.safetensors")]
    return ["--lora", str(kohya(folder / "twice.safetensors")), "--lora", f"{folder / 'twice.safetensors'}:0.5"]


CASES = {
    "missing": "does not exist",
    "not safetensors": "is not a LoRA file",
    "truncated": "",
    "pickle": "--allow-pickle",
    "not a LoRA": "not a LoRA",
    "keys that fit no module": "does not fit model",
    "another family": "does not fit model",
    "given twice": "given twice",
}


@pytest.mark.parametrize("case", CASES)
def test_bad_loras_are_one_line_and_nothing_is_written(tiny_model: Path, tmp_path: Path, case: str):
    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "out"
    code, output = generate("x", "-m", str(tiny_model), "--steps", "1", "--out-dir", str(out), *_bad(folder, case))
    assert code in (1, 2) and CASES[case] in output, output
    assert len(output.strip().splitlines()) == 1, output
    assert not out.exists()


def test_sdxl_loras_load_into_both_text_encoders_as_diffusers_loads_them(tmp_path: Path):
    folder = build_tiny_sdxl(tmp_path / "sdxl")
    torch.manual_seed(5)
    block = "down_blocks.1.attentions.0.transformer_blocks.1"  # 128 channels, cross-attention over 64 + 128
    modules = {
        "unet.": {f"{block}.attn1.to_q": ((RANK, 128), (128, RANK)), f"{block}.attn2.to_k": ((RANK, 192), (128, RANK))},
        **{
            f"{encoder}.text_model.": {
                f"encoder.layers.0.self_attn.{p}": ((RANK, width), (width, RANK))
                for p in ("q_proj", "k_proj", "v_proj", "out_proj")
            }
            for encoder, width in (("text_encoder", 64), ("text_encoder_2", 128))
        },
    }
    tensors = {}
    for prefix, layers in modules.items():
        for module, (down, up) in layers.items():
            tensors[f"{prefix}{module}.lora_A.weight"], tensors[f"{prefix}{module}.lora_B.weight"] = _pair(down, up)
    path = tmp_path / "xl.safetensors"
    save_file(tensors, path)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(path), adapter_name="xl")
    pipe.set_adapters(["xl"], [0.8])
    assert pipe.get_list_adapters() == {"unet": ["xl"], "text_encoder": ["xl"], "text_encoder_2": ["xl"]}
    generator = torch.Generator("cpu").manual_seed(SEED)
    want = np.asarray(pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5, generator=generator).images[0])
    request = make_request(PROMPT, model=str(folder), seed=SEED, steps=STEPS, sampler="euler", loras=(f"{path}:0.8",))
    (made,) = make_images(load_for(request), request)
    assert max_difference(np.asarray(made.image), want) <= TOLERANCE
