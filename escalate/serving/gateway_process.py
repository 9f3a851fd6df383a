"""The gateway as a background process: started by `escalate serve --detach` or by `promote`, found again
through serving/gateway.json, stopped by its PID.

Each key comes from its environment variable; without one, a random key is made once and kept in
serving/ (mode 600), so the demo is authenticated without any set-up: the client key
($ESCALATE_API_KEY, gateway.key), the admin key promote deploys with ($ESCALATE_ADMIN_KEY, admin.key)
and the key of the vLLM servers promote starts ($ESCALATE_VLLM_API_KEY, vllm.key), which the gateway
sends them, so no client on this host reaches a model without going through the gateway's accounting.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from escalate.serving.deployment import GATEWAY_FILE, SERVING_DIR, write_json
from escalate.serving.gateway import ADMIN_KEY_ENV, API_KEY_ENV
from escalate.serving.vllm_server import VLLM_KEY_ENV, ServerError, free_port, stop_group, wait_gone

KEY_FILE = "gateway.key"
ADMIN_KEY_FILE = "admin.key"
VLLM_KEY_FILE = "vllm.key"


def api_key(root: Path) -> str:
    """$ESCALATE_API_KEY, else the key kept in serving/gateway.key (made on first use)."""
    return _kept_key(root, API_KEY_ENV, KEY_FILE, "esk")


def admin_key(root: Path) -> str:
    """$ESCALATE_ADMIN_KEY, else the key kept in serving/admin.key (made on first use)."""
    return _kept_key(root, ADMIN_KEY_ENV, ADMIN_KEY_FILE, "esa")


def vllm_key(root: Path) -> str:
    """$ESCALATE_VLLM_API_KEY, else the key kept in serving/vllm.key (made on first use)."""
    return _kept_key(root, VLLM_KEY_ENV, VLLM_KEY_FILE, "esv")


def _kept_key(root: Path, env: str, name: str, prefix: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    path = root / SERVING_DIR / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{prefix}-{secrets.token_urlsafe(24)}\n")
    return path.read_text().strip()


@dataclass
class GatewayProcess:
    url: str
    pid: int
    log: str

    def alive(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if stop_group(self.pid):
            wait_gone(self.pid)


def running(root: Path) -> GatewayProcess | None:
    """The gateway recorded in serving/gateway.json, if it still answers."""
    path = root / SERVING_DIR / GATEWAY_FILE
    if not path.is_file():
        return None
    process = GatewayProcess(**json.loads(path.read_text()))
    return process if process.alive() else None


def start(root: Path, port: int | None = None, host: str = "127.0.0.1", timeout_s: float = 120.0) -> GatewayProcess:
    """Start `escalate serve` in the background (no deployment yet: promote switches it) and wait for /health."""
    port = port or free_port(host)
    log = root / SERVING_DIR / "gateway.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, API_KEY_ENV: api_key(root), ADMIN_KEY_ENV: admin_key(root), VLLM_KEY_ENV: vllm_key(root)}
    command = [sys.executable, "-m", "escalate.cli", "serve", "--host", host, "--port", str(port), "--root", str(root),
               "--no-current"]
    with log.open("ab") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=root)
    process = GatewayProcess(url=f"http://{host}:{port}", pid=proc.pid, log=str(log))
    try:  # interrupted too (promote turns SIGTERM into an exception): no gateway nobody knows about
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise ServerError(f"the gateway exited with code {proc.returncode} while starting; {log}:\n{tail}")
            if process.alive():
                write_json(root / SERVING_DIR / GATEWAY_FILE,
                           {"url": process.url, "pid": process.pid, "log": process.log})
                return process
            time.sleep(0.5)
    except BaseException:
        process.stop()
        raise
    process.stop()
    raise ServerError(f"the gateway did not answer /health on {process.url} within {timeout_s:.0f} s; see {log}")


def forget(root: Path, process: GatewayProcess) -> None:
    """Drop serving/gateway.json if it still names `process` (stopped by the promotion that started it)."""
    path = root / SERVING_DIR / GATEWAY_FILE
    if path.is_file() and json.loads(path.read_text()).get("pid") == process.pid:
        path.unlink()


def status(url: str, key: str) -> dict | None:
    """The gateway's GET /admin/status (what it serves, what still drains), or None when it cannot say."""
    try:
        response = httpx.get(f"{url}/admin/status", headers={"Authorization": f"Bearer {key}"}, timeout=5.0)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def undeploy(url: str, key: str) -> None:
    """Make the gateway serve nothing (503s): where a failed first promotion leaves a gateway it did not start."""
    response = httpx.post(f"{url}/admin/undeploy", headers={"Authorization": f"Bearer {key}"}, timeout=30.0)
    response.raise_for_status()
