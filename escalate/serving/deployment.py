"""A deployment: one registered bundle exported to a serving directory, and the servers that serve it.

    serving/
      current.json                      -> the deployment the gateway serves (written after a switch)
      gateway.json                      -> the running gateway: url, pid, log
      escalate-cascade-v3-20261126T010203/
        bundle/                         the model version's files (MLmodel, artifacts/...)
        deployment.json                 version, alias, endpoints, served names, server pids
        vllm-slm.log, vllm-llm.log

deployment.json is what the gateway loads; it is plain JSON so an operator (or a Kubernetes
ConfigMap) can write one by hand for servers started elsewhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from escalate.registry.bundle import BundleError, CascadeSpec, read_bundle, use_tracking_uri

SERVING_DIR = "serving"
CURRENT_FILE = "current.json"
GATEWAY_FILE = "gateway.json"
DEPLOYMENT_FILE = "deployment.json"


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
    top_logprobs: dict[str, int] = field(default_factory=dict)  # role -> alternatives asked per token
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
            data = json.loads(path.read_text())
            return cls(**{**data, "path": str(path)})
        except FileNotFoundError:
            raise BundleError(f"no deployment at {path}; run `escalate promote` first") from None
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{path} is not a deployment.json: {type(exc).__name__}: {exc}") from None

    def artifacts(self) -> dict[str, str]:
        return bundle_artifacts(Path(self.path).parent / self.bundle_dir)

    def read(self) -> tuple[CascadeSpec, Any, dict[str, str]]:
        """The bundle's spec, fitted router and checkpoint dirs, checked file by file."""
        return read_bundle(self.artifacts())


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
    import mlflow

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
