"""The example scripts run, against a tiny model, so they do not rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_remake_example(tiny_model: Path, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(EXAMPLES / "remake.sh"), str(tiny_model)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Seed: 43" in result.stdout  # the second image of the batch
    assert result.stdout.rstrip().endswith("the same bytes")
