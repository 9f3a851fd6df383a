"""Gates on hand-made numbers: each passes where it should, fails where it should, and says why."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from escalate.config import ConfigError, from_dict
from escalate.registry import gates
from escalate.registry.gates import GateLimits, GateResult


def test_data_validation_gate_names_the_failing_table() -> None:
    ok = gates.data_validation_gate({"questions": {"ok": True}, "samples": True})
    assert ok.passed and ok.figure == 0
    bad = gates.data_validation_gate({"questions": {"ok": True}, "samples": {
        "ok": False, "failures": [{"column": "latency_s", "detail": "values must be >= 0"}]}})
    assert not bad.passed and bad.figure == 1 and "samples" in bad.reason and "latency_s" in bad.reason
    assert not gates.data_validation_gate({}).passed


def test_data_validation_gate_reads_validation_reports() -> None:
    from escalate.data.validation import validate

    frame = pd.DataFrame({"id": ["a", "a"], "task": "t", "question": ["q", "q"], "answer": ["1", "2"],
                          "split": "test"})
    result = gates.data_validation_gate({"questions": validate(frame, "questions")})
    assert not result.passed and "questions" in result.reason


def test_accuracy_gate_allows_delta_below_llm_only() -> None:
    assert gates.accuracy_gate(0.81, 0.83, delta=0.02).passed  # exactly at the limit
    result = gates.accuracy_gate(0.80, 0.83, delta=0.02)
    assert not result.passed and result.figure == 0.80 and result.limit == pytest.approx(0.81)
    assert "0.8000 < LLM-only 0.8300" in result.reason
    assert not gates.accuracy_gate(math.nan, 0.8, 0.02).passed


def test_cost_saving_gate_measures_one_minus_normalized_cost() -> None:
    assert gates.cost_saving_gate(0.6, min_saving=0.3).passed
    result = gates.cost_saving_gate(1.05, min_saving=0.1)  # escalating everything costs more than LLM-only
    assert not result.passed and result.figure == pytest.approx(-0.05) and "minimum 0.1" in result.reason


def test_ece_gate_applies_only_to_probabilities() -> None:
    assert gates.ece_gate(0.04, True, max_ece=0.1).passed
    too_high = gates.ece_gate(0.2, True, max_ece=0.1, strategy="p_true_token")
    assert not too_high.passed and too_high.figure == 0.2
    skipped = gates.ece_gate(math.nan, False, max_ece=0.1, strategy="entropy")
    assert skipped.passed and skipped.figure is None and "not a probability" in skipped.reason
    assert not gates.ece_gate(math.nan, True, max_ece=0.1).passed


def _noise(n: int, swaps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Champion 80% right; the candidate trades `swaps` right answers for `swaps` others: same accuracy."""
    rng = np.random.default_rng(seed)
    champion = rng.random(n) < 0.8
    candidate = champion.copy()
    candidate[rng.choice(np.flatnonzero(champion), swaps, replace=False)] = False
    candidate[rng.choice(np.flatnonzero(~champion), swaps, replace=False)] = True
    return candidate, champion


def test_bootstrap_detects_a_real_regression() -> None:
    candidate, champion = _noise(1000, 0, seed=1)
    candidate[np.flatnonzero(champion)[:60]] = False  # 6 points worse
    result = gates.regression_gate(candidate, champion, margin=0.02, n_samples=2000, seed=0)
    assert not result.passed and result.figure < -0.02 and "-0.0600" in result.reason


def test_bootstrap_does_not_flag_noise_or_improvement() -> None:
    candidate, champion = _noise(1000, 30, seed=2)
    assert candidate.mean() == champion.mean()
    noise = gates.regression_gate(candidate, champion, margin=0.02, n_samples=2000, seed=0)
    assert noise.passed, noise.reason
    better = champion.copy()
    better[np.flatnonzero(~champion)[:50]] = True
    assert gates.regression_gate(better, champion, margin=0.0, n_samples=2000, seed=0).passed


def test_bootstrap_is_seeded_and_pairs_queries() -> None:
    candidate, champion = _noise(400, 20, seed=3)
    a = gates.paired_bootstrap(candidate, champion, 1000, seed=7)
    assert a == gates.paired_bootstrap(candidate, champion, 1000, seed=7)
    assert a.low <= a.mean <= a.high and a.n == 400
    # Pairing matters: identical vectors have a zero-width interval, however noisy each one is.
    same = gates.paired_bootstrap(champion, champion, 1000, seed=0)
    assert same.low == same.high == 0.0
    with pytest.raises(ValueError, match="equally long"):
        gates.paired_bootstrap([True], [True, False])


def test_regression_gate_without_a_champion_passes_and_says_so() -> None:
    result = gates.regression_gate([True, False], None, margin=0.02)
    assert result.passed and "no current champion" in result.reason


