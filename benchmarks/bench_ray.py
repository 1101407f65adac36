"""`sdcli batch --executor ray` against the local executor on the tiny test model, in one run on one machine.

Each measured batch runs in a driver process of its own (this script in `--driver` mode), the Ray ones joining one
private Ray instance this script starts (so that its start-up, about 6 s, is not counted). Prints, one result a
line:
- throughput in images per second, from the first image landed to the last, of the local executor (torch on one
  thread) and of 1 and 2 Ray workers of one CPU each, and their ratios to local; and the whole run's wall time,
  start-up (model loads, Ray's actors) included
- the Ray driver's overhead per image: its CPU time from the first image to the last, per image, in ms (the
  scheduling, the transfer of the PNG bytes, the atomic write and the manifest line)
- the Ray driver's peak memory (max RSS) at `--lines-memory` lines against a tenth of them: flat, as the images
  are written and dropped as they come

    python benchmarks/bench_ray.py [--lines 96] [--lines-memory 500] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SDCLI_CPU_BF16", "0")  # fp32 on every CPU: the figures compare like with like
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the same on the instance and the drivers joining it

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_sd import build_tiny_sd

PROMPTS = ["a red circle", "a blue square on a white background", "a green triangle", "a photo of a cat"]


def drive(args: argparse.Namespace) -> None:
    """The `--driver` child: one batch in this process, then one JSON line of its figures on stdout."""
    import torch

    from sdcli.workflows.batch import local, run

    torch.set_num_threads(1)
    text = "".join(f"{PROMPTS[i % len(PROMPTS)]}\n" for i in range(args.lines))
    defaults = {"model": args.model, "seed": 0, "steps": args.steps, "sampler": "euler", "device": "cpu"}
    if args.workers:
        from sdcli.workflows.ray_executor import start

        executor = partial(start, address=args.address, workers=args.workers, cpus_per_worker=1)
    else:
        executor = local
    landed: list[tuple[float, float]] = []  # (wall, this process's CPU) as each image lands
    start_time = time.perf_counter()
    run(text, "bench", "txt", defaults, Path(args.out), on_image=lambda *_: landed.append(
        (time.perf_counter(), time.process_time())), executor=executor)  # fmt: skip
    (first_wall, first_cpu), (last_wall, last_cpu) = landed[0], landed[-1]
    print(json.dumps({
        "images": len(landed),
        "per_second": (len(landed) - 1) / (last_wall - first_wall),
        "wall": last_wall - start_time,
        "driver_ms": 1000 * (last_cpu - first_cpu) / (len(landed) - 1),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))  # fmt: skip


def measure(model: Path, lines: int, steps: int, workers: int, address: str) -> dict:
    """The figures of one batch, in a driver process of its own, into a fresh folder."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--driver", "--model", str(model), "--lines", str(lines), "--steps",
                   str(steps), "--workers", str(workers), "--address", address, "--out", out]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ,
                              "OMP_NUM_THREADS": "1"})  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the driver failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=96, help="images of the throughput runs")
    parser.add_argument("--lines-memory", type=int, default=500, help="images of the driver's memory run")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        drive(args)
        return
    import ray

    with tempfile.TemporaryDirectory(prefix="r", dir="/tmp") as temp:
        model = build_tiny_sd(Path(temp) / "tiny")
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
        try:
            address = ray.get_runtime_context().gcs_address
            local = measure(model, args.lines, args.steps, 0, address)
            ray1 = measure(model, args.lines, args.steps, 1, address)
            ray2 = measure(model, args.lines, args.steps, 2, address)
            small = measure(model, args.lines_memory // 10, args.steps, 2, address)
            large = measure(model, args.lines_memory, args.steps, 2, address)
        finally:
            ray.shutdown()
    print(f"tiny model, {args.lines} images of {args.steps} steps, {os.cpu_count()} CPUs")
    for name, figures in (("local executor", local), ("ray, 1 worker", ray1), ("ray, 2 workers", ray2)):
        print(f"{name:15} {figures['per_second']:7.2f} images/s ({figures['per_second'] / local['per_second']:.2f}x"
              f" local), whole run {figures['wall']:.1f} s")  # fmt: skip
    print(f"ray driver overhead per image: {ray1['driver_ms']:.2f} ms (1 worker), {ray2['driver_ms']:.2f} ms (2)")
    growth = large["max_rss_mib"] / small["max_rss_mib"]
    print(f"ray driver peak memory: {large['max_rss_mib']:.0f} MiB at {args.lines_memory} lines, "
          f"{small['max_rss_mib']:.0f} MiB at {args.lines_memory // 10} ({growth:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
