"""The cascade bundle: logged from the smoke zoo, registered, and answering in a fresh process."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from escalate.cascade import ROLES
from escalate.config import ModelConfig, load_profile
from escalate.evaluation.cost import FlopsCost, TokenPriceCost
from escalate.registry import gates
from escalate.registry.aliases import CHAMPION, Registry
from escalate.registry.bundle import BundleError, CascadeSpec, local_checkpoint, log_bundle, read_bundle
from escalate.serving.deployment import bundle_artifacts

ROOT = Path(__file__).resolve().parents[1]
PROFILE = load_profile("smoke", ROOT)
COST = TokenPriceCost({r: tuple(p) for r, p in PROFILE.cost.prices.items()})
SAMPLING = replace(PROFILE.sampling, max_new_tokens=4)  # short answers: these tests are about plumbing
QUESTIONS = ["Eva has 7 cups. Then gives away 1. How many cups does Eva have now?",
             "Jon has 8 cards. Then gives away 5. Then gives away 2. How many cards does Jon have now?",
             "Cara has 9 coins. Then gets 5 more. How many coins does Cara have now?",
             "Ben has 3 pens. Then gets 4 more. How many pens does Ben have now?"]
ANSWER_SCRIPT = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
print("ANSWERS " + model.predict(pd.DataFrame({"question": json.loads(sys.argv[2])})).to_json(orient="records"))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One SQLite store for this module, artifacts beside it."""
    path = tmp_path_factory.mktemp("bundles")
    uri = f"sqlite:///{path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("bundles", artifact_location=(path / "artifacts").as_uri())
    return uri, experiment


def log(store: tuple[str, str], smoke: Path, strategy: str, threshold: float, **kwargs: object):
    uri, experiment = store
    run = MlflowClient(tracking_uri=uri).create_run(experiment, run_name=f"candidate-{strategy}").info.run_id
    spec = CascadeSpec(strategy, threshold, PROFILE.models["slm"], PROFILE.models["llm"], COST, SAMPLING,
                       PROFILE.seed, "smoke")
    checkpoints = {role: local_checkpoint(PROFILE.models[role], role, smoke / "zoo") for role in ROLES}
    return log_bundle(spec, tracking_uri=uri, run_id=run, checkpoints=checkpoints, eval_dir=smoke / "eval",
                      example_questions=QUESTIONS[:1], **kwargs)


