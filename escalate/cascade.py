"""The online cascade: answer new questions with one strategy, exactly as offline evaluation scored it.

It walks the code paths evaluation used, so a served answer costs and routes the way the report
says: prompts from `escalate.prompts`, generation parameters and sample rows from
`escalate.sampling` (greedy sample 0, plus K-1 sampled ones only when the router votes over them),
the router's score and the one escalation rule offline figures use (evaluation/decision.py), the strategy's
SLM answer from `router.slm_answers`, and prices from the cost model (a router that reads the SLM
to score, Router.slm_reads, pays for that prefill as evaluation does: records.read_cost). A
pre-generation router decides before anything is generated, so an escalated query never reaches
the SLM; a kept query whose SLM answer is the refusal (SATER's SLM) goes to the LLM after it
(at every threshold but −inf, SLM-only).
Served answers report the router's wall time for every router; evaluation's latency figures count
router time only where the router runs the SLM (it is SLM time, AROL's summand).

    cascade = Cascade(slm, llm, make_router("p_true_token"), threshold=0.4, cost=cost, sampling=cfg)
    cascade.answer(["Eva has 7 cups. Then gives away 1. How many cups does Eva have now?"])

The cascade's logic is written once, as a plan (`Cascade.plan`): a generator that yields each
generation it needs (`Generate`) and is sent the generations back. `drive` runs a plan with blocking
backends (offline, tests, the shadow labeller), `drive_async` with async ones (the gateway: no worker
thread waits on a model server). A request is scored on plain rows (routers.base.RowInputs), not DataFrames.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio
import numpy as np

from escalate.config import SamplingConfig
from escalate.evaluation import decision
from escalate.evaluation.cost import CostModel
from escalate.evaluation.records import read_cost
from escalate.models.backends.base import Generation, GenerationBackend, SamplingParams
from escalate.prompts import format_prompt
from escalate.routers.base import QUESTION_COLUMNS, Router, RowInputs
from escalate.sampling import generation_params, generation_rows

ROLES = ("slm", "llm")
# A token-level answer (escalate.citer) that both models wrote tokens of; `model` is otherwise the one role.
MIXED = "slm+llm"
ANSWERED_BY = (*ROLES, MIXED)
ONLINE_SPLIT = "online"
# What answer() gives per question, in this order (the bundle's output schema lists the same).
# confidence: P(the kept answer is right) where the router's score means that (Router.is_probability), else NaN;
# score: the router's raw score, which the threshold compares (any scale: entropy's is a negated entropy)
RESULT_FIELDS = ("question", "answer", "parsed_answer", "model", "escalated", "confidence", "score", "strategy",
                 "threshold", "cost_slm", "cost_llm", "cost_router", "cost", "latency_slm_s", "latency_router_s",
                 "latency_llm_s", "latency_s", "slm_prompt_tokens", "slm_output_tokens", "llm_prompt_tokens",
                 "llm_output_tokens")
T = TypeVar("T")


class Answerer(Protocol):
    """What a bundle builds and the gateway calls: `Cascade` (query level) or
    `escalate.citer.cascade.TokenLevelCascade` (token level); both answer with RESULT_FIELDS."""

    def answer(self, questions: list[str], choices: list[Any] | None = None) -> list[dict]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Generate:
    """A step of a plan: `role`'s generations for `prompts` (one list per prompt), which the driver sends back."""

    role: str
    prompts: list[str]
    params: SamplingParams


Plan = Generator[Generate, list[list[Generation]], T]


def drive(plan: Plan[T], generate: Callable[[Generate], list[list[Generation]]]) -> T:
    """Run a plan with a blocking `generate`; a generation's failure is raised inside the plan, where it may be handled."""
    reply: tuple[bool, Any] = (True, None)
    while True:
        done, value = _advance(plan, reply)
        if done:
            return value
        try:
            reply = (True, generate(value))
        except Exception as exc:  # the plan decides (a down SLM is bypassed); else it re-raises
            reply = (False, exc)


async def drive_async(plan: Plan[T], generate: Callable[[Generate], Awaitable[list[list[Generation]]]],
                      inline: bool) -> T:
    """drive() with an async `generate`. The plan's own steps (routing, parsing) run on the event loop when
    `inline` (a cheap router: Router.cheap_to_score), else on a worker thread, so a router's model never
    blocks the loop."""
    reply: tuple[bool, Any] = (True, None)
    while True:
        done, value = _advance(plan, reply) if inline else await anyio.to_thread.run_sync(_advance, plan, reply)
        if done:
            return value
        try:
            reply = (True, await generate(value))
        except Exception as exc:
            reply = (False, exc)


