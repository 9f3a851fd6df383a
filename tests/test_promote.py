"""Promotions that cannot half-happen: one at a time, every failing step (or SIGTERM/SIGINT) undone,
servers stopped only once the gateway has drained them, and leftovers of a killed promotion swept.
Export, launch, the gateway and the registry are fakes; each fake server is a real sleeping process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from escalate.serving import gateway_process, promote
from escalate.serving.deployment import GATEWAY_FILE, SERVING_DIR, Deployment, current, mark_current
from escalate.serving.engine import EngineHolder
from escalate.serving.gateway import GatewaySettings, create_app
from escalate.serving.gateway_process import GatewayProcess
from escalate.serving.promote import PromotionFailed, promote_alias, retire
from escalate.serving.promote_guard import PromotionLock
from tests.gateway_requests import StubEngine

STEPS = ("export", "launch", "gateway", "switch", "smoke", "record")
URL = "http://gateway.test"


def fake_server(directory: Path) -> int:
    """A process in its own group whose command line names `directory`, as a vLLM server's does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(directory)],
                            start_new_session=True)
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it once stopped
    while str(directory).encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        time.sleep(0.01)  # until exec: a real server is long past it when anything retires it
    return proc.pid


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""  # empty: a zombie
    except FileNotFoundError:
        return False


def deployment_in(root: Path, name: str, pids: bool = True) -> Deployment:
    directory = root / SERVING_DIR / name
    directory.mkdir(parents=True)
    deployment = Deployment("escalate-cascade", name, "champion", "bundle")
    if pids:
        deployment.pids["slm"] = fake_server(directory)
    return deployment.save_to(directory)


class FakeGateway(GatewayProcess):
    def stop(self) -> None:
        self.stopped = True


class Fakes:
    """Every step, recording what it was asked; `at` names the step that fails (or signals)."""

    def __init__(self, root: Path, fail: str | None = None, how: Any = None, running: bool = False) -> None:
        self.root, self.fail, self.how = root, fail, how or RuntimeError("boom")
        self.switched: list[str | None] = []
        self.started: FakeGateway | None = None
        self.deployment: Deployment | None = None
        self.marked: list[str] = []
        self.launched: list[int] = []
        self.running = FakeGateway(URL, 1, "log") if running else None
        self.name, self.uri = "escalate-cascade", "sqlite:///unused.db"

    def aliases(self) -> dict[str, str]:
        return {}

    def step(self, name: str) -> None:
        if self.fail == name:
            if isinstance(self.how, BaseException):
                raise self.how
            os.kill(os.getpid(), self.how)
            time.sleep(5)  # the handler raises before this ends

    def export(self, registry: Any, alias: str, root: Path) -> Deployment:
        self.step("export")
        self.deployment = deployment_in(root, "new", pids=False)
        return self.deployment

    def launch(self, deployment: Deployment, root: Path, timeout_s: float) -> Deployment:
        deployment.pids["slm"] = fake_server(Path(deployment.path).parent)
        self.launched.append(deployment.pids["slm"])
        self.step("launch")
        return deployment.save_to(Path(deployment.path).parent)

    def start(self, root: Path) -> FakeGateway:
        self.started = FakeGateway(URL, 4242, "log")
        try:  # as gateway_process.start does: a gateway that never answered is stopped at once
            self.step("gateway")
        except BaseException:
            self.started.stop()
            raise
        (root / SERVING_DIR / GATEWAY_FILE).write_text(json.dumps({"url": URL, "pid": 4242, "log": "log"}))
        return self.started

    def switch(self, url: str, key: str, deployment: Deployment, timeout_s: float) -> dict:
        self.switched.append(deployment.version)
        if deployment.version == "new":
            self.step("switch")
        return {}

    def undeploy(self, url: str, key: str) -> None:
        self.switched.append(None)

    def smoke(self, url: str, key: str, model: str) -> list:
        self.step("smoke")
        return []

    def mark_serving(self, version: str, tags: dict, expected: str | None = None) -> None:
        self.step("record")
        self.marked.append(version)


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def install(**kwargs: Any) -> Fakes:
        fakes = Fakes(tmp_path, **kwargs)
        for name in ("export", "launch", "switch", "smoke"):
            monkeypatch.setattr(promote, name, getattr(fakes, name))
        monkeypatch.setattr(gateway_process, "running", lambda root: fakes.running)
        monkeypatch.setattr(gateway_process, "start", fakes.start)
        monkeypatch.setattr(gateway_process, "undeploy", fakes.undeploy)
        monkeypatch.setattr(gateway_process, "status", lambda url, key: None)
        return fakes
    return install