def test_champion_bundle_answers_in_a_fresh_process(store: tuple[str, str], smoke: Path) -> None:
    outcomes = pd.DataFrame({"id": ["a", "b"], "question": ["qa", "qb"], "correct": [True, False],
                             "escalated": [False, True], "cost": [1.0, 21.0]})
    info = log(store, smoke, "mean_logprob", 0.04845, outcomes=outcomes, metrics={"accuracy": 0.5, "cost": 0.4})
    registry = Registry(store[0])
    passing = [gates.data_validation_gate({"questions": True, "samples": True}), gates.accuracy_gate(0.5, 0.5, 0.02)]
    registration = registry.register(info.model_uri, passing, run_id=info.run_id, model_id=info.model_id,
                                     tags=info.tags())
    assert registration.passed and registry.aliases()[CHAMPION] == registration.version

    env = {**os.environ, "MLFLOW_TRACKING_URI": store[0], "MLFLOW_REGISTRY_URI": store[0]}
    proc = subprocess.run([sys.executable, "-c", ANSWER_SCRIPT, "models:/escalate-cascade@champion",
                           json.dumps(QUESTIONS)], check=False, capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(store[0].removeprefix("sqlite:///")).parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ANSWERS "))
    out = pd.DataFrame(json.loads(line.removeprefix("ANSWERS ")))
    assert len(out) == len(QUESTIONS) and out["answer"].map(lambda a: isinstance(a, str)).all()
    assert set(out["model"]) <= {"slm", "llm"} and (out["strategy"] == "mean_logprob").all()
    assert list(out["model"] == "llm") == list(out["score"] < 0.04845)  # the bundle's threshold decides
    assert (out["cost"] > 0).all() and (out["latency_s"] > 0).all()
    assert np.allclose(out["cost"], out["cost_slm"] + out["cost_llm"])

    shown = registry.show(registration.version)
    assert shown["params"]["strategy"] == "mean_logprob" and shown["params"]["threshold"] == "0.04845"
    assert shown["metrics"]["accuracy"] == 0.5 and shown["tags"]["escalate.strategy"] == "mean_logprob"
    pd.testing.assert_frame_equal(registry.champion_outcomes(), outcomes)

    # The regression gate's pairs: the champion's stored outcomes on the same queries...
    pairs = registry.champion_pairs(outcomes.assign(correct=[False, False]))
    cand, champ = pairs.candidate, pairs.champion
    assert list(cand) == [False, False] and list(champ) == [True, False]
    # ...and on another test set, not comparable: the champion is never run here to answer it.
    test = pd.DataFrame({"id": [f"t{i}" for i in range(4)], "question": QUESTIONS, "correct": True})
    other = registry.champion_pairs(test)
    assert other.champion is None and "not comparable" in other.unpaired
    assert f"@champion (version {registration.version})" in other.unpaired


def test_corrupt_bundle_fails_its_load_gate_and_moves_nothing(store: tuple[str, str], smoke: Path) -> None:
    info = log(store, smoke, "p_true_token", 0.5)
    location = MlflowClient(tracking_uri=store[0]).get_logged_model(info.model_id).artifact_location
    weights = Path(location.removeprefix("file://")) / "artifacts" / "slm" / "model.safetensors"
    assert weights.is_file()
    weights.unlink()  # an incomplete upload

    good = log(store, smoke, "p_true_token", 0.5)
    # one fresh process for both: the broken bundle fails alone, the one after it still loads and answers
    result, after = gates.load_gates([info.model_uri, good.model_uri], [QUESTIONS[:2]] * 2, store[0], timeout_s=300)
    assert after.passed and after.figure == 2, after.reason
    assert not result.passed and "fresh process failed" in result.reason
    assert "BundleError: the bundled slm checkpoint" in result.reason and "missing model.safetensors" in result.reason

    registry = Registry(store[0])
    before = registry.aliases().get(CHAMPION)
    registration = registry.register(info.model_uri, [result], run_id=info.run_id, model_id=info.model_id)
    assert not registration.passed and registry.aliases().get(CHAMPION) == before
    (gate,) = registry.show(registration.version)["gates"]
    assert gate.name == "bundle_load" and not gate.passed and gate.reason == result.reason[:len(gate.reason)]


def test_spec_round_trips_and_rejects_what_it_cannot_rebuild() -> None:
    http_llm = ModelConfig(name="gpt-x", source="gpt-x", backend="openai", endpoint="https://api.example/v1",
                           api_key_env="LLM_KEY")
    spec = CascadeSpec("self_consistency", math.inf, PROFILE.models["slm"], http_llm,
                       FlopsCost({"slm": 10, "llm": 200}), PROFILE.sampling, seed=3, profile="smoke")
    data = json.loads(json.dumps(spec.to_dict()))  # through JSON, as cascade.json
    back = CascadeSpec.from_dict(data)
    assert back == spec and data["models"]["llm"]["endpoint"] == "https://api.example/v1"
    assert "LLM_KEY" in json.dumps(data) and spec.params()["cost.params.llm"] == "200"  # the key's name, never a key
    with pytest.raises(BundleError, match="format_version"):
        CascadeSpec.from_dict({**data, "format_version": 99})
    with pytest.raises(BundleError, match="incomplete"):
        CascadeSpec.from_dict({k: v for k, v in data.items() if k != "sampling"})
    assert local_checkpoint(http_llm, "llm", Path(".")) is None
    with pytest.raises(BundleError, match="no config.json"):
        local_checkpoint(ModelConfig(source="zoo"), "slm", Path("/nonexistent-zoo"))
    with pytest.raises(BundleError, match="checkpoint directory"):
        log_bundle(spec, tracking_uri="sqlite:///unused.db", run_id="r", checkpoints={})


def test_a_bundle_changed_after_registration_is_refused_naming_the_file(store: tuple[str, str], smoke: Path,
                                                                         tmp_path: Path) -> None:
    info = log(store, smoke, "prompt_length", 0.5)
    location = MlflowClient(tracking_uri=store[0]).get_logged_model(info.model_id).artifact_location
    bundle = shutil.copytree(Path(location.removeprefix("file://")), tmp_path / "bundle")
    listed = json.loads((bundle / "artifacts" / "cascade.json").read_text())
    assert set(listed["router_files"]) == {"state.json", "arrays.npz"} and "model.safetensors" in listed[
        "checkpoint_files"]["slm"]
    spec, router, _ = read_bundle(bundle_artifacts(bundle))  # what `escalate export` and the gateway's engine read
    assert router.name == spec.strategy == "prompt_length"
    for victim in (bundle / "artifacts" / "router_state" / "state.json", bundle / "artifacts" / "slm" / "config.json"):
        original = victim.read_bytes()
        victim.write_bytes(original.replace(b"{", b"[", 1))  # same size, other content
        with pytest.raises(BundleError, match=rf"altered {victim.name} \(SHA-256 differs"):
            read_bundle(bundle_artifacts(bundle))
        victim.write_bytes(original)
    read_bundle(bundle_artifacts(bundle))


def test_use_tracking_uri_puts_mlflow_globals_back_as_they_were(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset stays unset: a later MlflowClient(tracking_uri=X) must not be pinned to this block's registry."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from escalate.registry.bundle import use_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    before = mlflow.get_tracking_uri()
    with use_tracking_uri(first):
        assert mlflow.get_registry_uri() == first
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == before
    assert MlflowClient(tracking_uri=second)._registry_uri == second
