"""Measure a colour LoRA of the shapes model with its judge: how often "a <colour> <shape>" is judged that colour at
each LoRA weight, and whether the world's six colours keep their meaning with the LoRA on. Images come from sdcli's
own loop, the LoRA loaded once and its weight set per request, as a batch file's lines set it.

    python -m sdcli.shapes.measure_lora --lora pink --colour pink --weights 0,0.5,1 --seeds 24
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from sdcli.shapes.judge import judge
from sdcli.shapes.world import COLOURS, SHAPES


def judged_share(model, prompt: str, colour: str, lora: str, weight: float, seeds: int, **settings) -> float:
    """The share of `seeds` images of `prompt` (seeds 0..seeds-1) that the judge sees in `colour`."""
    from sdcli.engine import make_images
    from sdcli.recipe import Request

    request = Request.of(prompt=prompt, seed=0, num_images=seeds, batch_size=seeds, model=model.reference,
                         loras=(f"{lora}:{weight!r}",), **settings)  # fmt: skip
    return float(np.mean([judge(np.asarray(made.image)).colour == colour for made in make_images(model, request)]))


def measure(model_name: str, lora: str, colour: str, weights: list[float], seeds: int, kept_seeds: int) -> str:
    """The Markdown table: the new colour per shape at each weight, and each of the world's colours (over its three
    shapes, `kept_seeds` seeds each) without the LoRA and at the largest weight."""
    from sdcli.engine import load_for
    from sdcli.recipe import Request

    model = load_for(Request.of(prompt="", model=model_name, loras=(lora,)))
    lines = ["| prompt | " + " | ".join(f"weight {w:g}" for w in weights) + " |", "|---" * (len(weights) + 1) + "|"]
    for shape in SHAPES:
        prompt = f"a {colour} {shape}"
        shares = [judged_share(model, prompt, colour, lora, w, seeds) for w in weights]
        lines.append(f"| {prompt} ({seeds} seeds) | " + " | ".join(f"{s:.0%}" for s in shares) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    for kept in COLOURS:
        shares = [
            np.mean([judged_share(model, f"a {kept} {shape}", kept, lora, w, kept_seeds) for shape in SHAPES])
            for w in (0.0, max(weights))
        ]
        cells = {0.0: shares[0], max(weights): shares[1]}
        row = [f"{cells[w]:.0%}" if w in cells else "" for w in weights]
        lines.append(f"| a {kept} circle/square/triangle ({3 * kept_seeds} images) | " + " | ".join(row) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdcli.shapes.measure_lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--lora", required=True, help="a LoRA file or a name the model's loras/ folder holds")
    parser.add_argument("--colour", required=True, help="the colour it teaches, a name the judge knows")
    parser.add_argument("--weights", default="0,0.5,1")
    parser.add_argument("--seeds", type=int, default=24, help="seeds per prompt of the new colour")
    parser.add_argument("--kept-seeds", type=int, default=8, help="seeds per prompt of each of the world's colours")
    args = parser.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    print(measure(args.model, args.lora, args.colour, weights, args.seeds, args.kept_seeds))


if __name__ == "__main__":
    main()