@pytest.fixture
def previous(tmp_path: Path) -> Deployment:
    deployment = deployment_in(tmp_path, "old")
    mark_current(tmp_path, Path(deployment.path).parent)
    yield deployment
    retire(deployment)


def test_the_lock_refuses_a_second_promotion_naming_the_holder(tmp_path: Path, install: Any) -> None:
    fakes = install()
    with PromotionLock(tmp_path / SERVING_DIR / promote.LOCK_FILE):
        with pytest.raises(PromotionFailed, match=rf"another promotion is running \(pid {os.getpid()}, started 20"):
            promote_alias(fakes, tmp_path)
    assert fakes.deployment is None  # refused before any step
    retire(Deployment.load(promote_alias(fakes, tmp_path).deployment))  # released: the next one runs


@pytest.mark.parametrize("step", STEPS)
def test_a_failing_first_promotion_leaves_no_gateway_and_no_servers(tmp_path: Path, install: Any, step: str) -> None:
    fakes = install(fail=step)
    with pytest.raises(PromotionFailed, match=f"failed at step '{step}': boom"):
        promote_alias(fakes, tmp_path)
    assert current(tmp_path) is None and not fakes.marked
    assert all(not alive(pid) for pid in fakes.launched)
    if fakes.launched:
        assert Deployment.load(fakes.deployment.path).pids == {}
    if fakes.started is not None:
        assert fakes.started.stopped and not (tmp_path / SERVING_DIR / GATEWAY_FILE).exists()


@pytest.mark.parametrize("step", [s for s in STEPS if s != "gateway"])  # a gateway runs: none is started
def test_a_failing_promotion_switches_back_and_keeps_the_previous(tmp_path: Path, install: Any, previous: Deployment,
                                                                 step: str) -> None:
    fakes = install(fail=step, running=True)
    with pytest.raises(PromotionFailed, match=f"(?s)failed at step '{step}'.*still serves escalate-cascade vold"):
        promote_alias(fakes, tmp_path)
    assert current(tmp_path).path == previous.path and not fakes.marked
    # A switch that fails other than by the gateway's refusal (a timeout) may have swapped: switched back too.
    assert fakes.switched == (["new", "old"] if step in ("switch", "smoke", "record") else [])
    assert all(not alive(pid) for pid in fakes.launched) and alive(previous.pids["slm"])


def test_a_failing_first_promotion_on_a_gateway_it_did_not_start_serves_nothing_again(tmp_path: Path,
                                                                                        install: Any) -> None:
    fakes = install(fail="smoke", running=True)
    with pytest.raises(PromotionFailed, match="nothing is serving yet"):
        promote_alias(fakes, tmp_path)
    assert fakes.switched == ["new", None] and not fakes.running.__dict__.get("stopped")


