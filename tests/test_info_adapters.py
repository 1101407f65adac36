"""`sdcli info FILE` on adapters: a LoRA (kohya's or diffusers'/peft's), a textual inversion embedding or a ControlNet
(a diffusers folder or one safetensors file) says its kind and the family it fits, read from the safetensors header
without torch. Tiny files with the real layouts' keys and widths, small random values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_instant import run_reporting
from typer.testing import CliRunner

from sdcli.cli import app

RANK = 4


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path


def _kohya(prefix: str, width: int, outer: int, rank: int = RANK) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.lora_down.weight": torch.randn(rank, width),
        f"{prefix}.lora_up.weight": torch.randn(outer, rank),
        f"{prefix}.alpha": torch.tensor(float(rank)),
    }


def kohya_lora(path: Path, text_width: int, cross: int, sdxl: bool = False) -> Path:
    unet = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_"
    tensors = _kohya(unet + "attn1_to_q", 32, 32) | _kohya(unet + "attn2_to_k", cross, 32)
    tensors |= _kohya(unet + "attn2_to_v", cross, 32) | _kohya(unet + "ff_net_2", 128, 32, rank=2)
    encoders = {"lora_te1_": 768, "lora_te2_": 1280} if sdxl else {"lora_te_": text_width}
    for te, width in encoders.items():
        for name in ("q_proj", "k_proj", "v_proj"):
            tensors |= _kohya(f"{te}text_model_encoder_layers_0_self_attn_{name}", width, width)
    return _save(path, tensors)


def peft_lora(path: Path, cross: int, text_encoder_2: bool = False) -> Path:
    block = "unet.down_blocks.1.attentions.0.transformer_blocks.0."
    tensors = {}
    for name, width in (("attn1.to_q", 64), ("attn2.to_k", cross), ("attn2.to_v", cross)):
        tensors[f"{block}{name}.lora_A.weight"] = torch.randn(8, width)
        tensors[f"{block}{name}.lora_B.weight"] = torch.randn(64, 8)
    if text_encoder_2:
        tensors["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.randn(8, 1280)
        tensors["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"] = torch.randn(1280, 8)
    return _save(path, tensors)


def info(path: Path, *flags: str) -> dict:
    result = CliRunner().invoke(app, ["info", str(path), "--json", *flags])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "text_width, cross, sdxl, family", [(768, 768, False, "sd1"), (1024, 1024, False, "sd2"), (0, 2048, True, "sdxl")]
)
def test_a_kohya_lora_says_its_family_rank_and_layers(text_width, cross, sdxl, family, tmp_path: Path):
    found = info(kohya_lora(tmp_path / "style.safetensors", text_width, cross, sdxl))
    assert found["kind"] == "lora" and found["format"] == "kohya"
    assert found["family"] == family
    assert found["rank"] == RANK  # the most common: one layer has rank 2
    expected = {"unet": 4} | ({"text_encoder": 3, "text_encoder_2": 3} if sdxl else {"text_encoder": 3})
    assert found["layers"] == expected


@pytest.mark.parametrize("cross, te2, family", [(768, False, "sd1"), (1024, False, "sd2"), (2048, True, "sdxl")])
def test_a_peft_lora_says_its_family_by_cross_attention_width(cross, te2, family, tmp_path: Path):
    found = info(peft_lora(tmp_path / "pytorch_lora_weights.safetensors", cross, te2))
    assert (found["kind"], found["format"], found["family"], found["rank"]) == ("lora", "diffusers", family, 8)
    assert found["layers"] == {"unet": 3} | ({"text_encoder_2": 1} if te2 else {})


@pytest.mark.parametrize(
    "tensors, layout, family, vectors, width",
    [
        ({"emb_params": torch.randn(3, 768)}, "emb_params", "sd1", 3, 768),
        ({"string_to_param.*": torch.randn(2, 1024)}, "string_to_param", "sd2", 2, 1024),
        ({"<cat-toy>": torch.randn(768)}, "{token: tensor}", "sd1", 1, 768),
        ({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, "clip_l and clip_g", "sdxl", 2, 768),
    ],
    ids=["emb_params", "string_to_param", "token", "sdxl"],
)
def test_an_embedding_says_its_token_vectors_width_and_family(tensors, layout, family, vectors, width, tmp_path):
    found = info(_save(tmp_path / "my-style.safetensors", tensors))
    assert found["kind"] == "embedding" and found["format"] == layout
    assert (found["family"], found["token"], found["vectors"], found["width"]) == (family, "my-style", vectors, width)
    assert found.get("width_2") == (1280 if family == "sdxl" else None)


def _controlnet_tensors(cross: int, original: bool) -> dict[str, torch.Tensor]:
    if original:
        return {
            "control_model.input_hint_block.0.weight": torch.randn(16, 3, 3, 3),
            "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.randn(32, cross),
            "control_model.zero_convs.0.0.weight": torch.randn(32, 32, 1, 1),
        }
    return {
        "controlnet_cond_embedding.conv_in.weight": torch.randn(16, 3, 3, 3),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.randn(32, cross),
        "controlnet_down_blocks.0.weight": torch.randn(32, 32, 1, 1),
    }


@pytest.mark.parametrize("original", [False, True, "unprefixed"], ids=["diffusers", "original", "unprefixed"])
@pytest.mark.parametrize("cross, family", [(768, "sd1"), (1024, "sd2"), (2048, "sdxl")])
def test_a_controlnet_file_says_its_family(cross, family, original, tmp_path: Path):
    tensors = _controlnet_tensors(cross, bool(original))
    if original == "unprefixed":  # as some original-layout files are shared: input_hint_block.* at the top
        tensors = {k.removeprefix("control_model."): v for k, v in tensors.items()}
    found = info(_save(tmp_path / "control_canny.safetensors", tensors))
    assert (found["kind"], found["family"], found["cross_attention_width"]) == ("controlnet", family, cross)
    assert found["format"] == ("original" if original else "diffusers")
    assert found["parameters"] == sum(t.numel() for t in tensors.values())


@pytest.mark.parametrize(
    "config, family", [({"cross_attention_dim": 1024}, "sd2"), ({"cross_attention_dim": 2048,
                                                                   "addition_embed_type": "text_time"}, "sdxl")]
)  # fmt: skip
def test_a_controlnet_folder_says_its_family(config, family, tmp_path: Path):
    folder = tmp_path / "controlnet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"} | config))
    tensors = _controlnet_tensors(config["cross_attention_dim"], original=False)
    _save(folder / "diffusion_pytorch_model.safetensors", tensors)
    _save(folder / "diffusion_pytorch_model.fp16.safetensors", {k: v.half() for k, v in tensors.items()})
    found = info(folder)
    assert (found["kind"], found["format"], found["family"]) == ("controlnet", "diffusers folder", family)
    assert found["parameters"] == sum(t.numel() for t in tensors.values())  # the fp16 variant not counted twice


def test_the_text_output_names_the_kind_and_what_it_fits(tmp_path: Path):
    lora = kohya_lora(tmp_path / "style.safetensors", 768, 768)
    text = CliRunner().invoke(app, ["info", str(lora)]).stdout
    assert "lora" in text and "Stable Diffusion 1.x (sd1)" in text and "rank          4" in text
    assert "text_encoder  3 layers" in text
    embedding = _save(
        tmp_path / "sdxl-style.safetensors", {"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}
    )
    text = CliRunner().invoke(app, ["info", str(embedding)]).stdout
    assert "token         sdxl-style" in text and "768 + 1280" in text and "(sdxl)" in text


def test_an_unknown_safetensors_file_is_still_the_models_one_line_error(tmp_path: Path):
    other = _save(tmp_path / "other.safetensors", {"layers.0.weight": torch.zeros(2)})
    result = CliRunner().invoke(app, ["info", str(other)])
    assert result.exit_code == 2 and "no Stable Diffusion U-Net" in result.output


def test_info_on_a_lora_imports_no_model_library(tmp_path: Path):
    lora = kohya_lora(tmp_path / "style.safetensors", 1024, 1024)
    code, heavy, printed = run_reporting("info", str(lora), "--json", cwd=tmp_path)
    assert code in (0, None), printed
    assert heavy == []
    assert json.loads(printed)["family"] == "sd2"


def _kohya_tensors() -> dict[str, torch.Tensor]:
    unet = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_"
    tensors = _kohya(unet + "attn2_to_k", 768, 32) | _kohya(unet + "attn2_to_v", 768, 32)
    return tensors | _kohya("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768)


PICKLED = [  # (file name, what torch.save wrote, kind, format, family, what its names say before unpickling)
    ("my-style.pt", {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(2, 768)}, "name": "my-style",
                     "step": 1000}, "embedding", "string_to_param", "sd1", "a textual inversion embedding"),
    ("learned_embeds.bin", {"<cat-toy>": torch.randn(1024)}, "embedding", "{token: tensor}", "sd2", None),
    ("style.pt", None, "lora", "kohya", "sd1", "a LoRA (kohya's"),
    ("control_canny.pth", _controlnet_tensors(1024, original=True), "controlnet", "original", "sd2",
     "a ControlNet (the original layout)"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "saved", "kind", "layout", "family", "looks"), PICKLED)
def test_a_pickled_adapter_is_read_with_allow_pickle_only(name, saved, kind, layout, family, looks, tmp_path: Path):
    path = tmp_path / name
    torch.save(_kohya_tensors() if saved is None else saved, path)
    found = info(path, "--allow-pickle")
    assert (found["kind"], found["format"], found["family"]) == (kind, layout, family)
    if kind == "lora":
        assert found["rank"] == RANK
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert "pickle" in result.output and "--allow-pickle" in result.output
    if looks is not None:  # learned_embeds.bin's only name is its token: nothing tells its kind before unpickling
        assert f"looks like {looks}" in result.output


def test_a_pickle_is_not_unpickled_without_allow_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "style.pt"
    torch.save(_kohya_tensors(), path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled without --allow-pickle"))
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2 and "looks like a LoRA (kohya's" in result.output
