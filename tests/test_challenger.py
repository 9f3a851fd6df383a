"""A challenger in shadow: real engines behind the real app, their models on fake OpenAI servers. The
response is always the champion's; the comparison counts routes, escalation rates and accept-accuracy on
the same requests; a challenger on the champion's SLM server reuses its generation instead of asking
again; one on another server spends a per-minute budget; a failing one is counted, never seen; the
report lands on the challenger's version in MLflow."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from escalate.cascade import Cascade
from escalate.cli import main
from escalate.config import SamplingConfig
from escalate.models.backends.openai_http import OpenAIBackend
from escalate.registry import aliases
from escalate.registry.aliases import REGISTRATION_DIR, Registry, RegistryError
from escalate.registry.bundle import BundleError
from escalate.routers.registry import make_router
from escalate.serving import gateway as gateway_module
from escalate.serving import promote
from escalate.serving.challenger import Challenger, Counts
from escalate.serving.deployment import GATEWAY_FILE, SERVING_DIR, Deployment, mark_current
from escalate.serving.engine import Engine, EngineHolder
from escalate.serving.gateway import GatewaySettings, create_app
from escalate.serving.promote import SHADOW_FILE, shadow_report
from tests.test_aliases import PASS, add
from tests.test_drift_watch import gateway_on_loopback
from tests.test_gateway import AUTH, KEY, StandInEngine, result, served
from tests.test_gateway_engine import COST, SHORT
from tests.test_openai_http import FakeServer, free_port, ok, serve
from tests.test_promote import alive, deployment_in

ADMIN = "admin-key"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
KEEPS, ESCALATES = 0.1, math.inf  # mean_logprob on the fake servers' answers (mean P(T) 0.28): kept below 0.28


def engine(slm: str, llm: str, threshold: float, version: str = "1", k: int = 1) -> Engine:
    backends = [OpenAIBackend(url, role, timeout_s=5, top_logprobs=2) for url, role in ((slm, "slm"), (llm, "llm"))]
    cascade = Cascade(*backends, make_router("mean_logprob"), threshold, COST, SamplingConfig(k=k, max_new_tokens=4))
    deployment = Deployment("escalate-cascade", version, "champion", f"/nowhere/v{version}",
                            endpoints={"slm": slm, "llm": llm}, served_names={"slm": "slm", "llm": "llm"})
    return Engine(deployment, cascade=cascade)


def app(champion: Any, challenger: Engine | None = None, **settings: Any) -> TestClient:
    holder = EngineHolder()
    holder.swap(champion)
    client = TestClient(create_app(GatewaySettings(api_keys=(KEY,), admin_keys=(ADMIN,), **settings), holder),
                        client=("127.0.0.1", 50000))
    if challenger is not None:
        client.app.state.gateway.set_challenger(Challenger(challenger, max_per_minute=1000))
    return client


def ask(c: TestClient, question: str = SHORT) -> dict[str, Any]:
    r = c.post("/v1/chat/completions", headers=AUTH,
               json={"model": "escalate-cascade", "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    return r.json()


def settled(c: TestClient, done: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    """/admin/status's comparison once `done(comparison)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        comparison = c.get("/admin/status", headers=ADMIN_AUTH).json()["challenger"]["comparison"]
        if done(comparison) or time.monotonic() > deadline:
            return comparison
        time.sleep(0.02)


def gauges(c: TestClient) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(c.get("/metrics").text) for s in family.samples
            if s.name.startswith("escalate_challenger")}


