"""Measure the built-in model with its judge: prompt adherence and diversity across guidance scales.

Adherence is the fraction of images whose judged colour, shape and background match the caption's; diversity is
the mean pairwise distance between images of one caption made from different seeds (pixel space, RGB in [0, 1],
root mean square per pixel). Images come from sdcli's own loop (`make_images`), with the default sampler and steps.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from sdcli.shapes.judge import judge
from sdcli.shapes.world import COLOURS, full_captions
from sdcli.workflows.metrics import diversity


@dataclass(frozen=True)
class Scores:
    cfg: float
    images: int
    colour: float  # fractions of images judged right
    shape: float
    background: float
    all: float  # colour, shape and background all right
    diversity: float  # mean pairwise RMS pixel distance between seeds of one caption
    seconds: float


def adherence(images: list[Image.Image], expected: list[tuple[str, str, str]]) -> np.ndarray:
    """(N, 3) bools: colour, shape and background judged as expected, per image."""
    rows = []
    for image, (colour, shape, background) in zip(images, expected):
        verdict = judge(np.asarray(image.convert("RGB")))
        rows.append((verdict.colour == colour, verdict.shape == shape, verdict.background == background))
    return np.array(rows, dtype=bool).reshape(-1, 3)


def score(model, cfg: float, seeds: list[int], **settings) -> Scores:
    """Scores over the 54 full captions, each with every seed, at guidance scale `cfg`."""
    from sdcli.engine import make_images
    from sdcli.recipe import Request

    start = time.perf_counter()
    right, spreads = [], []
    for caption, colour, shape, background in full_captions():
        request = Request.of(
            prompt=caption,
            seed=seeds[0],
            num_images=len(seeds),
            batch_size=len(seeds),
            cfg=cfg,
            model=model.reference,
            **settings,
        )
        images = [made.image for made in make_images(model, request)]
        right.append(adherence(images, [(colour, shape, background)] * len(images)))
        spreads.append(diversity(images))
    ok = np.concatenate(right)  # (54 * seeds, 3)
    return Scores(
        cfg=cfg,
        images=len(ok),
        colour=float(ok[:, 0].mean()),
        shape=float(ok[:, 1].mean()),
        background=float(ok[:, 2].mean()),
        all=float(ok.all(axis=1).mean()),
        diversity=float(np.mean(spreads)),
        seconds=time.perf_counter() - start,
    )


NEGATIVE_CASES = (
    # (prompt, negative prompt, what the negative prompt must keep away, judged per image)
    ("a circle on a white background", "red", "red circle", lambda v: v.colour == "red" and v.shape == "circle"),
    ("a blue square", "white background", "white background", lambda v: v.background == "white"),
)


def negative_counts(model, seeds: list[int], **settings) -> list[dict]:
    """For each negative-prompt case: in how many of the seeds' images the unwanted attribute still shows."""
    from sdcli.engine import make_images
    from sdcli.recipe import Request

    rows = []
    for prompt, negative, unwanted, shows in NEGATIVE_CASES:
        request = Request.of(prompt=prompt, negative_prompt=negative, seed=seeds[0], num_images=len(seeds),
                                  batch_size=len(seeds), model=model.reference, **settings)  # fmt: skip
        count = sum(shows(judge(np.asarray(made.image))) for made in make_images(model, request))
        rows.append({"prompt": prompt, "neg": negative, "unwanted": unwanted, "count": count, "of": len(seeds)})
    return rows


def colour_steering(model, method: str, scale: float, seeds: list[int], **settings) -> dict:
    """How often one colour shows, over the six colours and the seeds: by classifier guidance on the empty prompt
    (w = 1, `method` "classifier") or by classifier-free guidance on the colour's name as the prompt ("cfg")."""
    from sdcli.engine import make_images
    from sdcli.recipe import Request

    hits, spreads = 0, []
    for colour in COLOURS:
        steer = {"prompt": "", "cfg": 1.0, "classifier": f"color={colour}", "classifier_scale": scale}
        if method == "cfg":
            steer = {"prompt": colour, "cfg": scale}
        request = Request.of(seed=seeds[0], num_images=len(seeds), batch_size=len(seeds), model=model.reference,
                                  **steer, **settings)  # fmt: skip
        images = [made.image for made in make_images(model, request)]
        hits += sum(judge(np.asarray(image)).colour == colour for image in images)
        spreads.append(diversity(images))
    return {"method": method, "scale": scale, "images": len(COLOURS) * len(seeds),
            "colour": hits / (len(COLOURS) * len(seeds)), "diversity": float(np.mean(spreads))}  # fmt: skip


