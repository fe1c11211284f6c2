"""Forked helper processes that die with their parent and leave nothing behind (docs/analysis.md, "Batched path").

:class:`Forked` runs ``fn(*args)`` in a forked child (it inherits the parent's imports and data, so nothing is
imported again) and hands back its pickled return value. The child ignores SIGINT (Ctrl-C is the parent's: it
kills the child on the way out), gets SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)`` on Linux, and a
watchdog thread polling the parent's pid everywhere), writes no files and exits with ``os._exit``.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from typing import Any, Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In a child: ignore Ctrl-C and get SIGKILL within a second of the parent's death (SIGKILL included)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watchdog() -> None:
        import time

        while True:
            time.sleep(0.2)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watchdog, name="sslens-parent-watchdog", daemon=True).start()


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def keep_heap(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20, top_pad: int = 64 << 20) -> bool:
    """glibc: large tensors from the heap, not a fresh mapping each time; returns whether it applied (glibc only).

    Tensors up to ``mmap_threshold`` (32 MiB, glibc's maximum) come from the heap, and up to ``trim_threshold`` of
    freed heap is kept, instead of mapping and unmapping each large tensor so that every step of a training loop
    re-faults its pages (measured: an M = 240 count-engine group 1.15x faster, docs/engine.md). Process-wide, so
    called only in processes sslens owns: the CLI and sweep workers.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(k, v) == 1 for k, v in ((M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold),
                                                 (M_TOP_PAD, top_pad)))


def fork_available() -> bool:
    """Whether this platform can fork (POSIX)."""
    return hasattr(os, "fork") and sys.platform != "win32"


def cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (``platform.processor()`` where there is none)."""
    import platform

    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())


def helpers_pay() -> bool:
    """Whether a forked helper can run beside this process: fork is available and >= 2 cores are ours."""
    return fork_available() and cores() >= 2


class Forked:
    """``fn(*args)`` in a forked child; :meth:`result` waits for its return value (``None`` if it failed).

    When no child can be forked (EAGAIN, ENOMEM) :meth:`result` is ``None`` at once and ``error`` says why: every
    caller then computes the value itself.

    Use as a context manager (or call :meth:`close`): a child still running on the way out is killed and reaped.
    The child runs with one intra-op torch thread when torch is imported (two processes on two cores).
    """

    def __init__(self, fn: Callable[..., Any], *args: Any):
        self.error: str | None = None
        self.pid, self._done, self._value = None, False, None
        parent = os.getpid()
        try:
            r, w = os.pipe()
        except OSError as e:
            self.error, self._done = f"cannot fork ({e.strerror})", True
            return
        try:
            pid = os.fork()
        except OSError as e:  # EAGAIN, ENOMEM: no helper now
            os.close(r)
            os.close(w)
            self.error, self._done = f"cannot fork ({e.strerror})", True
            return
        if pid == 0:  # the child: never returns into the caller's code
            code = 1
            try:
                os.close(r)
                die_with_parent(parent)
                if "torch" in sys.modules:
                    sys.modules["torch"].set_num_threads(1)
                try:
                    out = ("ok", fn(*args))
                except BaseException as e:  # noqa: BLE001 - reported to the parent, which falls back
                    out = ("error", f"{type(e).__name__}: {e}")
                data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(w, "wb") as f:
                    f.write(data)
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self._r = pid, r

    def result(self, timeout: float | None = None) -> Any:
        """The child's return value, or ``None`` when it raised, died or ran past ``timeout`` seconds.

        A child past its timeout is killed; ``self.error`` says why there is no value.
        """
        if not self._done:
            import select
            import time

            self._done = True
            end = None if timeout is None else time.monotonic() + timeout
            chunks, late = [], False
            try:
                while True:  # until the child closes the pipe (it exits right after)
                    left = None if end is None else end - time.monotonic()
                    if left is not None and (left <= 0 or not select.select([self._r], [], [], left)[0]):
                        late = True
                        os.kill(self.pid, signal.SIGKILL)
                        break
                    chunk = os.read(self._r, 1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except BaseException:  # Ctrl-C (or any error) while waiting: the child is not waited for
                os.kill(self.pid, signal.SIGKILL)
                raise
            finally:
                os.close(self._r)
                _, status = os.waitpid(self.pid, 0)
            data = b"" if late else b"".join(chunks)
            why = f"no result within {timeout} s (killed)" if late else f"the child died (wait status {status})"
            try:
                kind, value = pickle.loads(data) if data else ("error", why)
            except (pickle.UnpicklingError, EOFError, ValueError) as e:
                kind, value = "error", f"unreadable result ({e})"
            if kind == "ok":
                self._value = value
            else:
                self.error = value
        return self._value

    def close(self) -> None:
        """Kill the child if it still runs and reap it (idempotent)."""
        if self._done:
            return
        self._done = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.close(self._r)
        except OSError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
