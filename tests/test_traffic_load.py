"""bench/traffic_load.py: its verdict catches a lost, doubled or invented row, and a short run of it (8 clients x 5 s,
a clean stop and a SIGKILL) passes against the real gateway process."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from bench.traffic_load import Load, Sent, check, main, question, read_log
from escalate.serving.traffic import TrafficLog
from tests.test_traffic import exchange

KILL_AT = 1000.0


def load(*answered_at: float | None) -> Load:
    """Requests r0x0, r0x1, ... answered at the given times (None: no 200), signalled at KILL_AT."""
    requests = [Sent(f"r0x{i}", at - 0.01 if at else KILL_AT - 0.5, "200" if at else "ReadError", at, 0.01 if at else None)
                for i, at in enumerate(answered_at)]
    return Load(requests, signalled_at=KILL_AT, load_s=5.0, load_avg=[1.0, 1.0])


def test_a_clean_stop_passes_only_with_every_answered_request_logged_once() -> None:
    requests = load(990.0, 995.0, 999.9)
    assert check(requests, ["r0x0", "r0x1", "r0x2"], True, 1.0, 0.5, clean=True)["passed"]
    lost = check(requests, ["r0x0", "r0x1"], True, 1.0, 0.5, clean=True)
    assert not lost["passed"] and lost["missing"] == 1 and "missing from the log" in lost["failures"][0]
    doubled = check(requests, ["r0x0", "r0x1", "r0x2", "r0x1"], True, 1.0, 0.5, clean=True)
    assert not doubled["passed"] and doubled["duplicates"] == 1 and "r0x1" in doubled["failures"][0]


def test_after_a_kill_only_the_last_flush_interval_may_be_missing() -> None:
    requests = load(990.0, 998.0, 998.7, 999.9, None)
    recent = check(requests, ["r0x0", "r0x1"], True, 1.0, 0.5, clean=False)  # lost: answered 1.3 s and 0.1 s before
    assert recent["passed"] and recent["missing"] == 2 and recent["missing_age_s"] == [0.1, 1.3]
    old = check(requests, ["r0x0"], True, 1.0, 0.5, clean=False)  # r0x1 was answered 2 s before the kill
    assert not old["passed"] and "oldest 2.000 s" in old["failures"][0]
    invented = check(requests, ["r0x0", "r0x1", "r0x2", "r0x3", "r0x4"], True, 1.0, 0.5, clean=False)
    assert not invented["passed"] and invented["logged_unanswered"] == 1  # r0x4 never got its 200
    assert not check(requests, ["r0x0", "r0x1", "r0x2", "r0x3"], False, 1.0, 0.5, clean=False)["passed"]


def test_read_log_reads_the_tags_back_and_names_a_corrupt_file_and_a_leftover_temp_file(tmp_path: Path) -> None:
    traffic = TrafficLog(tmp_path, flush_s=60)
    for tag in ("t0x0", "t0x1", "t1x0"):
        traffic.log(**exchange(question(tag)))
    traffic.close()
    folder = next(tmp_path.glob("date=*"))
    (folder / "part-0-0-0.parquet").write_bytes(b"PAR1 half a file")
    (folder / ".part-1-0-0.parquet.tmp").write_bytes(b"PAR1")
    tags, found = read_log(tmp_path)
    assert sorted(tags) == ["t0x0", "t0x1", "t1x0"]
    assert found["part_files"] == 2 and len(found["unreadable"]) == 1 and "part-0-0-0" in found["unreadable"][0]
    assert found["temp_files_left"] == [".part-1-0-0.parquet.tmp"]


@pytest.mark.slow
def test_a_short_load_loses_nothing_on_sigterm_and_at_most_the_last_flush_on_sigkill(tmp_path: Path) -> None:
    assert main(["--clients", "8", "--seconds", "5", "--out", str(tmp_path / "load")]) == 0
    result = json.loads((tmp_path / "load.json").read_text())
    clean, killed = result["phases"]["sigterm"], result["phases"]["sigkill"]
    assert clean["answered"] > 100 and clean["rows"] == clean["answered"] and clean["missing"] == 0
    assert killed["gateway_exit"] == -9 and killed["sent"] > killed["answered"]  # killed with requests in flight
    assert killed["duplicates"] == killed["logged_unanswered"] == 0 and not killed["unreadable"]
    assert killed["rows"] + killed["missing"] == killed["answered"] > 100
    assert all(age <= 1.5 for age in killed["missing_age_s"])
    for pid in (result["stub_pid"], clean["gateway_pid"], killed["gateway_pid"]):
        with pytest.raises(ProcessLookupError):  # both servers stopped by PID, whatever happened
            os.kill(pid, 0)
    assert "| sigkill |" in (tmp_path / "load.md").read_text()


def test_a_clean_stop_during_a_flush_still_writes_what_was_enqueued_after_that_flush_drained(tmp_path: Path) -> None:
    """The SIGTERM phase's guarantee at its edge: the app closes the log while the writer is writing."""
    writing, release = threading.Event(), threading.Event()

    def slow(question: str) -> str:  # holds the writer inside a flush that has already drained the queue
        if "t0x0" in question:
            writing.set()
            release.wait(10)
        return question

    traffic = TrafficLog(tmp_path, flush_s=0.01, redactor=slow)
    traffic.log(**exchange(question("t0x0")))
    assert writing.wait(10)
    traffic.log(**exchange(question("t0x1")))  # the last request, answered while the writer writes
    closer = threading.Thread(target=traffic.close)
    closer.start()
    while not traffic._stop.is_set():
        time.sleep(0.001)
    release.set()
    closer.join(10)
    assert sorted(read_log(tmp_path)[0]) == ["t0x0", "t0x1"]
