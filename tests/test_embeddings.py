"""Textual inversion: embedding files in AUTOMATIC1111's and diffusers' formats, against diffusers'
`load_textual_inversion` on the tiny models, recorded and replayed, and every bad file refused in one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file, save_file
from test_oracle import SEED, STEPS, TOLERANCE, max_difference
from tiny_sd import build_tiny_sdxl, make_request
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.engine import load_for, make_images
from sdcli.text.prompts import encode_prompt

PROMPT = "a photo of mystyle on a (single:1.2) background"  # `mystyle` two vectors, `single` one
WIDTH = 32  # the tiny model's text encoder


def a1111(folder: Path, name: str, vectors: int, width: int = WIDTH) -> Path:
    """AUTOMATIC1111's .safetensors: `emb_params` (n, D)."""
    path = folder / f"{name}.safetensors"
    save_file({"emb_params": torch.randn(vectors, width)}, path)
    return path


def learned_embeds(folder: Path, name: str) -> Path:
    """diffusers' format, {token: (D,)}, saved under the token's name."""
    path = folder / f"{name}.safetensors"
    save_file({f"<{name}>": torch.randn(WIDTH)}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    torch.manual_seed(7)
    folder = tmp_path_factory.mktemp("embeddings")
    return [a1111(folder, "mystyle", 2), learned_embeds(folder, "single")]


def generate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["generate", *args])
    return result.exit_code, result.output


def test_images_match_diffusers_load_textual_inversion(tiny_model: Path, files: list[Path]):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion([str(p) for p in files], token=[p.stem for p in files])
    request = make_request(
        PROMPT.replace("(single:1.2)", "single"), model=str(tiny_model), seed=SEED, steps=STEPS, sampler="pndm",
        embeddings=tuple(map(str, files)), negative_prompt="mystyle",
    )  # fmt: skip
    model = load_for(request)
    assert len(model.tokenizer) == len(pipe.tokenizer)  # name, name_1, single: as diffusers adds them
    want = pipe(request.recipe.prompt, negative_prompt="mystyle", num_inference_steps=STEPS,
                generator=torch.Generator("cpu").manual_seed(SEED)).images[0]  # fmt: skip
    (made,) = make_images(model, request)
    assert np.asarray(want).std() > 5
    assert max_difference(np.asarray(made.image), np.asarray(want)) <= TOLERANCE


def test_a_multi_vector_token_stands_for_all_its_vectors_whatever_its_case(tiny_model: Path, files: list[Path]):
    model = load_for(make_request("x", model=str(tiny_model), embeddings=(str(files[0]),)))
    ids = model.tokenizer.convert_tokens_to_ids(["mystyle", "mystyle_1"])
    weights = model.text_encoder.get_input_embeddings().weight
    assert torch.equal(weights[ids], load_file(files[0])["emb_params"])
    lower = encode_prompt(model.text_encoders, "a mystyle cat").context
    assert torch.equal(encode_prompt(model.text_encoders, "a MyStyle cat").context, lower)


def test_a1111_pt_loads_with_allow_pickle_only(tiny_model: Path, tmp_path: Path):
    path = tmp_path / "old.pt"
    torch.save({"string_to_param": {"*": torch.randn(1, WIDTH)}, "name": "old", "step": 3}, path)
    code, output = generate("old", "-m", str(tiny_model), "--embedding", str(path), "--out-dir", str(tmp_path / "o"))
    assert code == 2 and "--allow-pickle" in output and not (tmp_path / "o").exists()
    code, output = generate("old", "-m", str(tiny_model), "--embedding", str(path), "--allow-pickle", "--steps", "1",
                            "--out-dir", str(tmp_path / "o"))  # fmt: skip
    assert code == 0, output