def _advance(plan: Plan[Any], reply: tuple[bool, Any]) -> tuple[bool, Any]:
    """Send a plan the last reply (a value, or an exception to raise there): (True, its result) when it
    returns, else (False, its next step). StopIteration stays in here: it may not cross a thread's future."""
    try:
        return False, plan.send(reply[1]) if reply[0] else plan.throw(reply[1])
    except StopIteration as stop:
        return True, stop.value


def question_rows(questions: list[str], choices: list[Any] | None = None) -> list[dict]:
    """Online questions as rows of the `questions` table routers read: positional ids, optional choices as JSON."""
    if isinstance(questions, str):
        raise TypeError("questions must be a list of strings, not one string")
    if choices is not None and len(choices) != len(questions):
        raise ValueError(f"got {len(choices)} choices for {len(questions)} questions")
    bad = [i for i, q in enumerate(questions) if not isinstance(q, str) or not q.strip()]
    if bad:
        raise ValueError(f"questions must be non-empty strings; bad positions: {bad[:10]}")
    normalized = [_choices_json(c) for c in (choices or [None] * len(questions))]
    return [dict(zip(QUESTION_COLUMNS, (f"q{i:06d}", q, c, ONLINE_SPLIT)))
            for i, (q, c) in enumerate(zip(questions, normalized))]


def _choices_json(choices: Any) -> str | None:
    """None / blank / NaN -> None; a list -> its JSON (what the samples path and graders expect)."""
    if choices is None or (isinstance(choices, float) and math.isnan(choices)):
        return None
    if isinstance(choices, (list, tuple)):
        return json.dumps(list(choices)) if choices else None
    text = str(choices)
    return text if text.strip() else None


def _by_id(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["id"], []).append(row)
    return grouped


