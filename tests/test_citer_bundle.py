"""A token-level (CITER) bundle from tiny random checkpoints: it answers in a fresh process as plain greedy
decoding at the τ edges, names a missing or truncated router file, the gateway serves it in process, and
`promote` puts it behind a gateway process without starting any vLLM server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from escalate.cascade import RESULT_FIELDS
from escalate.citer import STRATEGY
from escalate.citer.router import TokenRouter
from escalate.config import ModelConfig, SamplingConfig
from escalate.evaluation.cost import TokenPriceCost
from escalate.kinds import TOKEN_LEVEL
from escalate.models.backends.base import SamplingParams
from escalate.models.backends.hf import HFBackend
from escalate.prompts import format_prompt
from escalate.registry import gates
from escalate.registry.aliases import Registry
from escalate.registry.bundle import BundleError, CascadeSpec, log_bundle, read_bundle
from escalate.serving import gateway_process
from escalate.serving.deployment import Deployment, bundle_artifacts
from escalate.serving.engine import IN_PROCESS
from escalate.serving.gateway import GatewaySettings, create_app
from escalate.serving.promote import export, launch, promote_alias

pytestmark = pytest.mark.slow

PRICES = TokenPriceCost({"slm": (0.05, 0.05), "llm": (1.0, 1.0)})
SAMPLING = SamplingConfig(k=1, max_new_tokens=6, batch_size=4)
QUESTIONS = ["Eva has 7 cups. Then gives away 1. How many cups does Eva have now?",
             "Ben has 3 pens. Then gets 4 more. How many pens does Ben have now?"]
PREDICT = """
import json, sys
import mlflow, pandas as pd
questions = json.loads(sys.argv[1])
print("ANSWERS " + json.dumps({uri: mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"question": questions}))
                               .to_dict(orient="records") for uri in sys.argv[2:]}))
