"""One writer per run directory: an OS-level lock (``fcntl.flock``) on ``RUN/.lock``.

The kernel drops a ``flock`` when its holder dies (SIGKILL included), so a lock left by a killed
process never blocks; the file keeps ``host pid`` of the last holder so that a refused writer can
name who holds it. ``wait=True`` blocks until the holder is gone (a retried distributed task).
Within one process the lock is re-entrant: ``train`` holds it and the recorder it attaches takes it
again without blocking itself (a count per directory; the file lock goes with the last release).
The lock file is opened with ``O_NOFOLLOW``: a planted symlink (or hard link, FIFO) is refused in one line.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sslens.errors import SslensError

LOCK_NAME = ".lock"
_HELD: dict[Path, list] = {}  # resolved run dir -> [fd, count] held by this process


def holder(run_dir: str | os.PathLike) -> str:
    """``host pid`` written by the last process that took the lock (``unknown`` if unreadable)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            text = os.read(fd, 200).decode(errors="replace")
        finally:
            os.close(fd)
        return " ".join(text.split()) or "unknown"
    except OSError:
        return "unknown"


def _open_lock(path: Path) -> int:
    """Open (or create) a lock file without following a symlink; refuse anything but a plain file of one link.

    A planted ``.lock`` symlink (dangling or not), hard link, FIFO or directory is refused in one line, so the
    ``host pid`` line is never written through to another file and no target is created.
    """
    allowed = "remove it (a run directory's .lock is a plain file sslens creates)"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise SslensError("out", f"{path} is a symbolic link; refusing to write through it", allowed) from None
        raise SslensError("out", f"cannot open the lock file {path} ({e.strerror})", "a writable directory path") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"a file with {st.st_nlink} hard links"
        raise SslensError("out", f"{path} is {what}; refusing to write to it", allowed)
    return fd


class RunLock:
    """Hold the lock of ``run_dir`` until :meth:`release` (or use :func:`run_lock`)."""

    def __init__(self, run_dir: str | os.PathLike, wait: bool = False, timeout: float | None = None):
        self.path = Path(run_dir)
        self._fd = None
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            self._key = key
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SslensError("out", f"cannot create run directory {self.path} ({e.strerror})",
                              "a writable directory path") from None
        self._fd = _open_lock(self.path / LOCK_NAME)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (deadline is not None and time.monotonic() > deadline):
                    os.close(self._fd)
                    raise SslensError(
                        "out", f"{self.path} is being written by another process ({holder(self.path)})",
                        "wait for it to finish, or choose another directory",
                    ) from None
                time.sleep(0.1)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"host={socket.gethostname()} pid={os.getpid()}\n".encode())
        self._key = key
        _HELD[key] = [self._fd, 1]

    def release(self) -> None:
        key, self._key = getattr(self, "_key", None), None
        if key is None or key not in _HELD:
            return
        held = _HELD[key]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


@contextmanager
def run_lock(run_dir: str | os.PathLike, wait: bool = False, timeout: float | None = None) -> Iterator[RunLock]:
    """``with run_lock(out): ...`` -- the only writer of ``out`` for the block's duration."""
    lock = RunLock(run_dir, wait=wait, timeout=timeout)
    try:
        yield lock
    finally:
        lock.release()


__all__ = ["RunLock", "run_lock", "holder", "LOCK_NAME"]