def test_an_always_escalating_challenger_on_the_champions_servers_reuses_its_slm_and_never_answers() -> None:
    slm_server, llm_server = FakeServer(ok), FakeServer(ok)
    with serve(slm_server) as slm_url, serve(llm_server) as llm_url:
        champion, challenger = engine(slm_url, llm_url, KEEPS), engine(slm_url, llm_url, ESCALATES, version="2")
        c = app(champion)
        alone = [ask(c, f"{SHORT} ({i})") for i in range(5)]
        c = app(champion, challenger)
        before = len(slm_server.requests)
        answered = [ask(c, f"{SHORT} ({i})") for i in range(5)]
        comparison = settled(c, lambda x: x["seen"] == 5)
        for mine, theirs in zip(answered, alone):  # the champion's answer, route and score, as without a challenger
            assert mine["choices"] == theirs["choices"] and mine["escalate"]["model"] == "slm"
            assert (mine["escalate"]["score"], mine["escalate"]["escalated"]) == (theirs["escalate"]["score"], False)
        assert comparison["seen"] == 5 and comparison["route_agreement"] == 0.0
        assert (comparison["champion_escalation_rate"], comparison["challenger_escalation_rate"]) == (0.0, 1.0)
        assert (comparison["slm_reused"], comparison["slm_generated"], comparison["failed"]) == (5, 0, 0)
        assert len(slm_server.requests) - before == 5  # one SLM call per request: the challenger asked none
        assert not llm_server.requests  # nor the LLM, though it would escalate
        metrics = gauges(c)
        assert metrics[("escalate_challenger_route_agreement", ())] == 0.0
        assert metrics[("escalate_challenger_challenger_escalation_rate", ())] == 1.0
        assert metrics[("escalate_challenger_champion_escalation_rate", ())] == 0.0
        assert metrics[("escalate_challenger_requests", (("outcome", "seen"),))] == 5
        final = c.delete("/admin/challenger", headers=ADMIN_AUTH).json()["stopped"]
        assert final["version"] == "2" and final["comparison"]["seen"] == 5
        assert c.get("/admin/status", headers=ADMIN_AUTH).json()["challenger"] is None
        assert math.isnan(gauges(c)[("escalate_challenger_route_agreement", ())])
        ask(c)  # served as before, nothing compared
        champion.close()


def test_with_shadow_labels_each_sides_accept_accuracy_is_counted() -> None:
    with serve(FakeServer(ok)) as slm_url, serve(FakeServer(ok)) as llm_url:
        champion, twin = engine(slm_url, llm_url, KEEPS), engine(slm_url, llm_url, KEEPS, version="2")
        c = app(champion, twin, shadow_fraction=1.0, shadow_max_per_minute=1000)
        for i in range(4):
            ask(c, f"{SHORT} ({i})")
        comparison = settled(c, lambda x: x["seen"] == 4 and x["challenger_labelled"] == 4)
        assert comparison["route_agreement"] == 1.0 and comparison["answer_agreement"] == 1.0
        assert (comparison["champion_labelled"], comparison["challenger_labelled"]) == (4, 4)
        # The fake LLM echoes the prompt as the SLM does: both kept answers agree with it.
        assert comparison["champion_accept_accuracy"] == comparison["challenger_accept_accuracy"] == 1.0
        c.app.state.gateway.close()


def test_a_challenger_kept_answer_is_graded_by_the_llm_answer_the_champion_escalated_to() -> None:
    with serve(FakeServer(ok)) as slm_url, serve(FakeServer(ok)) as llm_url:
        champion, keeper = engine(slm_url, llm_url, ESCALATES), engine(slm_url, llm_url, KEEPS, version="2")
        c = app(champion, keeper)
        assert ask(c)["escalate"]["model"] == "llm"
        comparison = settled(c, lambda x: x["challenger_labelled"] == 1)
        assert (comparison["champion_escalation_rate"], comparison["challenger_escalation_rate"]) == (1.0, 0.0)
        assert comparison["challenger_accept_accuracy"] == 1.0 and comparison["champion_labelled"] == 0
        assert comparison["champion_accept_accuracy"] is None  # nothing it kept was labelled
        c.app.state.gateway.close()


