"""Writing to the output folder: atomic writes (readers never see half a file, an interrupted run leaves none) and
the lock that keeps one batch per folder.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdcli.errors import Failure, UsageError, reason

BATCH_LOCK = ".sdcli-batch.lock"  # in a folder while a batch runs there; names its holder


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomic(path: Path, data: bytes, overwrite: bool) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place: readers never see half a file,
    and an interrupted run leaves none behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not overwrite:
            raise UsageError(f"{path} already exists; pass --overwrite to replace it, or choose another -o/--out-dir")
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as error:
        raise Failure(f"cannot write to {path.parent} ({reason(error)}); choose another output folder") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except BaseException as error:
        Path(temp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise Failure(f"could not write {path} ({reason(error)}); check the folder and free space") from None
        raise


@contextmanager
def hold_folder(folder: Path) -> Iterator[None]:
    """One batch at a time in `folder`: an exclusive lock on its BATCH_LOCK file for the whole run, the file
    naming the holder (process and host) for a run that finds it taken. The lock of a process that dies goes with
    it (flock); the file is removed on the way out."""
    path = folder / BATCH_LOCK
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _locked(path)
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
    except OSError as error:
        raise Failure(f"cannot write to {folder} ({reason(error)}); choose another output folder") from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while locked: a run waiting on this file then finds it gone, see _locked
        os.close(fd)


def _locked(path: Path) -> int:
    """The open lock file, locked; a failure naming the holder when another batch has it. A file removed by its
    holder between our open and our lock is not the folder's lock any more: lock the one at `path` now."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Failure(
                f"{path.parent} is in use by another sdcli batch ({_holder(path)}); wait for it to finish, or use "
                "another --out-dir"
            ) from None
        try:
            if os.path.samestat(os.stat(path), os.fstat(fd)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(path: Path) -> str:
    """Who holds the lock, as its file says (printable characters only: the file may be anyone's)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return "".join(char for char in text if char.isprintable())[:200] or "its holder is starting"
