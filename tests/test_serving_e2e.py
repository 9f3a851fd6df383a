"""Serving end to end: the smoke champion promoted onto real vLLM CPU servers behind a real gateway process,
queried with the official openai client; a broken bundle that fails promotion while the previous
deployment keeps answering; auth and limits; LLM-down and SLM-down behaviour.

Needs .venv-serve (`make setup-serve`, which `make test` runs first).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from escalate.cascade import ROLES
from escalate.config import load_profile
from escalate.evaluation.cost import TokenPriceCost
from escalate.registry import gates
from escalate.registry.aliases import SERVING, Registry
from escalate.registry.bundle import CascadeSpec, local_checkpoint, log_bundle
from escalate.routers.base import RouterInputs
from escalate.routers.registry import make_router
from escalate.serving import gateway_process
from escalate.serving.deployment import Deployment, current
from escalate.serving.engine import Engine, ModelDown
from escalate.serving.promote import PromotionFailed, promote_alias, retire
from escalate.serving.vllm_server import VLLM_KEY_ENV, stop_group

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROFILE = load_profile("smoke", ROOT)
SHORT = "Ben has 3 pens. How many pens?"
LONG = ("Jon has 8 cards. Then gives away 5. Then gets 4 more. Then gives away 2. Then buys 6 more. "
        "Then gives away 1. How many cards does Jon have now?")


def length_router():
    """prompt_length fitted so short questions stay with the SLM and long ones escalate (threshold 0.5)."""
    texts = [SHORT, "Eva has 7 cups. How many cups?", LONG, LONG + " Think."]
    questions = pd.DataFrame({"id": list("abcd"), "question": texts, "choices": None})
    samples = pd.DataFrame({"id": list("abcd"), "sample_idx": 0, "correct": [True, True, False, False],
                            "parsed_answer": "1"})
    return make_router("prompt_length").fit(RouterInputs(questions, samples))


def register(uri: str, experiment: str, smoke: Path, passed: bool) -> str:
    run = MlflowClient(tracking_uri=uri).create_run(experiment).info.run_id
    cost = TokenPriceCost({r: tuple(p) for r, p in PROFILE.cost.prices.items()})
    spec = CascadeSpec("prompt_length", 0.5, PROFILE.models["slm"], PROFILE.models["llm"], cost,
                       replace(PROFILE.sampling, max_new_tokens=6), PROFILE.seed, "smoke")
    checkpoints = {role: local_checkpoint(PROFILE.models[role], role, smoke / "zoo") for role in ROLES}
    info = log_bundle(spec, tracking_uri=uri, run_id=run, checkpoints=checkpoints, router=length_router())
    accuracy = gates.accuracy_gate(0.9 if passed else 0.1, 0.9, 0.02)
    return Registry(uri).register(info.model_uri, [accuracy], run_id=run, model_id=info.model_id,
                                  tags=info.tags()).version


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, smoke: Path):
    if not Path(os.environ.get("ESCALATE_SERVE_PYTHON", ROOT / ".venv-serve/bin/python")).is_file():
        pytest.fail("no serving environment: run `make setup-serve`")
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root}/mlflow.db"
    experiment = MlflowClient(tracking_uri=uri).create_experiment("serving", artifact_location=(root / "art").as_uri())
    register(uri, experiment, smoke, passed=True)
    registry = Registry(uri)
    try:
        promotion = promote_alias(registry, root, "champion", timeout_s=400)
        yield {"root": root, "uri": uri, "experiment": experiment, "registry": registry, "promotion": promotion,
               "key": gateway_process.api_key(root)}
    finally:
        gateway = gateway_process.running(root)
        if gateway is not None:
            gateway.stop()
        for path in (root / "serving").glob("*/deployment.json"):
            retire(Deployment.load(path))


def client(served: dict, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served['promotion'].gateway}/v1", api_key=key or served["key"], max_retries=0)


def ask(c: openai.OpenAI, question: str):
    return c.chat.completions.create(model="escalate-cascade", messages=[{"role": "user", "content": question}])


def test_promoted_champion_answers_through_the_openai_client(served: dict) -> None:
    c = client(served)
    assert [m.id for m in c.models.list().data] == ["escalate-cascade"]
    short, long = ask(c, SHORT), ask(c, LONG)
    assert short.model_extra["escalate"]["model"] == "slm" and long.model_extra["escalate"]["model"] == "llm"
    assert short.model_extra["escalate"]["served_by"] == "escalate-cascade-v1-slm"
    assert long.model_extra["escalate"]["cost"]["llm"] > 0 and long.usage.completion_tokens >= 1
    text = c.completions.create(model="escalate-cascade", prompt=SHORT)
    assert text.model_extra["escalate"]["model"] == "slm" and isinstance(text.choices[0].text, str)
    chunks = list(c.chat.completions.create(model="escalate-cascade", stream=True,
                                            messages=[{"role": "user", "content": SHORT}]))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].model_extra["escalate"]["model"] == "slm"

    registry: Registry = served["registry"]
    assert registry.aliases()[SERVING] == "1"
    tags = registry.version(1).tags
    assert tags["escalate.serving.gateway"] == f"{served['promotion'].gateway}/v1"
    assert set(json.loads(tags["escalate.serving.endpoints"])) == {"slm", "llm"}


def test_auth_and_limits_on_the_real_gateway(served: dict) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(served, key="not-the-key").models.list()
    url = f"{served['promotion'].gateway}/v1/chat/completions"
    r = httpx.post(url, json={"model": "escalate-cascade", "messages": [{"role": "user", "content": "x" * 70_000}]},
                   headers={"Authorization": f"Bearer {served['key']}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_broken_bundle_fails_promotion_and_the_previous_keeps_answering(served: dict, smoke: Path) -> None:
    registry: Registry = served["registry"]
    version = register(served["uri"], served["experiment"], smoke, passed=False)  # @challenger only
    mv = registry.version(version)
    stored = Path(MlflowClient(tracking_uri=served["uri"]).get_logged_model(mv.tags["escalate.model_id"]).artifact_location
                  .removeprefix("file://"))
    weights = next(stored.rglob("slm/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated upload
    before = registry.aliases()

    with pytest.raises(PromotionFailed, match="step 'export'.*incomplete.*model.safetensors"):
        promote_alias(registry, served["root"], "challenger", timeout_s=60)
    assert registry.aliases() == before and before[SERVING] == "1"
    assert current(served["root"]).version == "1"
    assert ask(client(served), SHORT).model_extra["escalate"]["deployment"]["version"] == "1"


def test_llm_down_then_slm_down(served: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    c, gateway = client(served), served["promotion"].gateway
    monkeypatch.setenv(VLLM_KEY_ENV, gateway_process.vllm_key(served["root"]))  # the servers answer only their key
    live = current(served["root"])
    bundle = str(Path(live.path).parent / live.bundle_dir)  # the copies below live elsewhere
    # The same bundle with its LLM unreachable: the SLM's questions are answered, the others cannot be.
    dead_llm = replace(live, bundle_dir=bundle, endpoints={**live.endpoints, "llm": "http://127.0.0.1:9"}).save_to(
        served["root"] / "serving" / "dead-llm")  # the gateway deploys only from its serving directory
    engine = Engine(dead_llm)
    try:
        assert engine.answer(SHORT).result["model"] == "slm"
        with pytest.raises(ModelDown, match="LLM"):
            engine.answer(LONG)
    finally:
        engine.close()
    # The gateway refuses a deployment with a model down, and keeps the one it has.
    r = httpx.post(f"{gateway}/admin/deploy", json={"deployment": dead_llm.path, "probe": SHORT},
                   headers={"Authorization": f"Bearer {gateway_process.admin_key(served['root'])}"}, timeout=120)
    assert r.status_code == 409 and "LLM is unavailable" in r.json()["error"]["message"]
    assert ask(c, LONG).model_extra["escalate"]["model"] == "llm"

    # The live SLM server dies: its questions escalate to the LLM, and the metrics say so.
    stop_group(live.pids["slm"])
    answer = ask(c, SHORT).model_extra["escalate"]
    assert (answer["model"], answer["fallback"]) == ("llm", "slm_down")
    assert 'escalate_escalations_total{reason="slm_down"}' in httpx.get(f"{gateway}/metrics").text
