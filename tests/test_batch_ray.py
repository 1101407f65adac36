"""`sdcli batch --executor ray`: the local executor's files and manifest from Ray workers, a lost node's images
made elsewhere exactly once, a stopped driver resumed by the same command, and one-line errors without Ray or
without a cluster. Ray runs here on this machine only: a private instance, or a two-node `Cluster` in this process;
both live under a temporary RAY_TMPDIR, with token auth off on every node, and are stopped by this process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdcli.cli import app

FAST = ["--steps", "2", "--sampler", "euler"]


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def without_times(rows: list[dict]) -> list[dict]:
    """Rows but their wall times, the one field two runs cannot share."""
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


def images(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Ray importable, and an environment for it (this process's and the drivers' it starts): a short temporary
    RAY_TMPDIR (Ray's sockets live there, and its `ray_current_cluster` file, so no one else's cluster is
    joined or named), token auth off on every node, torch on one thread as in the local runs compared."""
    pytest.importorskip("ray", reason="Ray is the optional extra: pip install 'sdcli[ray]' (make install does)")
    with tempfile.TemporaryDirectory(prefix="r", dir="/tmp") as temp:
        for name, value in {"RAY_TMPDIR": temp, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        yield {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def sdcli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sdcli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for_images(out: Path, count: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while len(list(out.glob("*.png"))) < count and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def test_two_ray_workers_make_the_local_executors_files(tiny_model: Path, tmp_path: Path, ray_env):
    """A private Ray instance of 2 CPUs started here (the command uses this process's connection), 2 workers of
    one CPU each: the images byte for byte and the manifest (but its times) of the local executor, every image
    printed once."""
    import ray

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    common = [str(prompts), "-m", str(tiny_model), *FAST, "-n", "2", "--batch-size", "2"]
    local = run("batch", *common, "--out-dir", str(tmp_path / "local"))  # this process: torch on 1 thread
    assert local.exit_code == 0, local.stderr
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        result = run("batch", *common, "--out-dir", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2",
                     "--json")  # fmt: skip
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.stderr
    printed = sorted(Path(json.loads(line)["path"]).name for line in result.stdout.splitlines())
    assert printed == sorted(images(tmp_path / "local")) and len(printed) == 6
    assert images(tmp_path / "ray") == images(tmp_path / "local")
    assert without_times(manifest(tmp_path / "ray")) == without_times(manifest(tmp_path / "local"))
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(
        p.name for p in (tmp_path / "local").iterdir()
    )


def test_a_lost_node_has_its_images_made_elsewhere(tiny_model: Path, tmp_path: Path, ray_env):
    """A cluster of two nodes of one CPU, a worker on each; the second node removed once images are landing: the
    batch completes on the head's worker, every image once, none partial, the manifest one line per image."""
    from ray.cluster_utils import Cluster

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    args = ["batch", str(prompts), "-m", str(tiny_model), "--steps", "20", "--sampler", "euler", "-n", "20"]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "dashboard_agent_listen_port": free_port(),
    })  # fmt: skip
    try:
        second = cluster.add_node(num_cpus=1, dashboard_agent_listen_port=free_port())
        out = tmp_path / "ray"
        process = sdcli(*args, "--out-dir", str(out), "--executor", "ray", "--address", cluster.address,
                        env=ray_env, cwd=tmp_path)  # fmt: skip
        wait_for_images(out, 4, process)
        assert process.poll() is None, "the batch finished before a node could be removed"
        cluster.remove_node(second, allow_graceful=False)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        cluster.shutdown()
    assert process.returncode == 0, stderr
    assert "Ray worker was lost" in stderr
    names = [Path(line).name for line in stdout.splitlines()]
    assert len(names) == len(set(names)) == 40  # each image written (printed) once
    assert not list(out.glob(".*.part"))
    assert [row["path"] for row in manifest(out)] == sorted(images(out)) and len(images(out)) == 40
    whole = run(*args, "--out-dir", str(tmp_path / "local"))
    assert whole.exit_code == 0, whole.stderr
    assert images(out) == images(tmp_path / "local")


def test_a_stopped_driver_resumes_with_the_same_command(tiny_model: Path, tmp_path: Path, ray_env):
    """SIGTERM to the driver once images land: it stops as by Ctrl-C (exit 130, its workers with it), keeping what
    landed; the same command makes only the rest. The drivers join a Ray instance this test starts, as they would
    a cluster (each starting its own private one takes longer)."""
    import ray

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        address = ray.get_runtime_context().gcs_address
        args = ["batch", str(prompts), "-m", str(tiny_model), "--steps", "8", "--sampler", "euler", "-n", "8",
                "--out-dir", str(out), "--executor", "ray", "--address", address]  # fmt: skip
        process = sdcli(*args, env=ray_env, cwd=tmp_path)
        wait_for_images(out, 2, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert "Traceback" not in stderr and not list(out.glob(".*.part"))
        landed = sorted(images(out))
        assert 2 <= len(landed) < 16
        assert {row["path"] for row in manifest(out)} <= set(landed)
        again = sdcli(*args, env=ray_env, cwd=tmp_path)
        stdout, stderr = again.communicate(timeout=120)
    finally:
        ray.shutdown()
    assert again.returncode == 0, stderr
    assert f"skipped {len(landed)} of 16" in stderr
    made = [Path(line).name for line in stdout.splitlines()]
    assert sorted(made) == sorted(set(images(out)) - set(landed)) and len(made) == 16 - len(landed)
    assert [row["path"] for row in manifest(out)] == sorted(images(out)) and len(images(out)) == 16


def test_workers_the_cluster_cannot_hold(tiny_model: Path, tmp_path: Path, ray_env):
    """On 2 CPUs and no GPU: a worker asking a GPU is refused at once (Ray would wait for it forever), one line and
    nothing written; 3 workers of one CPU are a warning, the 2 that fit make every image."""
    import ray

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    common = [str(prompts), "-m", str(tiny_model), *FAST, "--executor", "ray"]
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        gpu = run("batch", *common, "--gpus-per-worker", "1", "--out-dir", str(tmp_path / "gpu"))
        three = run("batch", *common, "--workers", "3", "--out-dir", str(tmp_path / "three"))
    finally:
        ray.shutdown()
    assert gpu.exit_code == 2 and gpu.stderr.count("\n") == 1, gpu.stderr
    assert "--gpus-per-worker 1: the Ray cluster has 0 GPUs in all" in gpu.stderr
    assert not list((tmp_path / "gpu").glob("*.png"))
    assert three.exit_code == 0, three.stderr
    assert "--workers 3: the cluster holds 2 now" in three.stderr and len(images(tmp_path / "three")) == 3


def test_an_unreachable_address_is_a_one_line_error_soon(tiny_model: Path, tmp_path: Path, ray_env):
    (tmp_path / "p.txt").write_text("a cat\n")
    start = time.monotonic()
    result = run("batch", str(tmp_path / "p.txt"), "-m", str(tiny_model), "--executor", "ray",
                 "--address", f"127.0.0.1:{free_port()}", "--out-dir", str(tmp_path / "out"))  # fmt: skip
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "cannot reach the Ray cluster" in result.stderr and "--address" in result.stderr
    assert time.monotonic() - start < 30 and not (tmp_path / "out").exists()


def test_without_ray_the_ray_executor_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`import ray` failing (as without the extra) is one line naming the extra; the Ray options without
    --executor ray are refused. Neither loads a model."""
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.delitem(sys.modules, "sdcli.workflows.ray_executor", raising=False)
    (tmp_path / "p.txt").write_text("a cat\n")
    result = run("batch", str(tmp_path / "p.txt"), "--executor", "ray")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "pip install 'sdcli[ray]'" in result.stderr
    workers = run("batch", str(tmp_path / "p.txt"), "--workers", "2")
    assert workers.exit_code == 2 and "--workers is for --executor ray" in workers.stderr
