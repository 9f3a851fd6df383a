"""Deployments and vLLM launch: clear errors for what is missing or malformed, before any server starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalate.registry.bundle import BundleError
from escalate.serving import gateway_process, vllm_server
from escalate.serving.deployment import Deployment, bundle_artifacts
from escalate.serving.gateway import ADMIN_KEY_ENV, API_KEY_ENV
from escalate.serving.promote import top_logprobs
from escalate.serving.vllm_server import (
    SERVE_PYTHON_ENV,
    VLLM_KEY_ENV,
    ServerError,
    VllmServer,
    serve_python,
    stop_group,
)


def test_deployment_round_trips_and_resolves_its_bundle_relative_to_itself(tmp_path: Path) -> None:
    bundle = tmp_path / "d" / "bundle"
    (bundle / "artifacts").mkdir(parents=True)
    (bundle / "MLmodel").write_text("flavors:\n  python_function:\n    artifacts:\n"
                                    "      cascade: {path: artifacts/cascade.json}\n      slm: {path: artifacts/slm}\n")
    saved = Deployment("escalate-cascade", "3", "champion", "bundle", endpoints={"slm": "http://127.0.0.1:1"}
                       ).save_to(tmp_path / "d")
    moved = tmp_path / "moved"
    (tmp_path / "d").rename(moved)  # a deployment directory can move (a volume mounted elsewhere)
    loaded = Deployment.load(moved)
    assert (loaded.version, loaded.endpoints, loaded.label) == ("3", saved.endpoints, "escalate-cascade v3")
    assert loaded.artifacts() == {"cascade": str(moved / "bundle/artifacts/cascade.json"),
                                  "slm": str(moved / "bundle/artifacts/slm")}


def test_bad_deployments_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no deployment at .*run `escalate promote`"):
        Deployment.load(tmp_path / "nowhere.json")
    (tmp_path / "deployment.json").write_text('{"model_name": "x"')
    with pytest.raises(BundleError, match="is not a deployment.json"):
        Deployment.load(tmp_path)
    with pytest.raises(BundleError, match="not an exported bundle"):
        bundle_artifacts(tmp_path)


def test_serving_environment_missing_says_how_to_build_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SERVE_PYTHON_ENV, raising=False)
    with pytest.raises(ServerError, match="make setup-serve"):
        serve_python(tmp_path)


def test_server_refuses_a_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    server = VllmServer(tmp_path, "slm", 1, Path("python"), tmp_path / "log")
    with pytest.raises(ServerError, match="not a checkpoint"):
        server.start()
    assert "--return-tokens-as-token-ids" in server.command() and "--max-model-len" not in server.command()
    assert stop_group(2**22 + 12345) is False  # a process group that does not exist: nothing to stop


def test_full_vocabulary_logprobs_only_for_small_vocabularies(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"vocab_size": 400}')
    assert top_logprobs(tmp_path) == 400
    (tmp_path / "config.json").write_text('{"vocab_size": 151936}')
    assert top_logprobs(tmp_path) == 20


def test_vllm_gets_its_key_in_its_environment_not_on_its_command_line(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text("{}")
    started: dict = {}

    class Popen:
        def __init__(self, command: list[str], env: dict, **kwargs: object) -> None:
            started.update(command=command, env=env)
            self.pid = 0

    monkeypatch.setattr(vllm_server.subprocess, "Popen", Popen)
    server = VllmServer(tmp_path, "slm", 1, Path("python"), tmp_path / "log", api_key="esv-secret").start()
    assert started["env"]["VLLM_API_KEY"] == "esv-secret" and "esv-secret" not in " ".join(started["command"])
    assert "esv-secret" not in repr(server)


def test_each_kept_key_is_its_own_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for env in (API_KEY_ENV, ADMIN_KEY_ENV, VLLM_KEY_ENV):
        monkeypatch.delenv(env, raising=False)
    keys = [gateway_process.api_key(tmp_path), gateway_process.admin_key(tmp_path), gateway_process.vllm_key(tmp_path)]
    assert len(set(keys)) == 3 and gateway_process.admin_key(tmp_path) == keys[1]  # made once, then kept
    for name in ("gateway.key", "admin.key", "vllm.key"):
        assert (tmp_path / "serving" / name).stat().st_mode & 0o777 == 0o600