def _none_if_nan(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


@dataclass
class Cascade:
    """An SLM, an LLM, a router and its threshold: answers questions and says who answered, at what cost.

    `sampling` is the profile's SamplingConfig (max_new_tokens, K, temperature) and `seed` the
    profile's seed, so generations are drawn exactly as the samples the strategy was evaluated on.
    """

    slm: GenerationBackend
    llm: GenerationBackend
    router: Router
    threshold: float
    cost: CostModel
    sampling: SamplingConfig
    seed: int = 0

    def __post_init__(self) -> None:
        self.threshold = float(self.threshold)
        if math.isnan(self.threshold):
            raise ValueError("threshold must be a number (±inf allowed: never / always escalate), got NaN")
        if self.router.mode not in ("cascade", "pregen"):
            raise ValueError(f"router {self.router.name!r} has unknown mode {self.router.mode!r}")
        for role in ROLES:  # a cost model without a role would fail mid-request; fail here instead
            self.cost.cost(role, 0, 0)

    def answer(self, questions: list[str], choices: list[Any] | None = None) -> list[dict]:
        """One dict per question (RESULT_FIELDS): the answer, who gave it, the score, cost and latency."""
        return drive(self.plan(questions, choices), self.generate)

    async def answer_async(self, questions: list[str], choices: list[Any] | None = None) -> list[dict]:
        """answer() over the backends' async generation."""
        return await drive_async(self.plan(questions, choices), self.agenerate, self.router.cheap_to_score)

    def backend(self, role: str) -> GenerationBackend:
        return self.slm if role == "slm" else self.llm

    def generate(self, step: Generate) -> list[list[Generation]]:
        return self.backend(step.role).generate(step.prompts, step.params)

    async def agenerate(self, step: Generate) -> list[list[Generation]]:
        return await self.backend(step.role).agenerate(step.prompts, step.params)

    def plan(self, questions: list[str], choices: list[Any] | None = None) -> Plan[list[dict]]:
        """answer()'s logic, yielding each generation it needs: the one place the cascade's rule is written."""
        records = question_rows(questions, choices)
        if not records:
            return []
        all_samples = self.router.uses_all_samples
        if self.router.mode == "pregen":
            routing, scores, route_s, route_cost = self._route(RowInputs(records, []))
            paid = routing.slm_paid(self.router.mode)
            slm_rows = yield from self._generate("slm", [q for q, p in zip(records, paid) if p], all_samples)
            inputs = RowInputs(records, slm_rows)
        else:
            slm_rows = yield from self._generate("slm", records, all_samples)
            inputs = RowInputs(records, slm_rows)
            routing, scores, route_s, route_cost = self._route(inputs)
        answers = self._strategy_answers(inputs, ~routing.routed)
        # The same rule again, now that the kept queries' SLM answers (and refusals) are known.
        refused = np.array([answers.get(q["id"], (None, False))[1] for q in records], dtype=bool)
        escalated = decision.escalates(scores, self.threshold, refused)
        llm_rows = yield from self._generate("llm", [q for q, e in zip(records, escalated) if e], all_samples=False)
        by_id = {"slm": _by_id(slm_rows), "llm": _by_id(llm_rows)}
        results = []
        for i, q in enumerate(records):
            slm_part, llm_part = by_id["slm"].get(q["id"]), by_id["llm"].get(q["id"])
            if escalated[i]:
                greedy = next(r for r in llm_part if r["sample_idx"] == 0)
                text, parsed = greedy["text"], _none_if_nan(greedy["parsed_answer"])
            else:
                text, parsed = self._slm_answer(slm_part, _none_if_nan(answers[q["id"]][0]))
            slm_cost, slm_time, slm_tokens = self._usage("slm", slm_part)
            llm_cost, llm_time, llm_tokens = self._usage("llm", llm_part)
            router_time = route_s / len(records)  # scoring is batched: its time is shared evenly
            results.append({
                "question": q["question"], "answer": str(text).strip(), "parsed_answer": parsed,
                "model": "llm" if escalated[i] else "slm", "escalated": bool(escalated[i]),
                "confidence": float(scores[i]) if self.router.is_probability else math.nan,
                "score": float(scores[i]), "strategy": self.router.name, "threshold": self.threshold,
                "cost_slm": slm_cost, "cost_llm": llm_cost, "cost_router": float(route_cost[i]),
                "cost": float(route_cost[i]) + slm_cost + llm_cost,
                "latency_slm_s": slm_time, "latency_router_s": router_time, "latency_llm_s": llm_time,
                "latency_s": slm_time + router_time + llm_time,
                "slm_prompt_tokens": slm_tokens[0], "slm_output_tokens": slm_tokens[1],
                "llm_prompt_tokens": llm_tokens[0], "llm_output_tokens": llm_tokens[1],
            })
        return results

    def close(self) -> None:
        for backend in (self.slm, self.llm):
            backend.close()

    def _generate(self, role: str, part: list[dict], all_samples: bool) -> Plan[list[dict]]:
        """Ungraded sample rows for `part`: greedy sample 0, and samples 1..K-1 when the strategy pays for them."""
        if not part:
            return []
        greedy, sampled = generation_params(self.sampling, self.seed)
        prompts = [format_prompt(q["question"], q["choices"]) for q in part]
        first = yield Generate(role, prompts, greedy)
        rest = (yield Generate(role, prompts, sampled)) if all_samples and sampled else [[] for _ in prompts]
        rows: list[dict] = []
        for question, g0, gk in zip(part, first, rest):
            rows += generation_rows(question, role, g0 + gk, 0)
        # Serving has no gold answer: `correct` is unknown (None), which routers only read for offline figures.
        return [{**row, "correct": None} for row in rows]

    def _strategy_answers(self, inputs: RowInputs, kept: np.ndarray) -> dict[str, tuple]:
        """Per kept question id, the strategy's SLM answer and whether it is the refusal (router.slm_answer_rows)."""
        if not kept.any():
            return {}
        if not kept.all():  # else the scoring inputs serve as they are (one request: one question, kept)
            rows = [q for q, k in zip(inputs.rows, kept) if k]
            ids = {q["id"] for q in rows}
            inputs = RowInputs(rows, [r for r in inputs.sample_rows if r["id"] in ids])
        return {a["id"]: (a["answer"], a["refused"]) for a in self.router.slm_answer_rows(inputs)}

    def _route(self, inputs: RowInputs) -> tuple[decision.Decision, np.ndarray, float, np.ndarray]:
        """Which questions the score sends to the LLM (before any SLM answer) and the score per question, the
        time they took, and what scoring cost per question (the SLM tokens a router that runs the SLM reads,
        priced as SLM input)."""
        start = time.perf_counter()
        scores = np.asarray(self.router.score(inputs), dtype=float)
        routing = decision.decide(scores, self.threshold)
        elapsed = time.perf_counter() - start
        return routing, scores, elapsed, read_cost(self.router.slm_reads(inputs), len(scores), self.cost)

    @staticmethod
    def _slm_answer(rows: list[dict], answer: Any) -> tuple[str, Any]:
        """The strategy's SLM answer and the text that gives it: the greedy text, or the first voting sample's."""
        rows = sorted(rows, key=lambda r: r["sample_idx"])
        if answer is not None:
            match = next((r for r in rows if r["parsed_answer"] == answer), None)
            if match is not None:
                return str(match["text"]), answer
        return str(rows[0]["text"]), answer

    def _usage(self, role: str, rows: list[dict] | None) -> tuple[float, float, tuple[int, int]]:
        """Cost, summed generation time and (prompt, output) tokens of the samples paid for on one question."""
        if not rows:
            return 0.0, 0.0, (0, 0)
        cost = sum(self.cost.cost(role, int(r["n_prompt_tokens"]), int(r["n_output_tokens"])) for r in rows)
        tokens = (sum(int(r["n_prompt_tokens"]) for r in rows), sum(int(r["n_output_tokens"]) for r in rows))
        return float(cost), float(sum(float(r["latency_s"]) for r in rows)), tokens
