"""Shadow labels: the sampler's fraction and per-minute budget, the Wilson interval, agreement by the
project's grader, drops and failures counted, calib's prediction read from the bundle, harvest's labels,
and the real engine behind the real app with a slow LLM: the user does not wait, the row is labelled,
the gauges move."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from escalate.cascade import Cascade
from escalate.config import SamplingConfig
from escalate.evaluation.run import accept_accuracy
from escalate.harvest import build_questions
from escalate.models.backends.openai_http import OpenAIBackend
from escalate.routers.registry import make_router
from escalate.serving import gateway as gateway_module
from escalate.serving.deployment import Deployment
from escalate.serving.engine import Engine, EngineHolder
from escalate.serving.gateway import GatewaySettings, create_app
from escalate.serving.shadow import (
    BUDGET_WINDOW_S,
    Job,
    LiveAcceptance,
    Sampler,
    Shadow,
    agrees,
    calib_figures,
    shadowable,
    wilson,
)
from escalate.serving.traffic import part_files, read_parts
from tests.test_gateway import AUTH, KEY, StandInEngine, chat, result
from tests.test_gateway_engine import COST
from tests.test_harvest import CFG, record
from tests.test_openai_http import FakeServer, Reply, completion, serve
from tests.test_traffic import exchange, wait_for_rows


def test_the_sampler_draws_its_fraction_on_a_seeded_rng() -> None:
    for fraction in (0.05, 0.3, 0.8):
        sampler = Sampler(fraction, 10**9, rng=random.Random(7))
        share = sum(sampler.draw() for _ in range(20_000)) / 20_000
        assert share == pytest.approx(fraction, abs=0.015)  # 20k draws: se <= 0.0036, so ±4 se
    assert not any(Sampler(0.0, 10, rng=random.Random(0)).draw() for _ in range(1000))
    assert all(Sampler(1.0, 10, rng=random.Random(0)).draw() for _ in range(1000))
    with pytest.raises(ValueError, match="--shadow-fraction"):
        Sampler(1.5, 10)
    with pytest.raises(ValueError, match="--shadow-max-per-minute"):
        GatewaySettings(api_keys=(KEY,), shadow_fraction=0.5, shadow_max_per_minute=0)


def test_the_budget_caps_calls_in_any_minute_on_an_injected_clock() -> None:
    now = [1000.0]
    sampler = Sampler(1.0, 5, clock=lambda: now[0])
    assert [sampler.spend() for _ in range(7)] == [True] * 5 + [False] * 2
    now[0] += 30
    assert not sampler.spend()  # the same minute
    now[0] += BUDGET_WINDOW_S - 30  # the first five are a minute old: they leave the window
    assert [sampler.spend() for _ in range(6)] == [True] * 5 + [False]
    spent, t = 0, 0.0
    steady = Sampler(1.0, 60, clock=lambda: t)
    for second in range(600):  # 10 minutes at 3 offers a second: 60 a minute get through, no more
        t = float(second)
        spent += sum(steady.spend() for _ in range(3))
    assert spent == 600


def test_wilson_interval() -> None:
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook value
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # not zero-width at 0 successes
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    low, high = wilson(900, 1000)
    assert low < 0.9 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.09 / 1000), rel=0.02)
    assert all(math.isnan(x) for x in wilson(0, 0))
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_coverage_of_the_wilson_interval_is_near_95_percent() -> None:
    rng = random.Random(3)
    hits = 0
    for _ in range(2000):
        k = sum(rng.random() < 0.85 for _ in range(60))
        low, high = wilson(k, 60)
        hits += low <= 0.85 <= high
    assert 0.92 <= hits / 2000 <= 0.98


@pytest.mark.parametrize(("llm", "slm", "agreed"), [
    ("The answer is 7.", "7", True), ("So she has #### 1,234 left", "1234", True), ("It is 7.0", "7", True),
    ("The answer is 8.", "7", False), ("I cannot tell.", "7", False), ("The answer is 7.", None, False),
])
def test_agreement_is_the_same_extracted_final_answer(llm: str, slm: str | None, agreed: bool) -> None:
    assert agrees(llm, slm) is agreed


def test_only_router_kept_served_slm_answers_are_shadowed() -> None:
    kept = result("slm")
    assert shadowable(kept, None, "v1-slm")
    assert not shadowable(result("llm"), None, "v1-llm")
    assert not shadowable(kept, "slm_unscored", "v1-slm") and not shadowable(kept, None, "in-process")


def job(question: str = "q", answer: str = "6") -> Job:
    e = exchange(question)
    return Job(question, {**e["result"], "parsed_answer": answer}, e["meta"], None, time.time())


class Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.counts: dict[str, int] = {}

    def log(self, question: str, result: dict, meta: dict, headers: Any = None, at: float | None = None) -> None:
        self.rows.append((question, meta.get("shadow"), at))

    def wait_for(self, n: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.rows) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


def test_a_full_queue_or_a_spent_budget_drops_and_counts_and_a_failed_call_still_logs_the_row() -> None:
    release = threading.Event()

    def ask(question: str) -> str:
        release.wait(5)
        if question == "down":
            raise ConnectionError("llm down")
        return "The answer is 6."

    rec, acceptance = Recorder(), LiveAcceptance()
    shadow = Shadow(Sampler(1.0, 3), ask, rec.log, rec.count, acceptance, max_queued=1, workers=1)
    assert not shadow.offer(job(), kept=False)  # the LLM answered it: nothing to shadow
    assert shadow.offer(job("a"), kept=True)  # taken by the worker, which waits on `release`
    time.sleep(0.1)
    assert shadow.offer(job("down"), kept=True)  # queued: the one place
    assert not shadow.offer(job("b"), kept=True)  # queue full: dropped
    assert rec.counts == {"sent": 1, "dropped": 1}
    release.set()
    rec.wait_for(2)
    shadow.close()
    assert [(q, s["status"]) for q, s, _ in rec.rows] == [("a", "agreed"), ("down", "failed")]
    assert rec.counts == {"sent": 2, "dropped": 1, "failed": 1} and acceptance.counts() == (1, 1)
    assert rec.rows[0][2] is not None and rec.rows[0][2] < time.time()  # the row keeps the request's time

    rec = Recorder()
    shadow = Shadow(Sampler(1.0, 2), lambda q: "8", rec.log, rec.count, LiveAcceptance())
    assert [shadow.offer(job(), kept=True) for _ in range(4)] == [True, True, False, False]  # the budget: 2 a minute
    rec.wait_for(2)
    shadow.close()
    assert rec.counts == {"sent": 2, "dropped": 2} and {s["status"] for _, s, _ in rec.rows} == {"disagreed"}


def test_closing_logs_the_queued_rows_unlabelled_and_lets_the_call_in_flight_finish() -> None:
    release = threading.Event()
    rec = Recorder()
    shadow = Shadow(Sampler(1.0, 60), lambda q: release.wait(5) and "The answer is 6.", rec.log, rec.count,
                    LiveAcceptance(), workers=1)
    assert shadow.offer(job("in flight"), kept=True)
    time.sleep(0.1)
    assert shadow.offer(job("queued"), kept=True)
    threading.Timer(0.3, release.set).start()
    start = time.monotonic()
    shadow.close()
    assert time.monotonic() - start < 3
    assert [(q, s and s["status"]) for q, s, _ in rec.rows] == [("queued", None), ("in flight", "agreed")]
    assert rec.counts == {"sent": 1, "dropped": 1}


def test_fraction_zero_starts_no_thread_and_shadows_nothing() -> None:
    before = threading.active_count()
    rec = Recorder()
    shadow = Shadow(Sampler(0.0, 60), lambda q: "6", rec.log, rec.count, LiveAcceptance())
    assert threading.active_count() == before and not shadow.offer(job(), kept=True)
    shadow.close()
    assert rec.rows == [] and rec.counts == {}


def test_live_acceptance_restarts_with_a_new_deployment() -> None:
    live = LiveAcceptance(window=4)
    for agreed in (True, True, False, True, True):
        live.observe(agreed, "v1")
    assert live.counts() == (3, 4) and live.accuracy() == 0.75 and live.low() < 0.75 < live.high()
    live.observe(False, "v2")
    assert live.counts() == (0, 1)


def write_eval(bundle: Path, summary: list[dict[str, Any]]) -> Path:
    """An exported bundle's MLmodel listing an eval directory whose metrics.json holds `summary`."""
    (bundle / "eval").mkdir(parents=True)
    (bundle / "eval" / "metrics.json").write_text(json.dumps({"summary": summary}))
    artifacts = {"eval": {"path": "eval"}, "cascade": {"path": "cascade.json"}}
    (bundle / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {"artifacts": artifacts}}}))
    return bundle / "eval"


