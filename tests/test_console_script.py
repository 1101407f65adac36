"""The installed `sdcli` console script, run once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_the_installed_console_script_generates(tiny_model: Path, tmp_path: Path):
    script = Path(sys.executable).parent / "sdcli"
    assert script.is_file(), "install the package: pip install -e '.[test]'"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("SDCLI_MODEL", None)
    result = subprocess.run(
        [str(script), "generate", "-", "-m", str(tiny_model), "--steps", "2", "--seed", "9", "--json",
         "--out-dir", str(tmp_path)],
        input="a yellow triangle\n", capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    row = json.loads(result.stdout)
    assert row["prompt"] == "a yellow triangle" and row["seed"] == 9
    assert Path(row["path"]).read_bytes().startswith(b"\x89PNG")


def test_python_dash_m_runs_the_same_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "sdcli", "samplers"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split()[:2] == ["ddim", "DDIM"]