def test_outcomes_pair_by_id_and_question_or_not_at_all() -> None:
    records = pd.DataFrame({"id": ["a", "b", "c"], "score": [0.9, 0.1, 0.5], "slm_correct": [True, False, False],
                            "llm_correct": [True, True, False], "slm_cost": 1.0, "llm_cost": 20.0, "router_cost": 0.0,
                            "slm_latency_s": 0.1, "llm_latency_s": 1.0, "slm_latency_model_s": 0.1,
                            "llm_latency_model_s": 1.0, "router_latency_s": 0.0, "router_latency_model_s": 0.0})
    questions = pd.DataFrame({"id": ["a", "b", "c"], "question": ["qa", "qb", "qc"]})
    out = gates.per_query_outcomes(records, "cascade", 0.3, questions)
    assert list(out["correct"]) == [True, True, False] and list(out["escalated"]) == [False, True, False]
    assert list(out["cost"]) == [1.0, 21.0, 1.0]
    champion = out.assign(correct=[True, False, True]).iloc[::-1]
    cand, champ = gates.align_outcomes(out, champion)
    assert list(cand) == [True, True, False] and list(champ) == [True, False, True]
    assert gates.align_outcomes(out, champion.assign(question=["x", "qb", "qa"])) is None  # another test set
    assert gates.align_outcomes(out, champion.iloc[:2]) is None


def test_the_champion_pairs_only_through_its_stored_outcomes_or_is_not_comparable() -> None:
    candidate = pd.DataFrame({"id": ["a", "b", "c"], "question": ["qa", "qb", "qc"], "correct": [True, True, False]})
    stored = candidate.assign(correct=[True, False, True]).iloc[::-1]
    pairs = gates.pair_with_champion(candidate, stored, "m@champion (version 1)")
    assert list(pairs.candidate) == [True, True, False] and list(pairs.champion) == [True, False, True]

    other = gates.pair_with_champion(candidate, stored.assign(id=["x", "y", "z"]), "m@champion (version 1)")
    assert other.champion is None and other.candidate is None
    assert "not comparable" in other.unpaired and "share no test queries" in other.unpaired
    partial = gates.pair_with_champion(candidate, stored.iloc[:2], "m@champion (version 1)")
    assert "share only 2 of 3 test queries" in partial.unpaired
    missing = gates.pair_with_champion(candidate, None, "m@champion (version 1)")
    assert "m@champion (version 1) stored no per-query outcomes" in missing.unpaired

    result = gates.regression_gate(other.candidate, other.champion, margin=0.02, unpaired=other.unpaired)
    assert result.passed and result.figure is None and result.reason == other.unpaired
    empty = gates.pair_with_champion(candidate.iloc[:0], stored, "m@champion (version 1)")
    assert not gates.regression_gate(empty.candidate, empty.champion, margin=0.02).passed


def test_candidate_gates_run_every_gate_in_order() -> None:
    limits = GateLimits(min_saving=0.2, max_ece=0.1)
    load = GateResult(gates.BUNDLE_LOAD, True, 3.0, 3.0, "answered 3/3")
    row = {"strategy": "p_true_token", "accuracy": 0.82, "cost": 0.55, "ece": 0.05}
    results = gates.candidate_gates(validation={"questions": True}, summary=row, llm_accuracy=0.83,
                                    is_probability=True, pairs=gates.ChampionPairs(), load=load, delta=0.02, limits=limits)
    assert [r.name for r in results] == list(gates.GATES) and gates.all_passed(results)
    worse = gates.candidate_gates(validation={"questions": True}, summary={**row, "cost": 0.9, "ece": None},
                                  llm_accuracy=0.83, is_probability=True, pairs=gates.ChampionPairs(), load=load,
                                  delta=0.02, limits=limits)
    assert [r.name for r in gates.failed(worse)] == ["cost_saving", "ece"]


def test_gate_results_round_trip_through_registry_tags() -> None:
    result = gates.accuracy_gate(0.8, 0.83, 0.02)
    back = GateResult.from_tag(result.name, result.tag_value())
    assert back == GateResult("accuracy", False, 0.8, pytest.approx(0.81), result.reason)
    skipped = gates.ece_gate(None, False, 0.1)
    assert GateResult.from_tag("ece", skipped.tag_value()).figure is None
    assert gates.all_passed([skipped]) and not gates.all_passed([skipped, result]) and not gates.all_passed([])


@pytest.mark.parametrize("bad", [{"delta": 1.5}, {"max_ece": 0}, {"bootstrap_samples": 10},
                                 {"regression_margin": -0.1}, {"min_saving": 1.0}, {"load_timeout_s": 0}])
def test_gate_limits_reject_bad_values_by_name(bad: dict) -> None:
    with pytest.raises(ValueError):
        GateLimits(**bad)
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=f"gates.{key}"):
        from_dict(GateLimits, bad, source="profile.yaml", where="gates")