def card_tables(scores: list[Scores], negatives: list[dict], curve: list[dict], steering: list[dict]) -> str:
    """The model card's measured section, as Markdown tables."""
    lines = [
        "| cfg | images | colour | shape | background | all three | diversity | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sc in scores:
        lines.append(
            f"| {sc.cfg:g} | {sc.images} | {sc.colour:.0%} | {sc.shape:.0%} | {sc.background:.0%} "
            f"| {sc.all:.0%} | {sc.diversity:.3f} | {sc.seconds:.0f} |"
        )
    lines += ["", "| prompt | --neg | unwanted result | images showing it |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['prompt']} | {r['neg']} | {r['unwanted']} | {r['count']} of {r['of']} |" for r in negatives]
    if steering:
        lines += ["", "| guidance | scale | images | colour shown | diversity |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['method']} | {r['scale']:g} | {r['images']} | {r['colour']:.0%} | {r['diversity']:.3f} |"
                  for r in steering]  # fmt: skip
    if curve:
        lines += [
            "",
            "| U-Net steps | minutes | images | colour | shape | background |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {c['step']} | {c['minutes']:.0f} | {c['images']} | {c['colour']:.0%} | {c['shape']:.0%} "
            f"| {c['background']:.0%} |"
            for c in curve
        ]
    return "\n".join(lines) + "\n"


def learning_curve(work, seeds: list[int], device: str = "cpu", cfg: float = 7.5, **settings) -> list[dict]:
    """Score every EMA snapshot of a training run (in `work`/snapshots) at one guidance scale; the results are
    cached in `work`/curve.jsonl, so a rerun with the same seeds and scale scores only the new snapshots."""
    import tempfile
    from pathlib import Path

    import torch

    from sdcli.loading.components import load_model
    from sdcli.loading.references import resolve_model
    from sdcli.shapes.train import export_snapshot, load_checkpoint

    work = Path(work)
    cache = work / "curve.jsonl"
    cached = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    images = len(full_captions()) * len(seeds)
    rows = [row for row in cached if row.get("images") == images and row["cfg"] == cfg]
    done = {row["step"] for row in rows}
    for snapshot in sorted((work / "snapshots").glob("step*.pt")):
        step = int(snapshot.stem[4:])
        if step in done:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            export_snapshot(work, snapshot, Path(tmp))
            model = load_model(resolve_model(tmp), torch.device(device), torch.float32)
            sc = score(model, cfg, seeds, **settings)
        minutes = load_checkpoint(snapshot, "cpu")["minutes"]
        row = {
            "step": step,
            "minutes": minutes,
            "cfg": cfg,
            "images": sc.images,
            "colour": sc.colour,
            "shape": sc.shape,
            "background": sc.background,
            "all": sc.all,
        }
        rows.append(row)
        with cache.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return sorted(rows, key=lambda r: r["step"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--cfg", default="1,3,7.5", help="comma-separated guidance scales")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per caption (0..N-1)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sampler", default="dpm++2m-karras")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="the weights' dtype")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--negatives", type=int, default=0, help="seeds for the negative-prompt checks (0: skip)")
    parser.add_argument("--card", help="write the model card (README.md) with these results into this folder")
    parser.add_argument("--training-note", default="", help="a paragraph for the card on how training went")
    parser.add_argument("--classifier-scales", default="", help="classifier guidance scales to compare with CFG")
    parser.add_argument("--steering-seeds", type=int, default=24, help="seeds per colour for that comparison")
    parser.add_argument("--curve", help="a training work folder: score its snapshots into a learning curve")
    args = parser.parse_args(argv)
    settings = {"steps": args.steps, "sampler": args.sampler}
    curve = learning_curve(args.curve, list(range(args.seeds)), args.device, **settings) if args.curve else []

    import torch

    from sdcli.loading.components import load_model
    from sdcli.loading.references import resolve_model

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = load_model(resolve_model(args.model), torch.device(args.device), dtype)
    scores = []
    for cfg in (float(c) for c in args.cfg.split(",")):
        scores.append(score(model, cfg, list(range(args.seeds)), **settings))
        print(json.dumps(asdict(scores[-1])), flush=True)
    negatives = negative_counts(model, list(range(args.negatives)), **settings) if args.negatives else []
    for row in negatives:
        print(json.dumps(row), flush=True)
    steering = []
    if args.classifier_scales:
        seeds = list(range(args.steering_seeds))
        methods = [("classifier", float(s)) for s in args.classifier_scales.split(",")]
        methods += [("cfg", float(c)) for c in args.cfg.split(",")]
        for method, scale in methods:
            steering.append(colour_steering(model, method, scale, seeds, **settings))
            print(json.dumps(steering[-1]), flush=True)
    if args.card:
        from importlib import resources
        from pathlib import Path

        template = resources.files("sdcli.shapes").joinpath("card.md").read_text()
        command = "python -m sdcli.shapes.evaluate " + shlex.join(argv if argv is not None else sys.argv[1:])
        card = template.format(
            training_note=args.training_note, command=command, tables=card_tables(scores, negatives, curve, steering)
        )
        (Path(args.card) / "README.md").write_text(card)


if __name__ == "__main__":
    sys.exit(main())