def test_calib_figures_come_from_the_bundles_evaluation(tmp_path: Path) -> None:
    eval_dir = write_eval(tmp_path / "bundle", [
        {"strategy": "mean_logprob", "threshold": 0.2, "calib_accept_accuracy": 0.4, "calib_call_rate": 0.9},
        {"strategy": "entropy", "threshold": 0.5, "calib_accept_accuracy": 0.93, "calib_call_rate": 0.31}])
    assert calib_figures(eval_dir, "entropy") == {"accept_accuracy": 0.93, "escalation_rate": 0.31}
    assert calib_figures(eval_dir, "random") == {} and calib_figures(None, "entropy") == {}
    assert calib_figures(tmp_path / "missing", "entropy") == {}


def test_evaluation_records_calib_accept_accuracy_at_the_chosen_threshold() -> None:
    records = pd.DataFrame({"score": [0.9, 0.8, 0.7, 0.6, 0.2, 0.1], "slm_correct": [1, 1, 0, 1, 0, 0],
                            "slm_refused": [False, False, False, True, False, False]})
    assert accept_accuracy(records, 0.5) == pytest.approx(2 / 3)  # kept: 0.9, 0.8, 0.7 (0.6 refused: escalates)
    assert accept_accuracy(records.drop(columns="slm_refused"), 0.65) == pytest.approx(2 / 3)
    assert accept_accuracy(records, -math.inf) == pytest.approx(0.5)  # SLM-only keeps every one, refusals too
    assert math.isnan(accept_accuracy(records, math.inf))  # nothing kept