def test_a_profile_setting_the_removed_gates_delta_is_told_where_it_went() -> None:
    with pytest.raises(ConfigError, match=r"gates\.delta: was removed: set evaluation\.delta"):
        from_dict(GateLimits, {"delta": 0.02}, source="profile.yaml", where="gates")


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\ncat > /dev/null\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_load_gate_fails_with_the_stderr_tail(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, "echo 'BundleError: bundle artifact cascade.json is missing' >&2; exit 1")
    result = gates.load_gate("models:/x@champion", ["q?"], python=python)
    assert not result.passed and "exit 1" in result.reason and "cascade.json is missing" in result.reason


def test_load_gate_times_out(tmp_path: Path) -> None:
    result = gates.load_gate("models:/x@champion", ["q?"], timeout_s=0.5, python=_fake_python(tmp_path, "sleep 5"))
    assert not result.passed and "within 0.5 s" in result.reason


def answered(uri: str = "models:/x@champion", **out: object) -> dict:
    """What the fresh process reports for a bundle that answered two questions well (unless `out` says otherwise)."""
    return {"uri": uri, "rows": 2, "columns": ["answer", "model", "confidence", "score", "cost", "latency_s"],
            "models": ["slm", "llm"], "answers": ["4", "5"], "costs": [1.0, 21.0], "load_s": 1.0, "predict_s": 0.5,
            **out}


def test_load_gates_judge_each_bundle_of_one_process_on_its_own(tmp_path: Path) -> None:
    lines = [answered("models:/a"), {"uri": "models:/b", "error": "BundleError: router.pkl is missing"}]
    body = "\n".join(f"echo '{gates._MARKER}{json.dumps(line)}'" for line in lines) + "\nexit 3"
    results = gates.load_gates(["models:/a", "models:/b", "models:/c", "models:/d"], [["q?", "r?"]] * 3 + [[]],
                               python=_fake_python(tmp_path, body))
    a, b, c, d = results
    assert a.passed and "models:/a answered 2/2" in a.reason
    assert not b.passed and "router.pkl is missing" in b.reason
    assert not c.passed and "exit 3" in c.reason  # the process died before it reached c
    assert not d.passed and "no smoke questions" in d.reason


def test_load_gate_judges_what_the_fresh_process_answered(tmp_path: Path) -> None:
    def reply(**out: object) -> str:
        return f"echo '{gates._MARKER}{json.dumps(answered(**out))}'"

    good = gates.load_gate("models:/x@champion", ["a?", "b?"], python=_fake_python(tmp_path, reply()))
    assert good.passed and good.figure == 2 and "slm 1, llm 1" in good.reason
    bad = gates.load_gate("models:/x@champion", ["a?", "b?"],
                          python=_fake_python(tmp_path, reply(rows=1, models=["slm", "gpt"], answers=["4", None])))
    assert not bad.passed and "1 rows for 2 questions" in bad.reason and "gpt" in bad.reason


def test_same_data_compares_the_questions_hash_with_the_champion() -> None:
    from escalate.registry.publish import same_data

    key = "dvc.artifacts/tiny/questions.parquet"
    assert same_data({key: "abc"}, {key: "abc"}, "tiny")
    assert not same_data({key: "abc"}, {key: "abd"}, "tiny")
    assert not same_data(None, {key: "abc"}, "tiny")  # no champion yet: retrain
    assert not same_data({key: "abc"}, {}, "tiny")  # no hash recorded: retrain


def test_rank_candidates_puts_the_cheapest_qualifying_calib_point_first() -> None:
    from escalate.registry.publish import rank_candidates

    rows = [
        {"strategy": "entropy", "calib_cost": 0.8, "calib_accuracy": 0.86, "calib_llm_accuracy": 0.87},
        {"strategy": "mean_logprob", "calib_cost": 0.6, "calib_accuracy": 0.85, "calib_llm_accuracy": 0.87},
        {"strategy": "p_true_token", "calib_cost": 0.5, "calib_accuracy": 0.80, "calib_llm_accuracy": 0.87},
        {"strategy": "random", "calib_cost": None, "calib_accuracy": 0.87, "calib_llm_accuracy": 0.87},
        {"strategy": "oracle", "calib_cost": 0.1, "calib_accuracy": 0.87, "calib_llm_accuracy": 0.87},
    ]
    # p_true_token is cheapest but misses LLM - delta on calib; random found no threshold; oracle is no router.
    assert rank_candidates(rows, delta=0.02) == ["mean_logprob", "entropy", "p_true_token", "random"]


def test_champion_pick_is_the_best_ranked_candidate_that_passed_every_gate() -> None:
    from escalate.registry.aliases import Registration
    from escalate.registry.publish import Candidate, champion_pick

    def candidate(name: str, passed: bool) -> Candidate:
        return Candidate(name, Registration(name, passed, None, None, [] if passed else ["accuracy"]), "m", [])

    ranked = [candidate("embedding_lr", False), candidate("pik_probe", False), candidate("entropy", True),
              candidate("embedding_features", True)]
    assert champion_pick(ranked).strategy == "entropy"
    assert champion_pick(ranked[:2]) is None and champion_pick([]) is None
