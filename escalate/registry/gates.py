"""Quality gates: pure functions that pass or fail a candidate cascade, each with its figure and reason.

A candidate takes `@champion` only when every gate passes (aliases.Registry.register). The gates:

- data validation passed (every table's great-expectations suite);
- accuracy ≥ LLM-only accuracy − δ (METRICS.md's "comparable accuracy");
- cost saving 1 − C ≥ a minimum (C: cost normalized by LLM-only);
- ECE ≤ a maximum, where the strategy's score is meant as P(SLM correct) (skipped, and passed,
  with the reason, where it is not);
- no significant regression against the current champion on the same test set: a seeded paired
  bootstrap over per-query correctness (the champion's from its bundle's stored outcomes, never by
  running it) gives a 95% interval of (candidate − champion) accuracy, whose lower bound must be
  > −margin (with no champion yet, or one whose stored outcomes do not cover the candidate's test
  queries, it passes and says so);
- the bundle loads and answers a smoke set in a fresh process (the one gate that does I/O: it
  runs a subprocess, so it still decides from what comes back, never from this process's state).

Limits come from the profile through GateLimits, and δ from its evaluation.delta. Every figure
names what it is in its reason.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from escalate.cascade import ANSWERED_BY
from escalate.config import GateLimits
from escalate.evaluation import metrics
from escalate.registry import load_gate_child

DATA_VALIDATION, ACCURACY, COST_SAVING, ECE, REGRESSION, BUNDLE_LOAD = (
    "data_validation", "accuracy", "cost_saving", "ece", "regression", "bundle_load")
GATES = (DATA_VALIDATION, ACCURACY, COST_SAVING, ECE, REGRESSION, BUNDLE_LOAD)
# Accuracies are ratios k/n: a limit met exactly may sit one rounding error above the figure.
_TOL = 1e-9
NO_CHAMPION = "no current champion: nothing to regress against"
_MARKER = load_gate_child.MARKER  # what starts each of the child's report lines
# The directory holding this escalate package: the load gate's child starts from the same code.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: the figure it measured, the limit it held it to, and why it passed or failed."""

    name: str
    passed: bool
    figure: float | None
    limit: float | None
    reason: str

    def tag_value(self) -> str:
        """One registry tag per gate: `pass | figure 0.91 | limit 0.9 | reason` (MLflow caps values at 5000)."""
        verdict = "pass" if self.passed else "fail"
        return f"{verdict} | figure {_num(self.figure)} | limit {_num(self.limit)} | {self.reason}"[:5000]

    @classmethod
    def from_tag(cls, name: str, value: str) -> GateResult:
        """Read a gate back from its tag (registry show / list)."""
        parts = value.split(" | ", 3)
        if len(parts) != 4 or parts[0] not in ("pass", "fail"):
            return cls(name, False, None, None, f"unreadable gate tag: {value!r}")
        return cls(name, parts[0] == "pass", _parse_num(parts[1].removeprefix("figure ")),
                   _parse_num(parts[2].removeprefix("limit ")), parts[3])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def _parse_num(text: str) -> float | None:
    try:
        return None if text == "-" else float(text)
    except ValueError:
        return None


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(float(v)) for v in values)


def all_passed(results: Iterable[GateResult]) -> bool:
    """True when there is at least one gate and every one passed."""
    results = list(results)
    return bool(results) and all(r.passed for r in results)


def failed(results: Iterable[GateResult]) -> list[GateResult]:
    return [r for r in results if not r.passed]


def data_validation_gate(reports: Mapping[str, Any]) -> GateResult:
    """Every table validated: values are ValidationReports, their `to_dict()` dicts, or booleans, by table."""
    if not reports:
        return GateResult(DATA_VALIDATION, False, None, 0.0,
                          "no validation reports: nothing shows the data was validated")
    bad = []
    for table, report in reports.items():
        if isinstance(report, bool):
            ok = report
        else:
            ok = report.get("ok") if isinstance(report, Mapping) else getattr(report, "ok", None)
        if ok is not True:
            detail = report.summary() if hasattr(report, "summary") else _failure_text(report)
            bad.append(f"{table}: {detail}" if detail else str(table))
    if bad:
        return GateResult(DATA_VALIDATION, False, float(len(bad)), 0.0,
                          f"{len(bad)} of {len(reports)} tables failed validation: " + "; ".join(bad))
    return GateResult(DATA_VALIDATION, True, 0.0, 0.0, f"all {len(reports)} tables valid ({', '.join(reports)})")