def test_recorded_as_a1111_writes_it_and_replayed(tiny_model: Path, files: list[Path], tmp_path: Path):
    out = tmp_path / "one.png"
    code, output = generate(PROMPT, "-m", str(tiny_model), "--embedding-dir", str(files[0].parent), "--steps", "1",
                            "--seed", "3", "-o", str(out))  # fmt: skip
    assert code == 0, output
    text = Image.open(out).text
    short = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest()[:10] for p in files}
    assert f'TI hashes: "mystyle: {short["mystyle"]}, single: {short["single"]}"' in text["parameters"]
    record = json.loads(text["sdcli"])
    assert record["embeddings"] == [str(p) for p in sorted(files)] and record["embedding_dir"] is None
    again = tmp_path / "again.png"
    assert generate("--from", str(out), "-o", str(again))[0] == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))
    changed = tmp_path / "changed.png"
    saved = files[1].read_bytes()
    try:
        save_file({"<single>": torch.zeros(WIDTH)}, files[1])
        code, output = generate("--from", str(out), "-o", str(changed))
    finally:
        files[1].write_bytes(saved)
    assert code == 2 and "is not the file this was made with" in output and not changed.exists()


def test_sdxl_pairs_load_into_both_encoders_as_diffusers_loads_them(tmp_path: Path):
    folder = build_tiny_sdxl(tmp_path / "sdxl")
    pair = {"clip_l": torch.randn(2, 64), "clip_g": torch.randn(2, 128)}
    save_file(pair, tmp_path / "duo.safetensors")
    model = load_for(make_request("x", model=str(folder), embeddings=(str(tmp_path / "duo.safetensors"),)))
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    pipe.load_textual_inversion(pair["clip_l"], token="duo", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(pair["clip_g"], token="duo", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)  # fmt: skip
    theirs, _, pooled, _ = pipe.encode_prompt("a duo circle", device=torch.device("cpu"),
                                              do_classifier_free_guidance=False)  # fmt: skip
    ours = encode_prompt(model.text_encoders, "a duo circle")
    assert torch.equal(ours.context, theirs) and torch.equal(ours.pooled, pooled)


def _bad(tmp_path: Path, case: str) -> list[str]:
    folder = tmp_path / case
    folder.mkdir()
    if case == "missing":
        return ["--embedding", str(folder / "none.safetensors")]
    if case == "not safetensors":
        (folder / "notes.txt").write_text("hello")
        return ["--embedding", str(folder / "notes.txt")]
    if case == "truncated":
        whole = a1111(folder, "cut", 2).read_bytes()
        (folder / "cut.safetensors").write_bytes(whole[: len(whole) - 20])
        return ["--embedding", str(folder / "cut.safetensors")]
    if case == "not an embedding":
        save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, folder / "two.safetensors")
        return ["--embedding", str(folder / "two.safetensors")]
    if case == "wrong family":
        return ["--embedding", str(a1111(folder, "wide", 1, width=768))]
    if case == "a token of the vocabulary":
        return ["--embedding", str(a1111(folder, "x", 1))]  # a token of the vocabulary
    (folder / "other").mkdir()  # two files, one token
    return ["--embedding", str(a1111(folder, "twin", 1)), "--embedding", str(a1111(folder / "other", "twin", 1))]


CASES = {
    "missing": "does not exist",
    "not safetensors": "is not an embedding file",
    "truncated": "",
    "not an embedding": "not a textual inversion embedding",
    "wrong family": "is for text encoders of width (768,) but the model's take (32,)",
    "a token of the vocabulary": "already in tokenizer vocabulary",
    "two with one token": "both give the token 'twin'",
}


@pytest.mark.parametrize("case", CASES)
def test_bad_embeddings_are_one_line_and_nothing_is_written(tiny_model: Path, tmp_path: Path, case: str):
    out = tmp_path / "out"
    code, output = generate("x", "-m", str(tiny_model), "--steps", "1", "--out-dir", str(out), *_bad(tmp_path, case))
    assert code in (1, 2) and CASES[case] in output
    assert len(output.strip().splitlines()) == 1, output
    assert not out.exists()
