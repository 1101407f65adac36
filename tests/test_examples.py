"""The example scripts run, against a tiny model, so they do not rot (the multi-GPU one is checked by bash -n and
by its refusal without a GPU; the two-process run it makes is tested in test_batch.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "STEPS": "2", "SAMPLER": "euler", **extra}  # fmt: skip
    return subprocess.run(["bash", str(EXAMPLES / script), *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd, check=False)  # fmt: skip


def test_remake_example(tiny_model: Path, tmp_path: Path):
    result = _run("remake.sh", str(tiny_model), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Seed: 43" in result.stdout  # the second image of the batch
    assert result.stdout.rstrip().endswith("the same bytes")


def test_batch_example_resumes(tiny_model: Path, tmp_path: Path):
    result = _run("batch.sh", str(tiny_model), str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["manifest: 4 images", "rerun made 0 new images"]
    assert "skipped 4 of 4" in result.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 4


def test_sweep_example(tiny_model: Path, tmp_path: Path):
    result = _run("sweep.sh", str(tiny_model), str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["contact sheet", "cfg 1", "cfg 5", "cfg 9"]
    assert (tmp_path / "out" / "grid.png").is_file()


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_seeds_example(tiny_model: Path, tmp_path: Path):
    result = _run("seeds.sh", str(tiny_model), str(tmp_path / "out"), cwd=tmp_path, SEEDS="1 2")
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == ["1", "2"]
    made = [json.loads(line) for line in (tmp_path / "out" / "made.jsonl").read_text().splitlines()]
    assert [Path(row[2]) for row in rows] == [Path(m["path"]) for m in made] and all(Path(r[2]).is_file() for r in rows)


def test_multi_gpu_example_parses_and_needs_a_gpu_or_a_count(tmp_path: Path):
    assert subprocess.run(["bash", "-n", str(EXAMPLES / "multi-gpu.sh")], check=False).returncode == 0
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the refusal is for machines without a GPU")
    result = _run("multi-gpu.sh", str(tmp_path / "p.txt"), cwd=tmp_path)
    assert result.returncode == 2 and "NUM_PROCESSES" in result.stderr


def test_images_in_example_makes_its_strip(tiny_model: Path, tmp_path: Path):
    result = _run("images-in.sh", str(tiny_model), str(tmp_path / "out"), cwd=tmp_path, STEPS="4")
    assert result.returncode == 0, result.stderr
    strip = tmp_path / "out" / "strip.png"
    assert result.stdout.strip() == str(tmp_path / "out" / "strip.png") and strip.is_file()
    from sdcli.output.metadata import settings_from_png

    assert settings_from_png(tmp_path / "out" / "inpaint.png")["mask"] == str(tmp_path / "out" / "mask.png")
    assert settings_from_png(tmp_path / "out" / "hires.png")["hires_scale"] == 2.0
