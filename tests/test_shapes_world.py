"""The shapes world, its judge and its word tokenizer (pure numpy / tokenizer files, no model)."""

import numpy as np
import pytest

from sdcli.shapes.judge import judge
from sdcli.shapes.tokenizer import learn_merges, write_word_tokenizer
from sdcli.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    WORDS,
    Scene,
    full_captions,
    random_caption,
    random_scene,
    render,
    shape_mask,
)


def test_full_captions_cover_the_world():
    captions = full_captions()
    assert len(captions) == 54
    assert ("a red circle on a white background", "red", "circle", "white") in captions


@pytest.mark.parametrize("shape, fill", [("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)])
def test_shapes_fill_their_bounding_box_as_geometry_says(shape, fill):
    mask = shape_mask(Scene(shape, "red", "white", cx=32, cy=32, size=40))
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert box.mean() == pytest.approx(fill, abs=0.04)


def test_random_scenes_stay_inside_the_image_and_in_size_range():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = random_scene(rng)
        assert 0.35 * IMAGE_SIZE <= scene.size <= 0.70 * IMAGE_SIZE
        assert scene.size / 2 <= scene.cx <= IMAGE_SIZE - scene.size / 2
        assert scene.size / 2 <= scene.cy <= IMAGE_SIZE - scene.size / 2
        image = render(scene)
        assert tuple(image[0, 0]) == BACKGROUNDS[scene.background]
        assert (image == COLOURS[scene.colour]).all(axis=-1).sum() == shape_mask(scene).sum()


def test_judge_reads_every_rendered_scene_right():
    rng = np.random.default_rng(2)
    for _ in range(500):
        scene = random_scene(rng)
        verdict = judge(render(scene))
        assert (verdict.shape, verdict.colour, verdict.background) == (scene.shape, scene.colour, scene.background)


def test_judge_survives_noise_and_reports_a_missing_shape():
    rng = np.random.default_rng(3)
    scene = Scene("triangle", "orange", "gray", cx=30, cy=34, size=36)
    noisy = np.clip(render(scene) + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
    verdict = judge(noisy)
    assert (verdict.shape, verdict.colour, verdict.background) == ("triangle", "orange", "gray")
    empty = judge(np.full((64, 64, 3), 20, dtype=np.uint8))
    assert empty.shape is None and empty.colour is None and empty.background == "black"


def test_captions_mix_full_partial_and_empty_forms():
    rng = np.random.default_rng(4)
    scene = Scene("circle", "blue", "black", 32, 32, 30)
    captions = [random_caption(scene, rng) for _ in range(2000)]
    full = "a blue circle on a black background"
    assert 0.45 < captions.count(full) / 2000 < 0.55
    assert 0.07 < captions.count("") / 2000 < 0.13
    partial = set(captions) - {full, ""}
    assert {"blue", "circle", "black background", "a blue circle", "a blue shape"} <= partial
    # every caption only names attributes the scene has
    for caption in partial:
        words = set(caption.split())
        assert words <= set(WORDS)
        assert not words & (set(COLOURS) - {"blue"} | set(SHAPES) - {"circle"} | set(BACKGROUNDS) - {"black"})


def test_word_tokenizer_gives_one_token_per_world_word(tmp_path):
    tokenizer = write_word_tokenizer(list(WORDS), tmp_path)
    for word in WORDS:
        ids = tokenizer(word).input_ids
        assert len(ids) == 3 and tokenizer.convert_ids_to_tokens(ids[1]) == word + "</w>"
    # text outside the world still tokenizes, into characters
    assert len(tokenizer("a pink dog").input_ids) > 5


def test_learned_merges_build_each_word():
    merges = learn_merges(["green", "red", "reed"])
    assert {"".join(m) for m in merges} >= {"green</w>", "red</w>", "reed</w>"}


def test_the_judge_and_the_reference_world_know_the_colours_loras_teach():
    from sdcli.shapes.judge import named_attributes
    from sdcli.shapes.world import LORA_COLOURS, random_scene_given

    rng = np.random.default_rng(3)
    for colour in LORA_COLOURS:
        fixed = named_attributes(f"a {colour} circle")
        assert fixed == {"colour": colour, "shape": "circle"}
        for _ in range(20):
            scene = random_scene_given(rng, fixed)
            assert judge(render(scene)).colour == colour
