"""Kill drills: a promotion killed (SIGKILL or SIGTERM) at each step leaves the previous deployment
answering through the real gateway process and every registry alias where it was; the next promotion
then completes and stops whatever the killed ones left.

The promotion runs in a subprocess (tests/promote_drill.py: the real promote_alias against a real
SQLite registry and a real gateway process whose deployments are stub engines, no models), stopped at
a step by $ESCALATE_PROMOTE_PAUSE_AT and killed there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from escalate.registry.aliases import SERVING, Registry
from escalate.registry.gates import GateResult
from escalate.serving import gateway_process
from escalate.serving.deployment import DEPLOYMENT_FILE, GATEWAY_FILE, SERVING_DIR, Deployment, current, write_json
from escalate.serving.promote import PAUSE_ENV, PENDING_FILE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("export", "launch", "gateway", "switch", "smoke", "record")
PASS = [GateResult("accuracy", True, 0.85, 0.81, "accuracy 0.85 ≥ 0.81")]
WAIT_S = 120.0


def register(uri: str, path: Path, name: str) -> str:
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.get_experiment_by_name("drill").experiment_id, run_name=name).info.run_id
    source = path / "models" / name
    source.mkdir(parents=True)
    return Registry(uri).register(str(source), PASS, run_id=run).version


def promotion(root: Path, uri: str, pause: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(PAUSE_ENV, None)
    if pause:
        env[PAUSE_ENV] = pause
    return subprocess.Popen([sys.executable, "-m", "tests.promote_drill", "promote", str(root), uri], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def served_by(root: Path) -> str:
    """Who answers a client of the gateway now."""
    url = gateway_process.running(root).url
    response = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {gateway_process.api_key(root)}"},
                          json={"model": "escalate-cascade", "messages": [{"role": "user", "content": "2+2?"}]})
    assert response.status_code == 200, response.text
    return response.json()["escalate"]["served_by"]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""  # empty: a zombie
    except FileNotFoundError:
        return False


def servers(root: Path) -> set[int]:
    """Every running process whose command line names a deployment directory of this drill."""
    marker, found = str(root / SERVING_DIR).encode(), set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in proc.joinpath("cmdline").read_bytes():
                found.add(int(proc.name))
        except OSError:
            continue
    return found


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S:.0f} s: {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory):
    """A gateway serving version 1 (promoted for real), and version 2 registered as @champion since."""
    root = tmp_path_factory.mktemp("drill")
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(tracking_uri=uri).create_experiment("drill", artifact_location=(root / "artifacts").as_uri())
    register(uri, root, "v1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (root / "gateway.log").open("ab")
    gateway = subprocess.Popen([sys.executable, "-m", "tests.promote_drill", "gateway", str(root), str(port)],
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log,
                               start_new_session=True)
    try:
        (root / SERVING_DIR).mkdir(exist_ok=True)
        write_json(root / SERVING_DIR / GATEWAY_FILE, {"url": f"http://127.0.0.1:{port}", "pid": gateway.pid,
                                                       "log": str(root / "gateway.log")})
        until(lambda: gateway_process.running(root) is not None, "the drill gateway answers /health")
        first = promotion(root, uri)
        assert first.wait(WAIT_S) == 0, first.stderr.read()
        assert served_by(root) == "v1-slm"
        register(uri, root, "v2")
        yield root, uri, Registry(uri).aliases()
    finally:
        gateway.kill()
        gateway.wait()
        for path in (root / SERVING_DIR).glob(f"*/{DEPLOYMENT_FILE}"):
            for pid in Deployment.load(path).pids.values():
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_promotion_killed_at_a_step_leaves_the_previous_answering_and_the_aliases(drill, step: str,
                                                                                     sig: int) -> None:
    root, uri, aliases = drill
    assert aliases["champion"] == "2" and aliases[SERVING] == "1"
    process = promotion(root, uri, pause=step)
    until(lambda: f"paused at {step}" in process.stderr.readline() or process.poll() is not None,
          f"the promotion pauses at {step}")
    assert process.poll() is None, process.stderr.read()
    process.send_signal(sig)
    assert process.wait(WAIT_S) != 0
    # SIGTERM: the promotion undid itself; SIGKILL from the switch on: its guard does, then drops the file.
    until(lambda: not (root / SERVING_DIR / PENDING_FILE).exists(), "the guard undoes the killed promotion")
    assert Registry(uri).aliases() == aliases
    assert current(root).version == "1" and served_by(root) == "v1-slm"
    status = gateway_process.status(gateway_process.running(root).url, gateway_process.admin_key(root))
    assert status["serving"]["label"] == "escalate-cascade v1"
    if sig == signal.SIGTERM or STEPS.index(step) >= STEPS.index("switch"):  # undone: only v1's server runs
        until(lambda: servers(root) == set(current(root).pids.values()), "only the previous deployment's server runs")


def test_after_the_drills_the_next_promotion_completes_and_stops_what_they_left(drill) -> None:
    root, uri, _ = drill
    process = promotion(root, uri)
    assert process.wait(WAIT_S) == 0, process.stderr.read()
    assert served_by(root) == "v2-slm" and Registry(uri).aliases()[SERVING] == "2"
    assert servers(root) == set(current(root).pids.values())  # none left by the killed promotions