def _failure_text(report: Any) -> str:
    if isinstance(report, Mapping):
        failures = report.get("failures") or []
        return ", ".join(f"{f.get('column')}: {f.get('detail')}" for f in failures[:5] if isinstance(f, Mapping))
    return ""


def accuracy_gate(accuracy: float, llm_accuracy: float, delta: float) -> GateResult:
    """accuracy ≥ LLM-only accuracy − δ, both on the same split."""
    if not _finite(accuracy, llm_accuracy):
        return GateResult(ACCURACY, False, accuracy, None,
                          f"accuracy {accuracy} or LLM-only {llm_accuracy} is undefined")
    limit = llm_accuracy - delta
    ok = accuracy >= limit - _TOL
    relation = "≥" if ok else "<"
    return GateResult(ACCURACY, ok, float(accuracy), float(limit),
                      f"accuracy {accuracy:.4f} {relation} LLM-only {llm_accuracy:.4f} − δ {delta:g}")


def cost_saving_gate(normalized_cost: float, min_saving: float) -> GateResult:
    """saving = 1 − C ≥ min_saving, with C the strategy's cost divided by LLM-only's."""
    if not _finite(normalized_cost):
        return GateResult(COST_SAVING, False, None, min_saving, f"normalized cost {normalized_cost} is undefined")
    saving = 1.0 - float(normalized_cost)
    ok = saving >= min_saving - _TOL
    relation = "≥" if ok else "<"
    return GateResult(COST_SAVING, ok, saving, float(min_saving),
                      f"cost saving {saving:.4f} (normalized cost {normalized_cost:.4f}) {relation} "
                      f"minimum {min_saving:g}")


def ece_gate(ece: float | None, is_probability: bool, max_ece: float, strategy: str = "the strategy") -> GateResult:
    """ECE ≤ max_ece for a score meant as P(SLM correct); a score that is not a probability skips it (passes)."""
    if not is_probability:
        return GateResult(ECE, True, None, float(max_ece),
                          f"skipped: {strategy}'s score is not a probability, so ECE does not apply")
    if not _finite(ece):
        return GateResult(ECE, False, None, float(max_ece), f"ECE of {strategy} is undefined ({ece})")
    ok = ece <= max_ece + _TOL
    relation = "≤" if ok else ">"
    return GateResult(ECE, ok, float(ece), float(max_ece), f"ECE {ece:.4f} {relation} maximum {max_ece:g} (10 bins)")


@dataclass(frozen=True)
class BootstrapInterval:
    """Mean paired difference (candidate − champion accuracy) and its percentile interval."""

    mean: float
    low: float
    high: float
    n: int
    level: float


