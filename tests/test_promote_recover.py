"""The guard of a killed promotion (serving/promote_recover.py), decided from serving/promote.pending.json:
killed before its commit, the gateway goes back, the new servers stop and @serving moves back (a real
SQLite registry); killed after it, nothing is undone. The gateway is faked; the kill drills
(tests/test_promote_kill.py) run the guard for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from escalate.registry.aliases import SERVING, Registry
from escalate.registry.gates import GateResult
from escalate.serving import gateway_process, promote_recover
from escalate.serving.deployment import SERVING_DIR, Deployment, mark_current, write_json
from escalate.serving.promote import PENDING_FILE, retire
from tests.test_promote import URL, alive, deployment_in

PASS = [GateResult("accuracy", True, 0.85, 0.81, "accuracy 0.85 ≥ 0.81")]


@pytest.fixture
def killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """v1 serving; a promotion of v2 that had switched the gateway and moved @serving when it was killed."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("recover", artifact_location=(tmp_path / "artifacts").as_uri())
    registry = Registry(uri, "recover")
    for name in ("v1", "v2"):
        source = tmp_path / "models" / name
        source.mkdir(parents=True)
        registry.register(str(source), PASS, run_id=client.create_run(experiment).info.run_id)
    registry.mark_serving(1, {"escalate.serving.at": "t1"}, expected=None)
    old, new = deployment_in(tmp_path, "old"), deployment_in(tmp_path, "new")
    mark_current(tmp_path, Path(old.path).parent)
    registry.mark_serving(2, {"escalate.serving.at": "t2"}, expected="1")  # the record step ran; the commit did not
    write_json(tmp_path / SERVING_DIR / PENDING_FILE, {
        "promoter": 1, "deployment": new.path, "version": "2", "previous": old.path,
        "gateway": {"url": URL, "pid": 4242, "log": "log"}, "started_gateway": False,
        "registry": {"uri": uri, "name": "recover"}, "serving": "1"})
    gateway: dict[str, Any] = {"serving": new.path, "switched": []}

    def switch(url: str, key: str, deployment: Deployment, timeout_s: float = 300.0) -> dict:
        gateway["serving"] = deployment.path
        gateway["switched"].append(deployment.version)
        return {}

    monkeypatch.setattr(promote_recover, "switch", switch)
    monkeypatch.setattr(gateway_process, "status", lambda url, key: {
        "serving": {"deployment": gateway["serving"]}, "draining": [], "drain_s": 1})
    yield tmp_path, registry, old, new, gateway
    retire(Deployment.load(old.path))
    retire(Deployment.load(new.path))


def test_killed_before_its_commit_everything_goes_back(killed: tuple) -> None:
    root, registry, old, new, gateway = killed
    new_pid = new.pids["slm"]
    done = promote_recover.recover(root)
    assert gateway["switched"] == ["old"] and gateway["serving"] == old.path
    assert not alive(new_pid) and alive(old.pids["slm"])
    assert registry.aliases()[SERVING] == "1" and "moved @serving back to 1" in done
    assert not (root / SERVING_DIR / PENDING_FILE).exists()
    assert promote_recover.recover(root) is None  # done once: nothing left to undo


def test_killed_after_its_commit_nothing_is_undone(killed: tuple) -> None:
    root, registry, old, new, gateway = killed
    mark_current(root, Path(new.path).parent)  # the commit point
    assert "had been committed" in promote_recover.recover(root)
    assert gateway["switched"] == [] and alive(new.pids["slm"]) and registry.aliases()[SERVING] == "2"
    assert not (root / SERVING_DIR / PENDING_FILE).exists()