def test_a_challenger_on_its_own_slm_server_spends_its_per_minute_budget() -> None:
    own = FakeServer(ok)
    with serve(FakeServer(ok)) as slm_url, serve(own) as own_url, serve(FakeServer(ok)) as llm_url:
        champion, challenger = engine(slm_url, llm_url, KEEPS), engine(own_url, llm_url, ESCALATES, version="2")
        c = app(champion)
        c.app.state.gateway.set_challenger(Challenger(challenger, max_per_minute=2))
        for i in range(4):
            ask(c, f"{SHORT} ({i})")
        comparison = settled(c, lambda x: x["seen"] + x["skipped"] == 4)
        assert (comparison["seen"], comparison["skipped"], comparison["slm_generated"]) == (2, 2, 2)
        assert len(own.requests) == 2 and comparison["slm_reused"] == 0
        c.app.state.gateway.close()


def test_a_failing_challenger_never_changes_a_response() -> None:
    with serve(FakeServer(ok)) as slm_url, serve(FakeServer(ok)) as llm_url:
        champion = engine(slm_url, llm_url, KEEPS)
        alone = ask(app(champion))
        dead = engine(f"http://127.0.0.1:{free_port()}", llm_url, ESCALATES, version="2")
        c = app(champion, dead)
        replies = [ask(c) for _ in range(3)]
        assert all(r["choices"] == alone["choices"] and r["escalate"]["model"] == "slm" for r in replies)
        comparison = settled(c, lambda x: x["failed"] == 3)
        assert (comparison["failed"], comparison["seen"]) == (3, 0)
        assert gauges(c)[("escalate_challenger_requests", (("outcome", "failed"),))] == 3

        def broken(inputs: Any) -> Any:
            raise RuntimeError("a router's bug")

        buggy = engine(slm_url, llm_url, ESCALATES, version="3")
        buggy.cascade.router.score = broken
        c.app.state.gateway.set_challenger(Challenger(buggy))
        assert ask(c)["choices"] == alone["choices"]
        assert settled(c, lambda x: x["failed"] == 1)["failed"] == 1
        c.app.state.gateway.close()


def test_fallback_answers_are_not_compared_and_a_token_level_challenger_is_refused() -> None:
    slm_down = StandInEngine(lambda q: served(result("llm"), "slm_down"))
    with serve(FakeServer(ok)) as slm_url, serve(FakeServer(ok)) as llm_url:
        c = app(slm_down, engine(slm_url, llm_url, KEEPS, version="2"))
        ask(c)
        assert settled(c, lambda x: x["skipped"] == 1)["skipped"] == 1
        c.app.state.gateway.close()
    with pytest.raises(BundleError, match="query-level"):
        Challenger(StandInEngine())  # duck-types an engine, but has no servers to score on


