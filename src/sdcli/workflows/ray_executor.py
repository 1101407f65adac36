"""`sdcli batch --executor ray`: the batch's images made by Ray actors, on this machine or across a cluster.

The driver (this process) does what the local executor's main process does (`sdcli.workflows.batch.run`): it reads
and checks the file, plans the names, resumes from the folder, and is the only writer of images and manifest lines,
so the workers need no shared file system (only the model and the files lines name, at the same paths, and sdcli
installed). Each worker is a Ray actor that loads the model once (`engine.load_for`) and turns groups of planned
images, the local executor's U-Net batches (`share_batches`), into PNG bytes and rows (`make_group`); the results
stream back (`ray.wait`) and land as they arrive.

Faults: a worker lost mid-run (its process, or its node) fails its calls with RayActorError; its groups go back to
the queue for the live workers, so every image is made exactly once, and the lost worker is not used again. A
driver stopped (Ctrl-C, SIGTERM) stops its workers with it; what landed stays, and the same command resumes.

Ray is imported with this module, which the command line imports only for `--executor ray`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from sdcli.engine import load_for
from sdcli.errors import Failure, UsageError, reason
from sdcli.loading.components import Model
from sdcli.recipe import Request
from sdcli.workflows.batch import Invalid, Line, Made, Planned, check_for_model, make_group, share_batches

try:
    import ray
    from ray.exceptions import RayActorError, RayTaskError
except ImportError:
    raise UsageError("--executor ray needs Ray; pip install 'sdcli[ray]'") from None

log = logging.getLogger(__name__)

IN_FLIGHT = 2  # groups queued on each worker: one made while the next one's arguments travel
PROBE_SECONDS = 5.0  # how long an --address may take to answer


class Worker:
    """One Ray actor: the model, loaded once; groups of planned images made into PNG bytes and rows."""

    def load(self, request: Request, threads: int) -> None:
        """Load the model on torch threads as many as the actor's CPUs (Ray's OMP_NUM_THREADS, made sure of): the
        thread count picks oneDNN's rounding, so images match a local run's at the same count."""
        torch.set_num_threads(threads)
        self.model: Model = load_for(request)

    def check(self, lines: list[Line]) -> tuple[list[Line], list[Invalid]]:
        return check_for_model(lines, self.model)

    def make(self, images: list[Planned], batch_size: int) -> list[Made]:
        return list(make_group(self.model, images, batch_size))


def _result(ref: ray.ObjectRef) -> Any:
    """A call's result; an error the worker's own code raised comes out as itself (one line, as in local mode)."""
    try:
        return ray.get(ref)
    except RayTaskError as error:
        raise error.cause from None


class RayWorkers:
    """The executor over Ray actors: the driver is the main (and only) process; every missing image is its share."""

    is_main = True

    def __init__(self, loading: dict[ray.ObjectRef, Any]) -> None:
        self.loading = loading  # the load call of each worker still starting -> the worker
        self.ready: list[Any] = []

    def _settle(self, ref: ray.ObjectRef) -> None:
        """A worker's load call has returned: the worker is ready, or was lost (dropped, with a warning)."""
        worker = self.loading.pop(ref)
        try:
            _result(ref)
        except RayActorError as error:
            log.warning("a Ray worker was lost while loading the model: %s", _first_line(error))
            return
        self.ready.append(worker)

    def _lost(self, worker: Any, error: RayActorError) -> None:
        log.warning("a Ray worker was lost; its images go to the others: %s", _first_line(error))
        self.ready.remove(worker)

    def _none_left(self) -> Failure:
        return Failure("every Ray worker was lost; check the cluster, then rerun the same command to resume")

    def check(self, lines: list[Line]) -> tuple[list[Line], list[Invalid]]:
        """The lines checked against the model by the first worker ready (the driver loads none)."""
        while True:
            while not self.ready:
                if not self.loading:
                    raise self._none_left()
                done, _ = ray.wait(list(self.loading), num_returns=1)
                self._settle(done[0])
            worker = self.ready[0]
            try:
                return _result(worker.check.remote(lines))
            except RayActorError as error:
                self._lost(worker, error)

    def share(self, pending: list[Planned]) -> list[Planned]:
        return pending

    def make(self, share: list[Planned], batch_size: int) -> Iterator[tuple[Planned, Made]]:
        """Each group of `share_batches` to a ready worker, IN_FLIGHT at a time per worker; results yielded as they
        come; the groups of a lost worker queued again, first."""
        todo = deque(share_batches(share, batch_size))
        running: dict[ray.ObjectRef, tuple[Any, list[Planned]]] = {}
        while todo or running:
            busy = [worker for worker, _ in running.values()]
            for worker in self.ready:
                for _ in range(IN_FLIGHT - busy.count(worker)):
                    if todo:
                        images = todo.popleft()
                        running[worker.make.remote(images, batch_size)] = (worker, images)
            if not running and not self.loading:
                raise self._none_left()
            done, _ = ray.wait([*running, *self.loading], num_returns=1)
            if done[0] in self.loading:
                self._settle(done[0])
                continue
            worker, images = running.pop(done[0])
            try:
                made = _result(done[0])
            except RayActorError as error:
                self._lost(worker, error)
                lost = [ref for ref, (other, _) in running.items() if other is worker]
                todo.extendleft(running.pop(ref)[1] for ref in reversed(lost))
                todo.appendleft(images)
                continue
            yield from zip(images, made, strict=True)

    def wait(self) -> None:
        """One process: nothing to wait for."""


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _probe(address: str) -> None:
    """A one-line failure, within PROBE_SECONDS, when nothing answers at `address` (host:port, or ray://host:port)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: give host:port (the head's GCS address), auto, or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()
    except OSError as error:
        raise Failure(
            f"cannot reach the Ray cluster at {address} ({reason(error)}); check --address or $RAY_ADDRESS, "
            "and that the head node runs (`ray start --head`)"
        ) from None


def _errors_to_stderr() -> None:
    """Ray's driver prints the cluster's error messages (a node lost, a worker killed) on stdout, which carries
    sdcli's results only: send them to stderr (through Ray's private printing function, pinned by the extra)."""
    show = ray._private.worker.print_to_stdstream
    ray._private.worker.print_to_stdstream = lambda data, ignore_prefix: show({**data, "is_err": True}, ignore_prefix)


def _connect(address: str) -> None:
    """Join the cluster at `address` (`auto`: the one this machine runs), or start a private one for `local`."""
    if address not in ("local", "auto"):
        _probe(address)
    _errors_to_stderr()
    private = {"include_dashboard": False} if address == "local" else {}
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:  # the workers' and nodes' output stays in Ray's logs: stdout carries results only
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, **private)
    except ConnectionError as error:
        raise Failure(
            f"cannot connect to Ray at {address} ({_first_line(error)}); start one with `ray start --head`, or "
            "leave out --address and $RAY_ADDRESS for a private instance on this machine"
        ) from None
    if on_sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)  # ray.init's (an exit, then C++'s abort) would lose the stop


def _sizes(workers: int | None, gpus: float | None, cpus: float) -> tuple[int, float]:
    """(workers, GPUs per worker): by default a GPU each when the cluster has GPUs, and as many workers as its
    GPUs (else its CPUs) hold, at least one. A worker larger than the whole cluster is refused (Ray would wait for
    it forever); more workers than fit now start as the cluster frees or grows, the others working meanwhile."""
    resources = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
    for name, each, option in (("GPU", gpus, "--gpus-per-worker"), ("CPU", cpus, "--cpus-per-worker")):
        if each > resources.get(name, 0):
            raise UsageError(f"{option} {each:g}: the Ray cluster has {resources.get(name, 0):g} {name}s in all; "
                             f"give {option} {resources.get(name, 0):g} or less, or add nodes")  # fmt: skip
    each, name = (gpus, "GPU") if gpus > 0 else (cpus, "CPU")
    fits = int(resources.get(name, 0) // each) if each > 0 else 1
    if workers and workers > fits:
        log.warning("--workers %d: the cluster holds %d now; the others start when it has room", workers, fits)
    return workers or max(1, fits), gpus


@contextmanager
def start(
    request: Request,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1.0,
) -> Iterator[RayWorkers]:
    """The Ray executor for `sdcli batch`: connected to `address` (else $RAY_ADDRESS, else a private instance on this
    machine; a driver already connected keeps its connection), `workers` actors loading the model; on the way out
    the actors are stopped, and the connection closed if this opened it."""
    opened = not ray.is_initialized()
    if opened:
        _connect(address or os.environ.get("RAY_ADDRESS") or "local")
    try:
        count, gpus = _sizes(workers, gpus_per_worker, cpus_per_worker)
        actor = ray.remote(Worker).options(num_cpus=cpus_per_worker, num_gpus=gpus, max_restarts=0)
        handles = [actor.remote() for _ in range(count)]
        threads = max(1, round(cpus_per_worker))
        try:
            yield RayWorkers({handle.load.remote(request, threads): handle for handle in handles})
        finally:
            for handle in handles:
                ray.kill(handle)
    finally:
        if opened:
            ray.shutdown()