@pytest.mark.parametrize("step", ["launch", "gateway", "switch", "smoke"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_step_rolls_back_and_restores_the_handler(tmp_path: Path, install: Any, step: str,
                                                                   sig: int) -> None:
    fakes = install(fail=step, how=sig)
    before = signal.getsignal(sig)
    expected = (PromotionFailed, "interrupted by SIGTERM") if sig == signal.SIGTERM else (KeyboardInterrupt, None)
    with pytest.raises(expected[0], match=expected[1]):
        promote_alias(fakes, tmp_path)
    assert signal.getsignal(sig) is before
    assert current(tmp_path) is None and all(not alive(pid) for pid in fakes.launched)
    if fakes.started is not None:
        assert fakes.started.stopped


def test_a_signal_during_the_record_step_waits_for_the_promotion_then_reaches_the_old_handler(
        tmp_path: Path, install: Any) -> None:
    fakes = install(fail="record", how=signal.SIGTERM)
    fakes.step = lambda name: os.kill(os.getpid(), signal.SIGTERM) if name == "record" else None
    received: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        promotion = promote_alias(fakes, tmp_path)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert promotion.version == "new" and fakes.marked == ["new"] and received == [signal.SIGTERM]
    assert current(tmp_path).path == fakes.deployment.path
    retire(Deployment.load(fakes.deployment.path))


def test_retire_waits_until_the_gateway_has_drained_the_deployment(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = deployment_in(tmp_path, "old")
    pid, seen = deployment.pids["slm"], []

    def status(url: str, key: str) -> dict:
        seen.append(alive(pid))
        left = max(0, 3 - len(seen))
        return {"draining": [{"deployment": deployment.path, "in_flight": left}] if left else [], "drain_s": 30}

    monkeypatch.setattr(gateway_process, "status", status)
    monkeypatch.setattr(promote, "DRAIN_POLL_S", 0.01)
    retire(deployment, URL, "admin")
    assert seen == [True, True, True] and not alive(pid)


def test_retire_stops_waiting_past_the_gateways_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = deployment_in(tmp_path, "old")
    pid = deployment.pids["slm"]
    monkeypatch.setattr(gateway_process, "status", lambda url, key: {
        "draining": [{"deployment": deployment.path, "in_flight": 1}], "drain_s": 0.2})
    monkeypatch.setattr(promote, "DRAIN_MARGIN_S", 0.0)
    monkeypatch.setattr(promote, "DRAIN_POLL_S", 0.01)
    start = time.monotonic()
    retire(deployment, URL, "admin")
    assert 0.2 <= time.monotonic() - start < 5 and not alive(pid)


def test_the_next_promotion_stops_what_a_killed_one_left(tmp_path: Path, install: Any, previous: Deployment) -> None:
    orphan = deployment_in(tmp_path, "killed")
    pid = orphan.pids["slm"]
    fakes = install(running=True)
    promotion = promote_alias(fakes, tmp_path)
    assert not alive(pid) and Deployment.load(orphan.path).pids == {}
    assert promotion.orphans == ["escalate-cascade vkilled"] and "leftover" in promotion.summary()
    assert not alive(previous.pids["slm"])  # the previous deployment, retired after the switch
    retire(Deployment.load(fakes.deployment.path))


def test_a_reused_pid_is_not_stopped(tmp_path: Path) -> None:
    other = deployment_in(tmp_path, "other")
    deployment = deployment_in(tmp_path, "mine", pids=False)
    deployment.pids["slm"] = other.pids["slm"]  # runs another directory's files: not this deployment's
    retire(deployment)
    assert alive(other.pids["slm"])
    pid = other.pids["slm"]
    retire(other)
    assert not alive(pid)


def test_the_gateway_reports_what_the_previous_deployment_still_has_in_flight() -> None:
    holder = EngineHolder()
    old, new = StubEngine(), StubEngine()
    new.deployment = Deployment("escalate-cascade", "2", "champion", "/nowhere", path="/serving/new/deployment.json")
    old.deployment.path = "/serving/old/deployment.json"
    holder.swap(old)
    client = TestClient(create_app(GatewaySettings(api_keys=("k",), admin_keys=("a",), deadline_s=12), holder))
    admin = {"Authorization": "Bearer a"}
    assert client.get("/admin/status", headers={"Authorization": "Bearer k"}).status_code == 401
    with holder.use():
        holder.swap(new)
        status = client.get("/admin/status", headers=admin).json()
        assert status["serving"]["label"] == "escalate-cascade v2" and status["drain_s"] == 13
        assert status["draining"] == [{"deployment": old.deployment.path, "label": "escalate-cascade v1",
                                       "in_flight": 1}]
    assert client.get("/admin/status", headers=admin).json()["draining"] == []
    assert client.post("/admin/undeploy", headers=admin).json() == {
        "serving": None, "previous": "escalate-cascade v2", "previous_in_flight": 0}
    assert client.get("/v1/models", headers={"Authorization": "Bearer k"}).json()["data"] == []


def test_a_switch_the_gateway_refused_is_not_switched_back(tmp_path: Path, install: Any, previous: Deployment) -> None:
    fakes = install(fail="switch", how=PromotionFailed("the gateway refused the deployment (HTTP 409)"), running=True)
    with pytest.raises(PromotionFailed, match="failed at step 'switch': the gateway refused"):
        promote_alias(fakes, tmp_path)
    assert fakes.switched == ["new"] and all(not alive(pid) for pid in fakes.launched)


def test_the_record_step_moves_serving_from_where_it_was_when_the_promotion_began(tmp_path: Path,
                                                                                   install: Any) -> None:
    fakes = install()
    fakes.aliases = lambda: {"serving": "7"}
    moves: list[tuple[str, str | None]] = []
    fakes.mark_serving = lambda version, tags, expected=None: moves.append((version, expected))
    promotion = promote_alias(fakes, tmp_path)
    assert moves == [("new", "7")]  # a compare-and-swap from @serving as read before the first step
    assert not (tmp_path / SERVING_DIR / promote.PENDING_FILE).exists()  # committed: its guard was stood down
    retire(Deployment.load(promotion.deployment))
