"""sslens.procs.Forked: a forked child hands back its result, and never outlives its parent (SIGKILL, Ctrl-C)."""

import os
import platform
import signal
import subprocess
import sys
import time

import pytest

from sslens.procs import Forked

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _boom():
    raise ValueError("no")


def test_result_and_error():
    with Forked(sum, [1, 2, 3]) as f:
        assert f.result() == 6 and f.error is None
    with Forked(_boom) as f:
        assert f.result() is None and f.error == "ValueError: no"
    with Forked(os._exit, 3) as f:  # dies without a result
        assert f.result() is None and "died" in f.error
    with Forked(time.sleep, 30) as f:  # stuck: killed at the timeout
        t = time.monotonic()
        assert f.result(timeout=0.5) is None and "within 0.5 s" in f.error and time.monotonic() - t < 5
        assert gone(f.pid, within=0.1)


def gone(pid: int, within: float = 5.0) -> bool:
    """The process ``pid`` has exited (a zombie counts as exited) within ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/status") as f:
                if "\nState:\tZ" in f.read():
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


PARENT = """
import time
from sslens.procs import Forked
with Forked(time.sleep, 60) as f:
    print(f.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_the_child_dies_with_its_parent(sig):
    """SIGKILL of the parent (PR_SET_PDEATHSIG / the watchdog) and Ctrl-C (the parent kills it on the way out)."""
    p = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        child = int(p.stdout.readline())
        assert not gone(child, within=0.3)
        p.send_signal(sig)
        p.wait(timeout=10)
        assert gone(child)
    finally:
        p.kill()
        p.wait()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_keep_heap_serves_a_20_MB_tensor_from_the_heap_not_a_fresh_mapping():
    """procs.keep_heap (the CLI and sweep workers): a 20 MB tensor lies in the [heap] region of /proc/self/maps;
    in a process with glibc's defaults the same tensor is a mapping of its own."""
    code = """
import sys, torch
if sys.argv[1] == "1":
    from sslens.procs import keep_heap
    assert keep_heap()
x = torch.empty(5 << 20)  # 20 MB of float32
heap = [l.split()[0] for l in open("/proc/self/maps") if l.rstrip().endswith("[heap]")]
lo, hi = (int(v, 16) for v in heap[0].split("-")) if heap else (0, 0)
print(int(lo <= x.data_ptr() < hi))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}  # glibc's defaults
    out = {flag: subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, check=True,
                                env=env).stdout.strip() for flag in ("0", "1")}
    assert out == {"0": "0", "1": "1"}


def test_keep_heap_is_applied_by_the_command_not_by_main_called_from_python(monkeypatch, tmp_path):
    """The ``sslens`` command (main() reading sys.argv) tunes its own allocator; ``main([...])`` called from a user's
    Python session leaves theirs alone."""
    import sslens.procs
    from sslens.cli import main

    calls = []
    monkeypatch.setattr(sslens.procs, "keep_heap", lambda: calls.append(1) or True)
    assert main(["analyze", str(tmp_path / "nothing")]) == 2 and calls == []
    monkeypatch.setattr(sys, "argv", ["sslens", "analyze", str(tmp_path / "nothing")])
    assert main() == 2 and calls == [1]


def test_ctrl_c_while_waiting_kills_the_helper_at_once():
    """Forked.result interrupted (Ctrl-C) kills and reaps the child instead of waiting for it to finish."""
    import threading

    h = Forked(time.sleep, 30)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # started after the fork: lands in result()
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        h.result()
    assert time.monotonic() - t < 5
    with pytest.raises(ProcessLookupError):
        os.kill(h.pid, 0)  # reaped: no such process


def test_a_fork_that_fails_gives_no_result_and_says_why(monkeypatch):
    """No child (EAGAIN from fork): result() is None at once with the reason, close() is a no-op, no fd is left
    open, so every caller (fig6 outputs, weights job, report figures) computes the value itself."""
    import errno

    def refuse():
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    monkeypatch.setattr(os, "fork", refuse)
    h = Forked(lambda: 1)
    assert h.result() is None and h.error.startswith("cannot fork") and h.pid is None
    h.close()
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds
