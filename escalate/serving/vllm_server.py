"""Start, health-check and stop a vLLM OpenAI server for one checkpoint, in its own environment.

vLLM pins its own torch, transformers and fastapi, so it runs from `.venv-serve` (`make setup-serve`),
as production runs it in its own container; this module only needs the path of that Python. The
server binds loopback, is its own process group (so stopping it stops its engine core too), and
writes its log to a file that errors quote. Given an API key, it answers /v1 only to that key (the
gateway's, so nothing on this host bypasses the gateway's accounting); the key travels in vLLM's
environment ($VLLM_API_KEY, read like --api-key), not on its command line, which any local user can read.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SERVE_PYTHON_ENV = "ESCALATE_SERVE_PYTHON"
VLLM_KEY_ENV = "ESCALATE_VLLM_API_KEY"  # where the gateway finds the key of the vLLM servers promote starts
DEFAULT_SERVE_VENV = ".venv-serve"
# vLLM's CPU backend reserves most of a NUMA node for its KV cache unless told otherwise, and then
# refuses to start when that much is not free; the zoo's models need very little.
DEFAULT_KVCACHE_GIB = "1"
STOP_GRACE_S = 10.0


class ServerError(RuntimeError):
    """A vLLM server that could not start or answer; the message quotes its log."""


def serve_python(root: Path | str = ".") -> Path:
    """The Python of the serving environment: $ESCALATE_SERVE_PYTHON, else <root>/.venv-serve/bin/python."""
    configured = os.environ.get(SERVE_PYTHON_ENV)
    python = Path(configured) if configured else Path(root) / DEFAULT_SERVE_VENV / "bin" / "python"
    if not python.is_file():
        raise ServerError(f"no serving environment at {python}: run `make setup-serve` (it builds "
                          f"{DEFAULT_SERVE_VENV} with vLLM), or set {SERVE_PYTHON_ENV} to a Python that has vllm")
    return python


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class VllmServer:
    """One `vllm.entrypoints.openai.api_server` process serving `checkpoint` as `served_name`."""

    checkpoint: Path
    served_name: str
    port: int
    python: Path
    log_path: Path
    host: str = "127.0.0.1"
    dtype: str = "float32"  # the zoo was evaluated in fp32; serving must score the same
    max_model_len: int | None = None  # None: the checkpoint's own max_position_embeddings
    extra_args: list[str] = field(default_factory=list)
    api_key: str | None = field(default=None, repr=False)  # None: /v1 answers anyone on loopback
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(self.checkpoint), "--served-model-name", self.served_name,
                "--host", self.host, "--port", str(self.port), "--dtype", self.dtype,
                *(["--max-model-len", str(self.max_model_len)] if self.max_model_len else []),
                # Token ids in logprobs keep token counts exact for custom tokenizers.
                "--return-tokens-as-token-ids", *self.extra_args]

    def start(self) -> VllmServer:
        if not (self.checkpoint / "config.json").is_file():
            raise ServerError(f"{self.checkpoint} is not a checkpoint (no config.json)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", DEFAULT_KVCACHE_GIB),
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
               **({"VLLM_API_KEY": self.api_key} if self.api_key else {})}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until /health answers 200 and the model is listed; raise ServerError on exit or timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"vLLM for {self.served_name} exited with code {self.process.returncode} "
                                  f"while starting; last lines of {self.log_path}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(1.0)
        raise ServerError(f"vLLM for {self.served_name} was not healthy on {self.url} after {timeout_s:.0f} s; "
                          f"last lines of {self.log_path}:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            health = httpx.get(f"{self.url}/health", timeout=2.0)
            auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            models = httpx.get(f"{self.url}/v1/models", headers=auth, timeout=2.0) if health.status_code == 200 else None
        except httpx.HTTPError:
            return False
        return models is not None and models.status_code == 200 and any(
            m.get("id") == self.served_name for m in models.json().get("data", []))

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after a grace period; safe to call twice."""
        if self.process is None:
            return
        stop_group(self.process.pid)
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            stop_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_GRACE_S)
        self.process = None

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_group(pid: int, sig: int = signal.SIGTERM) -> bool:
    """Signal the process group a server leads; False when it is already gone."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError as exc:  # not ours: refuse rather than guess
        print(f"cannot stop process group {pid}: {exc}", file=sys.stderr)
        return False


def wait_gone(pid: int, timeout_s: float = STOP_GRACE_S) -> bool:
    """Wait for a process that is not our child (a server from an earlier command) to exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
