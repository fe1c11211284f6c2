"""One writer per run directory: a second writer is refused naming the holder; a killed holder never blocks."""

import os
import signal
import subprocess
import sys
import time

import pytest

from sslens.errors import SslensError
from sslens.lock import RunLock, run_lock

HOLD = "import sys, time; from sslens.lock import RunLock; l = RunLock(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def _holder(path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_writer_is_refused_with_the_holder_named(tmp_path):
    p = _holder(tmp_path / "run")
    try:
        with pytest.raises(SslensError, match=rf"^out: .* pid={p.pid}\b"):
            RunLock(tmp_path / "run")
    finally:
        p.kill()
        p.wait()


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    p = _holder(tmp_path / "run")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with run_lock(tmp_path / "run"):
        pass


def test_wait_takes_the_lock_once_the_holder_is_gone(tmp_path):
    p = _holder(tmp_path / "run")
    t0 = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 0.5; kill -9 {p.pid}"])
    with run_lock(tmp_path / "run", wait=True, timeout=20):
        assert time.monotonic() - t0 >= 0.4
    p.wait()


def test_lock_is_reentrant_in_one_process_and_released_by_the_last_holder(tmp_path):
    with run_lock(tmp_path / "run"):
        with run_lock(tmp_path / "run"):  # e.g. train holds it and its recorder takes it again
            pass
        p = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path / "run")], capture_output=True, text=True)
        assert p.returncode == 1 and "is being written by another process" in p.stderr  # still held
    p = _holder(tmp_path / "run")  # released: another process gets it
    p.kill()
    p.wait()
