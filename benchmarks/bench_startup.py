"""How fast sdcli starts: `sdcli --help` against importing typer and rich alone, and the time from process start
to the first U-Net step of `make demo`'s command.

Prints, one result a line: the median wall time of `sdcli --help` and of `python -c "import typer, rich"` over
`--rounds` runs, their ratio with PASS or FAIL against the target (at most 1.6), and the median time from starting
the demo's process to its first U-Net call, over `--demo-rounds` runs. That time is taken in the process itself:
this script runs the command line with a forward pre-hook on the loaded U-Net (through a wrapped
`sdcli.loading.components.load_model`), which prints the wall clock at the first call and ends the process there
(the rest of the run is not timed).

    python benchmarks/bench_startup.py [--rounds 5] [--demo-rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_TARGET = 1.6  # sdcli --help / (import typer, rich), at most
DEMO = ["generate", "a red circle on a white background", "-n", "4", "--seed", "42", "--overwrite"]  # make demo's
FIRST_STEP = "first U-Net step at"  # the line the hooked child prints, then the epoch time


def wall_time(command: list[str]) -> float:
    """Seconds one run of `command` takes, from start to exit."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_times(commands: list[list[str]], rounds: int) -> list[float]:
    """The median wall time of each command over `rounds` runs, taken in turns so that a busy machine slows all
    of them alike."""
    times = [[wall_time(command) for command in commands] for _ in range(rounds)]  # (rounds, commands)
    return [statistics.median(column) for column in zip(*times)]


def seconds_to_first_step() -> float:
    """Seconds from starting the demo's process (this script in `--first-step` mode) to its first U-Net call."""
    with tempfile.TemporaryDirectory() as out:
        start = time.time()
        child = [sys.executable, __file__, "--first-step", *DEMO, "--out-dir", out]
        done = subprocess.run(child, capture_output=True, text=True, check=False)
    stamps = [line.removeprefix(FIRST_STEP) for line in done.stderr.splitlines() if line.startswith(FIRST_STEP)]
    if not stamps:
        raise SystemExit(f"the demo never reached its U-Net (exit {done.returncode}):\n{done.stderr}")
    return float(stamps[0]) - start


def run_to_first_step(args: list[str]) -> None:
    """The `--first-step` child: sdcli's command line on `args`, its U-Net hooked to report its first call and end
    the process there."""
    import sdcli.loading.components as components

    load_model = components.load_model

    def report_first_call(module, inputs) -> None:
        print(f"{FIRST_STEP} {time.time():.6f}", file=sys.stderr, flush=True)
        os._exit(0)

    def load_model_hooked(*load_args, **load_kwargs):
        model = load_model(*load_args, **load_kwargs)
        model.unet.register_forward_pre_hook(report_first_call)
        return model

    components.load_model = load_model_hooked  # before the engine is imported: it binds the name on import
    from sdcli.cli import main

    sys.argv = ["sdcli", *args]
    main()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each --help timing (median)")
    parser.add_argument("--demo-rounds", type=int, default=3, help="runs of the demo to its first step (median)")
    parser.add_argument("--first-step", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_step is not None:
        run_to_first_step(args.first_step)
        return
    sdcli = str(Path(sys.executable).parent / "sdcli")
    commands = [[sdcli, "--help"], [sys.executable, "-c", "import typer, rich"]]
    help_seconds, base_seconds = median_times(commands, args.rounds)
    ratio = help_seconds / base_seconds
    print(f"sdcli --help: {help_seconds:.3f} s (median of {args.rounds})")
    print(f"import typer, rich: {base_seconds:.3f} s (median of {args.rounds})")
    print(f"ratio sdcli --help / import typer, rich: {ratio:.2f} (target <= {HELP_TARGET}): "
          f"{'PASS' if ratio <= HELP_TARGET else 'FAIL'}")  # fmt: skip
    first_step = statistics.median(seconds_to_first_step() for _ in range(args.demo_rounds))
    print(f"make demo, process start to first U-Net step: {first_step:.2f} s (median of {args.demo_rounds})")


if __name__ == "__main__":
    main()