def paired_bootstrap(candidate: Sequence[bool], champion: Sequence[bool], n_samples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> BootstrapInterval:
    """Resample queries with replacement, keeping each query's pair together; percentile interval."""
    cand, champ = np.asarray(candidate, dtype=bool), np.asarray(champion, dtype=bool)
    if cand.shape != champ.shape or cand.ndim != 1 or cand.size == 0:
        raise ValueError(f"need two non-empty, equally long correctness vectors; got {cand.shape} and {champ.shape}")
    diff = cand.astype(float) - champ.astype(float)
    rng = np.random.default_rng(seed)
    means = np.empty(n_samples)
    block = max(1, 2_000_000 // diff.size)  # bound memory: n_samples x n indices, a block at a time
    for start in range(0, n_samples, block):
        stop = min(n_samples, start + block)
        means[start:stop] = diff[rng.integers(0, diff.size, size=(stop - start, diff.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return BootstrapInterval(float(diff.mean()), float(low), float(high), int(diff.size), level)


def regression_gate(candidate_correct: Sequence[bool] | None, champion_correct: Sequence[bool] | None,
                    margin: float, n_samples: int = 2000, seed: int = 0, unpaired: str = NO_CHAMPION) -> GateResult:
    """No significant regression: the 95% lower bound of (candidate − champion) accuracy > −margin.

    Both vectors hold per-query correctness on the same test queries in the same order
    (pair_with_champion pairs them). With nothing to pair with (champion_correct None) the gate
    passes and says why (`unpaired`): there is no champion, or its stored outcomes are not comparable.
    """
    if champion_correct is None:
        return GateResult(REGRESSION, True, None, -margin, unpaired)
    if candidate_correct is None or len(candidate_correct) == 0:
        return GateResult(REGRESSION, False, None, -margin, "no per-query outcomes of the candidate to compare")
    ci = paired_bootstrap(candidate_correct, champion_correct, n_samples, seed)
    ok = ci.low > -margin
    relation = ">" if ok else "≤"
    return GateResult(REGRESSION, ok, ci.low, -margin,
                      f"Δ accuracy vs champion {ci.mean:+.4f}, 95% CI [{ci.low:+.4f}, {ci.high:+.4f}] over "
                      f"{ci.n} paired queries ({n_samples} resamples, seed {seed}); lower bound {relation} "
                      f"−margin {-margin:+g}")


def per_query_outcomes(records: pd.DataFrame, mode: str, threshold: float,
                       questions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One strategy's per-query outcomes at its threshold: id, (question,) correct, escalated, cost.

    `records` are one strategy's rows of records.parquet; `questions` adds the question text, so a
    later comparison pairs queries by id and text, not by id alone.
    """
    return outcome_table(metrics.outcomes(records, mode, threshold), questions)


def outcome_table(outcomes: pd.DataFrame, questions: pd.DataFrame | None = None) -> pd.DataFrame:
    """id, (question,) correct, escalated, cost of per-query outcomes: what a bundle stores for the next
    regression gate, whatever kind of strategy measured them (a token-level one has no score records)."""
    out = outcomes[["id", "correct", "escalated", "cost"]]
    if questions is not None:
        out = out.merge(questions[["id", "question"]], on="id", how="left")
        out = out[["id", "question", "correct", "escalated", "cost"]]
    return out.reset_index(drop=True)


def align_outcomes(candidate: pd.DataFrame, champion: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """Paired correctness on the candidate's queries, or None when the champion's outcomes do not cover them.

    Queries pair by id and, where both tables have it, by question text (a regenerated test set may
    reuse ids for other questions). None means "not the same test set".
    """
    keys = _pair_keys(candidate, champion)
    champ = champion.drop_duplicates(keys)[keys + ["correct"]]
    merged = candidate[keys + ["correct"]].merge(champ, on=keys, how="left", suffixes=("_candidate", "_champion"))
    if merged.empty or merged["correct_champion"].isna().any():
        return None
    return merged["correct_candidate"].to_numpy(bool), merged["correct_champion"].to_numpy(bool)


def _pair_keys(candidate: pd.DataFrame, champion: pd.DataFrame) -> list[str]:
    return ["id"] + (["question"] if "question" in candidate.columns and "question" in champion.columns else [])


@dataclass(frozen=True)
class ChampionPairs:
    """What the regression gate compares: per-query correctness of the candidate and of the champion on
    the same queries, or (both None) the reason there is nothing to compare."""

    candidate: np.ndarray | None = None
    champion: np.ndarray | None = None
    unpaired: str = NO_CHAMPION


def pair_with_champion(candidate: pd.DataFrame, stored: pd.DataFrame | None, champion: str) -> ChampionPairs:
    """Pair the candidate's per-query outcomes with the champion's stored ones (its bundle's outcomes.parquet).

    Only stored outcomes are compared: the champion is never run here. When they do not cover every
    one of the candidate's test queries (another test set, or a bundle without outcomes), the champion
    is not comparable, and the regression gate passes saying so: failing would block every candidate
    after the test set changes (promote refuses failed versions), while the accuracy gate still holds
    each candidate to LLM-only on its own test set. `champion` names it in the reason.
    """
    if candidate.empty:  # the candidate measured no query: the gate fails on that, not on comparability
        return ChampionPairs(np.zeros(0, bool), np.zeros(0, bool))
    if stored is None:
        return ChampionPairs(unpaired=f"not comparable: {champion} stored no per-query outcomes; "
                                      "nothing to regress against")
    pairs = align_outcomes(candidate, stored)
    if pairs is not None:
        return ChampionPairs(*pairs)
    keys = _pair_keys(candidate, stored)
    shared = len(candidate[keys].drop_duplicates().merge(stored[keys].drop_duplicates(), on=keys))
    which = "no" if shared == 0 else f"only {shared} of {len(candidate)}"
    return ChampionPairs(unpaired=f"not comparable: {champion}'s stored outcomes share {which} test queries with "
                                  f"the candidate (paired by {' and '.join(keys)}); nothing to regress against")


def candidate_gates(*, validation: Mapping[str, Any], summary: Mapping[str, Any], llm_accuracy: float,
                    is_probability: bool, pairs: ChampionPairs, load: GateResult, delta: float,
                    limits: GateLimits) -> list[GateResult]:
    """Every gate of one candidate, in GATES order, from its figures (no I/O but the load result passed in).

    summary: the strategy's row of the evaluation's metrics.json (accuracy and normalized cost at
    its calib-chosen threshold, ECE of its score, its name); llm_accuracy: LLM-only on the same split;
    pairs: the candidate's and the champion's per-query correctness (pair_with_champion); delta: the
    profile's evaluation.delta, the accuracy slack vs LLM-only its threshold was chosen under.
    """
    strategy = str(summary.get("strategy", "the strategy"))
    return [
        data_validation_gate(validation),
        accuracy_gate(float(summary["accuracy"]), llm_accuracy, delta),
        cost_saving_gate(float(summary["cost"]), limits.min_saving),
        ece_gate(_float_or_none(summary.get("ece")), is_probability, limits.max_ece, strategy),
        regression_gate(pairs.candidate, pairs.champion, limits.regression_margin, limits.bootstrap_samples,
                        limits.seed, pairs.unpaired),
        load,
    ]


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def load_gate(model_uri: str, questions: Sequence[str], tracking_uri: str | None = None, timeout_s: float = 600.0,
              python: str | None = None) -> GateResult:
    """The bundle loads and answers `questions` in a fresh Python process, within timeout_s."""
    return load_gates([model_uri], [questions], tracking_uri, timeout_s, python)[0]


def load_gates(model_uris: Sequence[str], questions: Sequence[Sequence[str]], tracking_uri: str | None = None,
               timeout_s: float = 600.0, python: str | None = None) -> list[GateResult]:
    """Each bundle loads and answers its questions in one fresh Python process, within timeout_s per bundle.

    One process for a run's candidates pays the imports (torch, transformers, mlflow: most of a
    load's time on a small machine) once. Each bundle still loads from its own artifacts and imports
    escalate from its own code path (the previous bundle's modules are dropped first), its models are
    closed before the next loads, and an error or a timeout (an alarm in the child) fails that bundle
    alone. The child is `python -m escalate.registry.load_gate_child` (this escalate's package root on
    its PYTHONPATH, so it starts from the same code); it gets MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI
    = tracking_uri (for models:/ URIs) and runs in an empty directory, so nothing comes from the
    caller's tree. Only a crash of the process itself fails every bundle it had not reported on yet,
    with its stderr tail.
    """
    jobs = [{"uri": uri, "questions": [str(q) for q in qs], "timeout_s": float(timeout_s)}
            for uri, qs in zip(model_uris, questions, strict=True)]
    results: dict[str, GateResult] = {j["uri"]: GateResult(BUNDLE_LOAD, False, None, 0.0, "no smoke questions to answer")
                                      for j in jobs if not j["questions"]}
    jobs = [j for j in jobs if j["questions"]]
    if not jobs:
        return [results[uri] for uri in model_uris]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
    if tracking_uri:
        from escalate.tracking import resolve_uri  # loads MLflow's client, which the pure gates do not need

        tracking_uri = resolve_uri(tracking_uri, Path.cwd())  # the child runs elsewhere: no relative sqlite paths
        env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=tracking_uri)
    limit = timeout_s * (len(jobs) + 1)  # the per-bundle alarms decide; one slot more for the imports
    start = time.perf_counter()
    timed_out = False
    with tempfile.TemporaryDirectory(prefix="escalate-load-gate-") as cwd:
        try:
            proc = subprocess.run([python or sys.executable, "-m", load_gate_child.__name__], check=False,
                                  input=json.dumps(jobs), capture_output=True, text=True, timeout=limit, cwd=cwd, env=env)
            stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            stdout, stderr, code, timed_out = _text(exc.stdout), _text(exc.stderr), None, True
    elapsed = time.perf_counter() - start
    reported = [json.loads(line[len(_MARKER):]) for line in stdout.splitlines() if line.startswith(_MARKER)]
    for out in reported:
        n = len(next(j for j in jobs if j["uri"] == out["uri"])["questions"])
        results[out["uri"]] = (
            GateResult(BUNDLE_LOAD, False, None, float(n), f"loading {out['uri']} in a fresh process failed: "
                       f"{out['error']}; stderr tail: {_tail(stderr)}") if "error" in out
            else _judge_answers(out["uri"], out, n, elapsed / max(len(reported), 1)))
    for job in jobs:
        if job["uri"] in results:
            continue
        n, tail = float(len(job["questions"])), _tail(stderr)
        if timed_out:
            reason = f"{job['uri']} did not load and answer within {timeout_s:g} s in a fresh process"
        elif code:
            reason = f"loading {job['uri']} in a fresh process failed (exit {code}): {_last_line(stderr)}"
        else:
            reason = f"the fresh process printed no result for {job['uri']}"
        results[job["uri"]] = GateResult(BUNDLE_LOAD, False, None, n, reason + (f"; stderr tail: {tail}" if tail else ""))
    return [results[uri] for uri in model_uris]


def _text(value: str | bytes | None) -> str:
    """What a timed-out child had written (subprocess hands it over as bytes or text, or not at all)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""


def _judge_answers(model_uri: str, out: dict[str, Any], n: int, elapsed: float) -> GateResult:
    """Every question answered, by a known model, with text and a finite non-negative cost."""
    problems = []
    if out["rows"] != n:
        problems.append(f"{out['rows']} rows for {n} questions")
    missing = sorted({"answer", "model", "confidence", "score", "cost", "latency_s"} - set(out["columns"]))
    if missing:
        problems.append(f"output lacks columns {missing}")
    unknown = sorted({m for m in out["models"] if m not in ANSWERED_BY})
    if unknown:
        problems.append(f"unknown answering models {unknown}")
    if any(a is None for a in out["answers"]):
        problems.append("some answers are not text")
    if any(not (math.isfinite(c) and c >= 0) for c in out["costs"]):
        problems.append("some costs are negative or not finite")
    answered = sum(1 for a, m in zip(out["answers"], out["models"]) if a is not None and m in ANSWERED_BY)
    if problems:
        return GateResult(BUNDLE_LOAD, False, float(answered), float(n),
                          f"{model_uri} loaded in a fresh process but answered badly: " + "; ".join(problems))
    by = ", ".join(f"{m} {out['models'].count(m)}" for m in ANSWERED_BY)
    return GateResult(BUNDLE_LOAD, True, float(answered), float(n),
                      f"{model_uri} answered {answered}/{n} smoke questions in a fresh process "
                      f"({by}; load {out['load_s']:.1f} s, predict {out['predict_s']:.1f} s, {elapsed:.1f} s in all)")


def _last_line(text: str) -> str:
    """The error a traceback ends with (its last non-empty line), the part worth reading first."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no error output"


def _tail(text: str | bytes | None, limit: int = 1500) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = (text or "").strip()
    return ("…" + text[-limit:]) if len(text) > limit else text
