"""A deployment: one registered bundle exported to a serving directory, and the servers that serve it.

    serving/
      current.json                      -> the deployment the gateway serves (written after a switch)
      gateway.json                      -> the running gateway: url, pid, log
      escalate-cascade-v3-20261126T010203/
        bundle/                         the model version's files (MLmodel, artifacts/...)
        deployment.json                 version, alias, endpoints, served names, server pids
        vllm-slm.log, vllm-llm.log

deployment.json is what the gateway loads; it is plain JSON so an operator (or a Kubernetes
ConfigMap) can write one by hand for servers started elsewhere. It names, per server, the environment
variable holding that server's API key (never the key). The gateway's admin endpoint loads only
deployments inside the serving directory (`load_within`): a deployment names files the gateway
unpickles, so it must come from where promotions write.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from escalate.registry.bundle import BundleError, CascadeSpec, read_bundle, use_tracking_uri

SERVING_DIR = "serving"
CURRENT_FILE = "current.json"
GATEWAY_FILE = "gateway.json"
DEPLOYMENT_FILE = "deployment.json"
MAX_DEPLOYMENT_BYTES = 1_000_000  # a deployment.json is a few hundred bytes
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux


@dataclass
class Deployment:
    """What the gateway needs to serve one bundle: where its files are and where its models answer."""

    model_name: str
    version: str
    alias: str
    bundle_dir: str  # the exported model version (holds MLmodel); relative to this file's directory
    endpoints: dict[str, str] = field(default_factory=dict)  # role -> base URL of its OpenAI server
    served_names: dict[str, str] = field(default_factory=dict)  # role -> model name the server answers to
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid of a server this deployment started
    top_logprobs: dict[str, int] = field(default_factory=dict)  # role -> the most alternatives per token its server gives
    logprobs: str = "strategy"  # alternatives asked: what the router reads, or "full" (served entropy == evaluated)
    api_key_env: dict[str, str] = field(default_factory=dict)  # role -> env variable with its server's API key
    created_at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    path: str = ""  # where this deployment.json is (set by save_to and load)

    @property
    def label(self) -> str:
        return f"{self.model_name} v{self.version}"

    def save_to(self, directory: Path) -> Deployment:
        self.path = str(directory / DEPLOYMENT_FILE)
        write_json(Path(self.path), asdict(self))
        return self

    @classmethod
    def load(cls, path: Path | str) -> Deployment:
        path = Path(path)
        if path.is_dir():
            path = path / DEPLOYMENT_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise BundleError(f"no deployment at {path}; run `escalate promote` first") from None
        return cls.parse(text, path)

    @classmethod
    def load_within(cls, path: str, directory: Path) -> Deployment:
        """`load`, for a path a client sent: it must resolve (symlinks followed) to a regular file of at most
        MAX_DEPLOYMENT_BYTES inside `directory`, and so must the bundle it names. Opened without blocking,
        so a FIFO or a device cannot hold the caller; BundleError says which rule failed."""
        if not path or len(path) > MAX_PATH_CHARS or "\x00" in path:
            raise BundleError(f"a deployment path must be 1 to {MAX_PATH_CHARS} characters without NUL bytes")
        root = directory.resolve()
        try:
            target = Path(path).resolve()
            if target.is_dir():
                target = target / DEPLOYMENT_FILE
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise BundleError(f"cannot resolve the deployment path ({type(exc).__name__})") from None
        if not target.is_relative_to(root):
            raise BundleError(f"deployments are loaded only from the serving directory {root}")
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError as exc:
            raise BundleError(f"no readable deployment at {target} ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise BundleError(f"{target} is not a regular file")
            if info.st_size > MAX_DEPLOYMENT_BYTES:
                raise BundleError(f"{target} is over {MAX_DEPLOYMENT_BYTES} bytes; not a deployment.json")
            text = fh.read(MAX_DEPLOYMENT_BYTES + 1)
        deployment = cls.parse(text, target)
        if not (target.parent / deployment.bundle_dir).resolve().is_relative_to(root):
            raise BundleError(f"{target} names a bundle outside the serving directory {root}")
        return deployment

    @classmethod
    def parse(cls, text: str | bytes, path: Path) -> Deployment:
        try:
            data = json.loads(text)
            deployment = cls(**{**data, "path": str(path)})
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{path} is not a deployment.json: {type(exc).__name__}: {exc}") from None
        wrong = [f.name for f in fields(cls) if not isinstance(getattr(deployment, f.name), _JSON_TYPES[f.type])]
        if wrong:
            raise BundleError(f"{path} is not a deployment.json: wrong types for {wrong}")
        return deployment

    def artifacts(self) -> dict[str, str]:
        return bundle_artifacts(Path(self.path).parent / self.bundle_dir)

    def read(self) -> tuple[CascadeSpec, Any, dict[str, str]]:
        """The bundle's spec, fitted router and checkpoint dirs, checked file by file."""
        return read_bundle(self.artifacts())


# What each Deployment field must hold once read from JSON (annotations are strings here).
_JSON_TYPES = {"str": str, "dict[str, str]": dict, "dict[str, int]": dict}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def bundle_artifacts(bundle_dir: Path) -> dict[str, str]:
    """artifact key -> local path, from an exported model version's MLmodel file."""
    mlmodel = bundle_dir / "MLmodel"
    if not mlmodel.is_file():
        raise BundleError(f"{bundle_dir} is not an exported bundle (no MLmodel)")
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
    listed = flavor.get("artifacts") or {}
    if not listed:
        raise BundleError(f"{mlmodel} lists no artifacts; is this an escalate cascade?")
    return {key: str(bundle_dir / entry["path"]) for key, entry in listed.items()}


def export_bundle(tracking_uri: str, model_name: str, version: str, dest: Path) -> Path:
    """Download a registered model version's files into dest/bundle and check them; returns that dir."""
    import mlflow  # seconds to import: only promote and export download bundles, the gateway never does

    target = dest / "bundle"
    target.mkdir(parents=True, exist_ok=True)
    with use_tracking_uri(tracking_uri):
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}", dst_path=str(target))
    bundle_dir = Path(local)
    read_bundle(bundle_artifacts(bundle_dir))  # fail now, naming the file, not when the gateway loads it
    return bundle_dir


def new_deployment_dir(root: Path, model_name: str, version: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = root / SERVING_DIR / f"{model_name}-v{version}-{stamp}"
    path.mkdir(parents=True)
    return path


def current(root: Path) -> Deployment | None:
    """The deployment the gateway was last switched to, or None."""
    path = root / SERVING_DIR / CURRENT_FILE
    if not path.is_file():
        return None
    return Deployment.load(Path(json.loads(path.read_text())["deployment"]))


def mark_current(root: Path, deployment_dir: Path) -> None:
    write_json(root / SERVING_DIR / CURRENT_FILE, {"deployment": str(deployment_dir / DEPLOYMENT_FILE)})
