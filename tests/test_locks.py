"""One process at a time: a second holder is refused at once, naming the first; a killed holder frees it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from escalate.locks import Busy, FileLock


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    with FileLock(lock, "retrain of profile smoke"):
        with pytest.raises(Busy, match=rf"another retrain of profile smoke is running \(pid {os.getpid()}, started"):
            FileLock(lock, "retrain of profile smoke").__enter__()
    with FileLock(lock):  # released on exit
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    code = (f"import time; from pathlib import Path; from escalate.locks import FileLock\n"
            f"with FileLock(Path({str(lock)!r})):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"pid {holder.pid}"):
            FileLock(lock).__enter__()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the OS drops the flock with the process
        try:
            with FileLock(lock):
                break
        except Busy:
            assert time.monotonic() < deadline, "the killed holder's lock was never released"
            time.sleep(0.05)


def test_a_waiting_lock_gives_up_after_its_wait_naming_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "registry.lock"
    with FileLock(lock, "registry write"):
        start = time.monotonic()
        with pytest.raises(Busy, match=rf"another registry write is running \(pid {os.getpid()}"):
            FileLock(lock, "registry write", wait_s=0.3).__enter__()
        assert time.monotonic() - start >= 0.3