"""
KEY = "test-key"


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, model_pair: tuple[Path, Path]) -> dict:
    """Bundles at τ = 0, 0.5 and 1 in one store, their router beside them."""
    path = tmp_path_factory.mktemp("citer-bundles")
    uri = f"sqlite:///{path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("citer", artifact_location=(path / "artifacts").as_uri())
    torch.manual_seed(0)
    router = TokenRouter(32, [8]).save(path / "router_r1")
    slm, llm = model_pair
    infos = {}
    for tau in (0.0, 0.5, 1.0):
        spec = CascadeSpec(STRATEGY, tau, ModelConfig(name="tiny-slm"), ModelConfig(name="tiny-llm"), PRICES, SAMPLING,
                           0, "test", kind=TOKEN_LEVEL)
        run = client.create_run(experiment, run_name=f"citer-{tau}").info.run_id
        infos[tau] = log_bundle(spec, tracking_uri=uri, run_id=run, checkpoints={"slm": slm, "llm": llm}, router=router,
                                example_questions=QUESTIONS[:1])
    return {"uri": uri, "path": path, "infos": infos, "router": router}


def greedy(checkpoint: Path) -> list[str]:
    gens = HFBackend(str(checkpoint)).generate([format_prompt(q) for q in QUESTIONS],
                                               SamplingParams(max_new_tokens=SAMPLING.max_new_tokens))
    return [g[0].text.strip() for g in gens]


def test_the_bundle_answers_in_a_fresh_process_as_llm_only_at_tau_0_and_slm_only_at_tau_1(
        logged: dict, model_pair: tuple[Path, Path], tmp_path: Path) -> None:
    uris = [logged["infos"][tau].model_uri for tau in (0.0, 1.0)]
    proc = subprocess.run([sys.executable, "-c", PREDICT, json.dumps(QUESTIONS), *uris], check=False, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": logged["uri"]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("ANSWERS ")).removeprefix("ANSWERS "))
    llm_only, slm_only = (pd.DataFrame(answers[u]) for u in uris)
    assert list(llm_only.columns) == list(RESULT_FIELDS)
    assert list(llm_only["answer"]) == greedy(model_pair[1]) != greedy(model_pair[0]) == list(slm_only["answer"])
    assert set(llm_only["model"]) == {"llm"} and llm_only["escalated"].all() and (llm_only["strategy"] == STRATEGY).all()
    assert set(slm_only["model"]) == {"slm"} and not slm_only["escalated"].any() and (slm_only["cost_llm"] == 0).all()
    # LLM-only's price: prompt and output at the LLM's price, plus the SLM that stepped along.
    n = llm_only["slm_prompt_tokens"] + llm_only["slm_output_tokens"]
    assert list(llm_only["cost"]) == pytest.approx(list(n * 1.0 + n * 0.05))


def test_a_missing_or_truncated_router_file_fails_the_load_naming_it(logged: dict, tmp_path: Path) -> None:
    info = logged["infos"][0.5]
    location = MlflowClient(tracking_uri=logged["uri"]).get_logged_model(info.model_id).artifact_location
    bundle = shutil.copytree(Path(location.removeprefix("file://")), tmp_path / "bundle")
    spec, router, checkpoints = read_bundle(bundle_artifacts(bundle))
    assert (spec.kind, spec.threshold, set(checkpoints)) == (TOKEN_LEVEL, 0.5, {"slm", "llm"})
    assert isinstance(router, TokenRouter)
    weights = bundle / "artifacts" / "router" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"bundled router checkpoint .* wrong size model\.safetensors \(100 of"):
        read_bundle(bundle_artifacts(bundle))
    weights.unlink()
    with pytest.raises(BundleError, match=r"bundled router checkpoint .* missing model\.safetensors"):
        read_bundle(bundle_artifacts(bundle))
    shutil.rmtree(weights.parent)
    with pytest.raises(BundleError, match="bundle artifact router is missing"):
        read_bundle(bundle_artifacts(bundle))
    with pytest.raises(BundleError, match="token router's saved directory"):
        log_bundle(spec, tracking_uri=logged["uri"], run_id="unused", checkpoints=checkpoints, router=None)


def test_the_gateway_serves_a_citer_deployment_in_process(logged: dict, tmp_path: Path) -> None:
    registry = Registry(logged["uri"], name="citer-serving")
    info = logged["infos"][0.5]
    registry.register(info.model_uri, [gates.accuracy_gate(0.9, 0.9, 0.02)], run_id=info.run_id, model_id=info.model_id,
                      tags=info.tags())
    with pytest.raises(BundleError, match="takes no endpoints"):  # `escalate export --endpoint` on a CITER bundle
        export(registry, "champion", tmp_path, tmp_path / "refused", {"slm": "http://127.0.0.1:1"})
    deployment = export(registry, "champion", tmp_path, tmp_path / "deployment", {})  # `escalate export`, no endpoint
    assert launch(deployment, tmp_path).pids == {} and deployment.endpoints == {}  # promote starts no vLLM for it

    settings = GatewaySettings(api_keys=(KEY,), admin_keys=("admin",), serving_dir=str(tmp_path))
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as c:  # loopback: /metrics answers
        auth = {"Authorization": f"Bearer {KEY}"}
        admin = {"Authorization": "Bearer admin"}
        deployed = c.post("/admin/deploy", json={"deployment": deployment.path}, headers=admin)
        assert deployed.status_code == 200, deployed.text
        assert c.get("/ready").json()["strategy"] == STRATEGY
        body = {"model": "citer-serving", "messages": [{"role": "user", "content": QUESTIONS[0]}]}
        r = c.post("/v1/chat/completions", json=body, headers=auth).json()
        e = r["escalate"]
        assert (e["served_by"], e["strategy"], e["threshold"], e["fallback"]) == (IN_PROCESS, STRATEGY, 0.5, None)
        assert e["model"] in ("slm", "llm", "slm+llm") and e["escalated"] == (e["tokens"]["llm"]["output"] > 0)
        assert e["cost"]["total"] == pytest.approx(e["cost"]["slm"] + e["cost"]["llm"]) and e["cost"]["slm"] > 0
        assert e["latency_s"]["slm"] > 0 and e["deployment"]["version"] == deployment.version
        assert r["usage"]["completion_tokens"] == e["tokens"]["slm"]["output"] > 0
        expected = r["choices"][0]["message"]["content"]

        stream = c.post("/v1/completions", json={"model": "escalate", "prompt": QUESTIONS[0], "stream": True},
                        headers=auth)
        chunks = [json.loads(x.removeprefix("data: ")) for x in stream.text.splitlines()
                  if x.startswith("data: ") and x != "data: [DONE]"]
        assert "".join(ch["choices"][0]["text"] for ch in chunks) == expected  # greedy: the same answer again
        assert chunks[-1]["escalate"]["served_by"] == IN_PROCESS
        metrics = c.get("/metrics").text
        assert f'escalate_answers_total{{model="{e["model"]}",strategy="citer"}} 2.0' in metrics

        old = c.app.state.gateway.holder.engine
        again = c.post("/admin/deploy", json={"deployment": deployment.path}, headers=admin)
        assert again.status_code == 200 and again.json()["previous"] == deployment.label
        assert old.cascade.decoder.models == {}  # swapped out with no request in flight: closed, memory freed


def test_promote_serves_a_citer_bundle_behind_the_gateway_without_vllm(logged: dict, tmp_path: Path) -> None:
    registry = Registry(logged["uri"], name="citer-promote")
    info = logged["infos"][1.0]
    version = registry.register(info.model_uri, [gates.accuracy_gate(0.9, 0.9, 0.02)], run_id=info.run_id,
                                model_id=info.model_id).version
    try:
        promotion = promote_alias(registry, tmp_path, timeout_s=120)
    finally:
        gateway = gateway_process.running(tmp_path)
        if gateway is not None:
            gateway.stop()
    deployment = Deployment.load(promotion.deployment)
    assert deployment.pids == {} and deployment.endpoints == {}  # no server started
    assert [a["escalate"]["served_by"] for a in promotion.answers] == [IN_PROCESS] * 2
    assert {a["escalate"]["model"] for a in promotion.answers} == {"slm"}  # τ = 1: the SLM alone
    assert registry.aliases()["serving"] == version
