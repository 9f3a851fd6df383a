"""Deployments and vLLM launch: clear errors for what is missing or malformed, before any server starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalate.registry.bundle import BundleError
from escalate.serving.deployment import Deployment, bundle_artifacts
from escalate.serving.promote import top_logprobs
from escalate.serving.vllm_server import SERVE_PYTHON_ENV, ServerError, VllmServer, serve_python, stop_group


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