def test_the_admin_route_needs_the_admin_key_and_a_deployment_in_the_serving_dir(tmp_path: Path) -> None:
    c = app(StandInEngine(), serving_dir=str(tmp_path))
    body = {"deployment": "/etc/passwd"}
    assert c.post("/admin/challenger", json=body, headers=AUTH).status_code == 401
    r = c.post("/admin/challenger", json=body, headers=ADMIN_AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "challenger_refused"
    assert c.post("/admin/challenger", json={**body, "max_per_minute": 0}, headers=ADMIN_AUTH).status_code == 422
    assert c.delete("/admin/challenger", headers=ADMIN_AUTH).json() == {"stopped": None}


def test_counts_figures_are_nan_until_there_is_something_to_divide() -> None:
    figures = Counts().figures()
    assert all(math.isnan(v) for v in figures.values())
    assert Counts(seen=4, routes_agree=3, challenger_escalated=1).figures()["route_agreement"] == 0.75


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{path}/mlflow.db"
    MlflowClient(tracking_uri=uri).create_experiment("registry", artifact_location=(path / "artifacts").as_uri())
    return uri, path


def test_the_report_lands_on_the_challengers_version(store: tuple[str, Path]) -> None:
    registry = Registry(store[0], "shadowed")
    add(registry, store, "champion", 0.85, PASS)
    version = add(registry, store, "challenger", 0.86, PASS).version
    counts = Counts(seen=40, routes_agree=30, champion_escalated=4, challenger_escalated=14, champion_labelled=10,
                    champion_accepted_right=9)
    status = {"deployment": "/nowhere", "label": "x", "model": "shadowed", "version": str(version),
              "strategy": "entropy", "comparison": counts.to_dict()}
    assert shadow_report(registry, status) == str(version)
    client = MlflowClient(tracking_uri=store[0])
    mv = client.get_model_version("shadowed", str(version))
    metrics = client.get_run(mv.run_id).data.metrics
    assert metrics["shadow.route_agreement"] == 0.75 and metrics["shadow.challenger_escalation_rate"] == 0.35
    assert metrics["shadow.champion_accept_accuracy"] == 0.9 and "shadow.challenger_accept_accuracy" not in metrics
    history = client.get_metric_history(mv.run_id, "shadow.route_agreement")
    assert [m.step for m in history] == [40]
    local = client.download_artifacts(mv.run_id, f"{REGISTRATION_DIR}/{SHADOW_FILE}", str(store[1] / "dl"))
    assert json.loads(Path(local).read_text()) == json.loads(json.dumps(status))
    with pytest.raises(RegistryError, match="v99 does not exist"):
        shadow_report(registry, {**status, "version": "99"})
    with pytest.raises(RegistryError, match="not 'shadowed'"):
        shadow_report(registry, {**status, "model": "other"})


def bundled(root: Path, name: str, version: str, slm_digest: str, **fields: Any) -> Deployment:
    """A deployment directory whose bundle is only what shadow_start reads: MLmodel and cascade.json."""
    directory = root / SERVING_DIR / name
    (directory / "bundle").mkdir(parents=True)
    (directory / "bundle" / "MLmodel").write_text(yaml.safe_dump(
        {"flavors": {"python_function": {"artifacts": {"cascade": {"path": "cascade.json"}}}}}))
    (directory / "bundle" / "cascade.json").write_text(json.dumps(
        {"checkpoint_files": {"slm": {"model.safetensors": {"size": 1, "sha256": slm_digest}}}}))
    return Deployment("shadowed-cli", version, "champion", "bundle", **fields).save_to(directory)


def test_promote_shadow_loads_reports_to_mlflow_and_stops(tmp_path: Path, store: tuple[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(store[0], "shadowed-cli")
    add(registry, store, "champion", 0.85, PASS)
    assert add(registry, store, "challenger", 0.86, PASS).version == "2"  # @challenger moves to it
    before = registry.aliases()
    llm_server = FakeServer(ok)
    with serve(FakeServer(ok)) as slm_url, serve(llm_server) as llm_url:
        endpoints = {"endpoints": {"slm": slm_url, "llm": llm_url}, "served_names": {"slm": "slm", "llm": "llm"}}
        live = bundled(tmp_path, "champ", "1", "same", **endpoints)
        mark_current(tmp_path, Path(live.path).parent)
        champion = engine(slm_url, llm_url, KEEPS)
        holder = EngineHolder()
        holder.swap(champion)
        gateway_app = create_app(GatewaySettings(api_keys=(KEY,), admin_keys=(ADMIN,), serving_dir=str(tmp_path / SERVING_DIR)),
                                 holder)

        def exported(registry: Any, ref: str, root: Path) -> Deployment:
            assert str(promote.resolve(registry, ref).version) == "2"
            return bundled(root, "chall", "2", "same")

        def opened(deployment: Deployment) -> Engine:  # the real engine over the deployment's (shared) servers
            assert deployment.endpoints == endpoints["endpoints"]
            mine = engine(deployment.endpoints["slm"], deployment.endpoints["llm"], ESCALATES, version="2")
            mine.deployment = deployment
            return mine

        monkeypatch.setattr(promote, "export", exported)
        monkeypatch.setattr(promote, "launch", lambda *a: pytest.fail("the champion's servers serve the same SLM"))
        monkeypatch.setattr(gateway_module, "open_engine", opened)
        monkeypatch.setattr(aliases, "profile_registry", lambda profile, root: registry)
        monkeypatch.setenv("ESCALATE_ADMIN_KEY", ADMIN)
        with gateway_on_loopback(gateway_app) as metrics_url:
            url = metrics_url.removesuffix("/metrics")
            (tmp_path / SERVING_DIR / GATEWAY_FILE).write_text(json.dumps({"url": url, "pid": 0, "log": "-"}))
            args = ["promote", "--root", str(tmp_path)]
            assert main([*args, "--shadow", "challenger"]) == 0
            assert json.loads((tmp_path / SERVING_DIR / promote.CHALLENGER_FILE).read_text())["deployment"].endswith(
                "chall/deployment.json")
            assert "challenger shadowed-cli v2 scores live traffic" in capsys.readouterr().out
            for i in range(3):
                r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=30, json={
                    "model": "escalate", "messages": [{"role": "user", "content": f"{SHORT} ({i})"}]})
                assert r.status_code == 200 and r.json()["escalate"]["model"] == "slm"
            deadline = time.monotonic() + 10
            while promote.shadow_status(tmp_path)["comparison"]["seen"] < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert main([*args, "--shadow-report", "--shadow-stop"]) == 0
            out = capsys.readouterr().out
            assert "wrote the comparison to shadowed-cli v2" in out and "unloaded the challenger" in out
            assert httpx.get(f"{url}/admin/status", headers=ADMIN_AUTH).json()["challenger"] is None
            assert not (tmp_path / SERVING_DIR / promote.CHALLENGER_FILE).exists()
            assert main([*args, "--shadow-report"]) == 1
            assert "no challenger is loaded" in capsys.readouterr().err
        champion.close()
    assert not llm_server.requests[1:]  # the challenger's load check asked one token; scoring asked none
    client = MlflowClient(tracking_uri=store[0])
    metrics = client.get_run(client.get_model_version("shadowed-cli", "2").run_id).data.metrics
    assert metrics["shadow.seen"] == 3 and metrics["shadow.route_agreement"] == 0.0
    assert metrics["shadow.challenger_escalation_rate"] == 1.0 and metrics["shadow.slm_reused"] == 3
    assert registry.aliases() == before  # nothing moved an alias
    assert main(["promote", "--root", str(tmp_path), "--shadow", "x", "--shadow-stop"]) == 2


def test_a_challengers_own_servers_are_no_orphans_until_shadow_stop_even_without_a_gateway(tmp_path: Path) -> None:
    served_now = deployment_in(tmp_path, "live")
    mark_current(tmp_path, Path(served_now.path).parent)
    shadowing = deployment_in(tmp_path, "shadowing")
    left = deployment_in(tmp_path, "left")  # a killed promotion's
    (tmp_path / SERVING_DIR / promote.CHALLENGER_FILE).write_text(json.dumps({"deployment": shadowing.path}))
    assert promote.retire_orphans(tmp_path) == [left.label]
    assert alive(served_now.pids["slm"]) and alive(shadowing.pids["slm"]) and not alive(left.pids["slm"])
    assert promote.shadow_stop(tmp_path) is None  # no gateway runs: nothing to unload, its servers still stop
    assert not alive(shadowing.pids["slm"]) and not (tmp_path / SERVING_DIR / promote.CHALLENGER_FILE).exists()
    promote.retire(served_now)


def test_a_full_queue_drops_the_request_and_counts_it() -> None:
    with serve(FakeServer(ok)) as slm_url, serve(FakeServer(ok)) as llm_url:
        challenger = Challenger(engine(slm_url, llm_url, ESCALATES), max_queued=1, workers=0)  # nobody takes any
        kept = served(result("slm"))
        assert challenger.offer(SHORT, kept, None) is not None  # queued: the hook a shadow label calls
        assert challenger.offer(SHORT, kept, None) is None
        assert (challenger.snapshot().dropped, challenger.snapshot().seen) == (1, 0)
        challenger.close()