def gauges(c: TestClient) -> dict[str, float]:
    families = text_string_to_metric_families(c.get("/metrics").text)
    return {s.name + (f"{{{s.labels['outcome']}}}" if "outcome" in s.labels else ""): s.value
            for f in families for s in f.samples}


def test_a_deployment_shows_what_calib_predicted_for_its_threshold(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    serving = tmp_path / "serving"
    write_eval(serving / "d" / "bundle", [{"strategy": "entropy", "calib_accept_accuracy": 0.93,
                                           "calib_call_rate": 0.31}])
    Deployment("escalate-cascade", "2", "champion", "bundle").save_to(serving / "d")

    class Deployable(StandInEngine):
        def __init__(self, deployment: Deployment) -> None:
            super().__init__()
            self.deployment = deployment  # its bundle holds the evaluation

        def check(self) -> None:
            pass

    monkeypatch.setattr(gateway_module, "open_engine", Deployable)
    settings = GatewaySettings(api_keys=(KEY,), admin_keys=("admin-key",), serving_dir=str(serving))
    c = TestClient(create_app(settings), client=("127.0.0.1", 50000))
    assert math.isnan(gauges(c)["escalate_calib_accept_accuracy"])
    r = c.post("/admin/deploy", json={"deployment": str(serving / "d")}, headers={"Authorization": "Bearer admin-key"})
    assert r.status_code == 200, r.text
    assert gauges(c)["escalate_calib_accept_accuracy"] == 0.93 and gauges(c)["escalate_calib_escalation_rate"] == 0.31
    assert c.post("/admin/undeploy", headers={"Authorization": "Bearer admin-key"}).status_code == 200
    assert math.isnan(gauges(c)["escalate_calib_escalation_rate"])


def test_harvest_labels_shadowed_questions_with_the_llms_answer() -> None:
    def shadowed(question: str, status: str | None, parsed: str | None, agreed: bool | None) -> dict[str, Any]:
        return {**record(question, model="slm", parsed="7"), "shadow": status, "shadow_parsed_answer": parsed,
                "shadow_answer": None if parsed is None else f"The answer is {parsed}.", "shadow_agrees": agreed}

    traffic = pd.DataFrame([shadowed("Tom has 3 apples.", "agreed", "7", True),
                            shadowed("Ann has 4 pens.", "disagreed", "9", False),
                            shadowed("Bob has 5 cups.", "failed", None, None),
                            shadowed("Cat has 6 hats.", None, None, None),
                            record("Dan has 2 dogs.", model="llm", parsed="2")])
    out = build_questions(traffic, CFG).set_index("question")
    assert out["answer"].to_dict() == {"Tom has 3 apples.": "7", "Ann has 4 pens.": "9", "Bob has 5 cups.": None,
                                       "Cat has 6 hats.": None, "Dan has 2 dogs.": "2"}
    meta = {q: json.loads(m) for q, m in out["meta"].items()}
    assert meta["Tom has 3 apples."]["shadow_agrees"] is True and meta["Ann has 4 pens."]["shadow_agrees"] is False
    assert "shadow_agrees" not in meta["Bob has 5 cups."] and "shadow_agrees" not in meta["Dan has 2 dogs."]


SLM_SAYS, LLM_DELAY_S = "The answer is 7.", 3.0


def replying(text: Any) -> Any:
    """A fake server's reply: OpenAI's completion shape with the text `text(prompt)`."""
    def reply(body: dict[str, Any]) -> Reply:
        out = completion(body)
        for choice in out["choices"]:
            choice["text"] = text(body["prompt"])
        return 200, json.dumps(out).encode()
    return reply


def test_the_real_gateway_labels_kept_answers_off_the_users_path(tmp_path: Path) -> None:
    """The LLM answers shadow calls only after LLM_DELAY_S; the user's response must not wait for it.
    It agrees on Ben's question and not on Eva's."""
    slm = FakeServer(replying(lambda prompt: SLM_SAYS))
    llm = FakeServer(replying(lambda prompt: "The answer is 7." if "Ben" in prompt else "The answer is 9."),
                     delay_s=LLM_DELAY_S)
    with serve(slm) as slm_url, serve(llm) as llm_url:
        backends = [OpenAIBackend(url, role, timeout_s=30, top_logprobs=2)
                    for url, role in ((slm_url, "slm"), (llm_url, "llm"))]
        # mean_logprob at 0.1 keeps the fake SLM's answers (mean P(T) 0.28).
        cascade = Cascade(*backends, make_router("mean_logprob"), 0.1, COST, SamplingConfig(k=1, max_new_tokens=4))
        deployment = Deployment("escalate-cascade", "1", "champion", "/nowhere",
                                endpoints={"slm": slm_url, "llm": llm_url}, served_names={"slm": "slm", "llm": "llm"})
        holder = EngineHolder()
        holder.swap(Engine(deployment, cascade=cascade))
        settings = GatewaySettings(api_keys=(KEY,), traffic_dir=str(tmp_path), traffic_flush_s=0.1,
                                   shadow_fraction=1.0, shadow_max_per_minute=100)
        with TestClient(create_app(settings, holder), client=("127.0.0.1", 50000)) as c:
            assert math.isnan(gauges(c)["escalate_shadow_accept_accuracy"])
            for question in ("Ben has 3 pens. Then gets 4 more. How many pens?", "Eva has 7 cups. How many cups?"):
                start = time.perf_counter()
                r = c.post("/v1/chat/completions", headers=AUTH, json={
                    "model": "escalate-cascade", "messages": [{"role": "user", "content": question}]})
                took = time.perf_counter() - start
                assert r.status_code == 200 and r.json()["escalate"]["model"] == "slm", r.text
                assert took < LLM_DELAY_S / 2, f"the response waited for the shadow call: {took:.2f} s"
            assert read_parts(part_files(tmp_path)).empty  # the rows wait for their labels
            rows = wait_for_rows(tmp_path, 2, timeout_s=15).sort_values("question")
            metrics = gauges(c)
        assert len(llm.requests) == 2 and all("Ben" in b["prompt"] or "Eva" in b["prompt"] for _, _, b in llm.requests)
    assert list(rows["shadow"]) == ["agreed", "disagreed"] and list(rows["shadow_agrees"]) == [True, False]
    assert list(rows["shadow_parsed_answer"]) == ["7", "9"] and list(rows["parsed_answer"]) == ["7", "7"]
    assert (rows["latency_shadow_s"] >= LLM_DELAY_S * 0.9).all() and (rows["model"] == "slm").all()
    assert (rows["latency_gateway_s"] < LLM_DELAY_S / 2).all()
    assert metrics["escalate_shadow_requests_total{sent}"] == 2 and metrics["escalate_shadow_labels"] == 2
    assert metrics["escalate_shadow_accept_accuracy"] == 0.5
    assert 0 < metrics["escalate_shadow_accept_accuracy_low"] < 0.5 < metrics["escalate_shadow_accept_accuracy_high"] < 1
    assert metrics["escalate_live_escalation_rate"] == 0.0


def test_shadowing_off_logs_at_once_and_counts_nothing(tmp_path: Path) -> None:
    c = TestClient(create_app(GatewaySettings(api_keys=(KEY,), traffic_dir=str(tmp_path), traffic_flush_s=0.1),
                              _holder()), client=("127.0.0.1", 50000))
    assert chat(c).status_code == 200
    rows = wait_for_rows(tmp_path, 1)
    assert rows["shadow"].isna().all() and "escalate_shadow_requests_total{sent}" not in gauges(c)


def _holder() -> EngineHolder:
    holder = EngineHolder()
    holder.swap(StandInEngine())
    return holder
