"""`escalate calibrate`: the shifted sets shift what they claim, leave-one-shift-out holds, transfer is scored right."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from escalate.calibration import construct, shifts, transfer, verbalized
from escalate.calibration.construct import CalibrateSettings, build_sets
from escalate.cli import main
from escalate.config import ArithConfig, ConfigError, load_profile
from escalate.data import arith
from escalate.evaluation.decision import escalates
from escalate.evaluation.thresholds import Outcomes
from escalate.models.backends import Generation, GenerationBackend, SamplingParams
from escalate.prompts import format_prompt
from escalate.routers.base import RouterInputs

ROOT = Path(__file__).resolve().parents[1]
CFG = ArithConfig(n_train=10, n_calib=10, n_test=10, min_steps=1, max_steps=4, max_operand=9)
HOW = shifts.ShiftConfig()
N, SEED = 60, 3
BASE_PHRASES = ("Then gets", "Then gives away", "Then the pile grows", "How many")


def numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def base_items() -> list[shifts.Item]:
    return shifts.base(N, SEED, CFG, HOW)


def test_names_shift_only_renames():
    for shifted, base in zip(shifts.names(N, SEED, CFG, HOW), base_items()):
        name = shifted.question.split(" ")[0]
        assert name in shifts.NEW_NAMES and name not in arith.NAMES
        assert shifted.question.replace(name, base.question.split(" ")[0]) == base.question
        assert shifted.answer == base.answer


def test_phrasing_shift_rewords_every_sentence_and_keeps_the_answer():
    for shifted, base in zip(shifts.phrasing(N, SEED, CFG, HOW), base_items()):
        assert not any(phrase in shifted.question for phrase in BASE_PHRASES)
        assert not any(name in shifted.question.split() for name in arith.NAMES)
        assert numbers(shifted.question) == numbers(base.question)
        assert (shifted.answer, shifted.difficulty) == (base.answer, base.difficulty)


def test_operand_shift_keeps_the_text_and_grows_the_operands():
    items = shifts.operands(N, SEED, CFG, HOW)
    largest = max(max(numbers(i.question)) for i in items)
    assert CFG.max_operand < largest <= HOW.max_operand(CFG) == round(1.5 * CFG.max_operand)
    template = re.compile(r"^\w+ has \d+ \w+\.( Then (gets \d+ more|gives away \d+|the pile grows \d+ times)\.)+ "
                          r"How many \w+ does \w+ have now\?$")
    assert all(template.match(i.question) for i in items)
    assert {i.difficulty for i in items} == set(range(CFG.min_steps, CFG.max_steps + 1))


def test_long_shift_has_more_steps_than_the_profile():
    items = shifts.long_chains(N, SEED, CFG, HOW)
    assert {i.difficulty for i in items} == set(range(CFG.max_steps + 1, CFG.max_steps + HOW.extra_steps + 1))
    assert all(i.question.count(" Then ") == i.difficulty for i in items)


def test_distractor_shift_only_inserts_irrelevant_sentences():
    patterns = [re.compile("^" + re.escape(t).replace(r"\{other\}", r"\w+").replace(r"\{k\}", r"\d+")
                           .replace(r"\{other_item\}", r"\w+").replace(r"\{weather\}", r"\w+") + "$")
                for t in shifts.DISTRACTORS]
    for shifted, base in zip(shifts.distractors(N, SEED, CFG, HOW), base_items()):
        parts = shifts.sentences(shifted.question)
        extra = [i for i, s in enumerate(parts) if i > 0 and any(p.match(s) for p in patterns)]  # never first
        assert 1 <= len(extra) <= HOW.max_distractors
        assert " ".join(s for i, s in enumerate(parts) if i not in extra) == base.question
        assert shifted.answer == base.answer


@pytest.mark.parametrize("shift", list(shifts.BUILDERS))
def test_shifts_are_deterministic_by_seed(shift):
    one = shifts.questions_table(shift, 20, SEED, CFG, "test", "t")
    assert one.equals(shifts.questions_table(shift, 20, SEED, CFG, "test", "t"))
    assert not one["question"].equals(shifts.questions_table(shift, 20, SEED + 1, CFG, "test", "t")["question"])
    assert one["question"].is_unique and (one["task"] == shifts.shift_task(shift)).all()


def test_sets_are_validated_and_constructed_questions_are_not_targets():
    profile = load_profile("tiny", ROOT)
    sets = build_sets(profile, CalibrateSettings(n=40))
    targets = {k for k in sets if k.startswith("target/")}
    assert targets == {f"target/{s}" for s in shifts.SHIFTS}
    parts = [k for k in sets if k.startswith("constructed/")]
    assert len(parts) == len(shifts.SHIFTS) + 1 and len({len(sets[k]) for k in parts}) == 1
    constructed = set().union(*(set(sets[k]["question"]) for k in parts))
    target_qs = set().union(*(set(sets[k]["question"]) for k in targets))
    # The base part and targets share nothing; a rare coincidence of two generated problems would be one question.
    assert len(constructed & target_qs) <= 1


def outcomes(scores: np.ndarray, slm_correct: np.ndarray) -> Outcomes:
    n = len(scores)
    return Outcomes(scores=scores, slm_correct=slm_correct, llm_correct=np.ones(n, bool), keep_cost=np.full(n, 0.05),
                    escalate_cost=np.full(n, 1.05), llm_cost=np.ones(n), refused=np.zeros(n, bool))


def synthetic() -> tuple[Outcomes, Outcomes, Outcomes]:
    """A target whose SLM is right exactly where its score is >= 0.5, a source with its very distribution, and a
    source whose scores run 0.3 lower for the same answers (an under-confident SLM there)."""
    scores = np.linspace(0.0, 1.0, 200)
    correct = scores >= 0.5
    order = np.random.default_rng(0).permutation(200)
    return outcomes(scores, correct), outcomes(scores[order], correct[order]), outcomes(scores - 0.3, correct)


def test_a_source_like_the_target_transfers_and_a_shifted_one_does_not():
    target, same, shifted = synthetic()
    rows = transfer.transfer_rows("s", {"same": same, "off": shifted}, same, {"t": target, "same": same,
                                                                            "off": shifted}, 0.02, 101, 0)
    on_t = {r["source"]: r for r in rows if r["target"] == "t"}
    assert on_t["same"]["met"] and on_t["calib"]["met"]
    # The cheapest point within δ: it keeps a δ's worth of wrong answers below 0.5, as on its source.
    assert on_t["same"]["accuracy"] == pytest.approx(0.98) and on_t["same"]["call_rate"] == pytest.approx(0.48)
    assert not on_t["off"]["met"]
    assert on_t["off"]["accuracy"] < 0.9 and on_t["off"]["saving"] > on_t["same"]["saving"]
    rates = {r["kind"]: r for r in transfer.success_rates(rows)}
    assert list(rates) == list(transfer.KINDS)
    single = [r for r in rows if r["kind"] == "single"]
    assert rates["single"]["success_rate"] == pytest.approx(np.mean([r["met"] for r in single]))


def test_a_target_the_slm_alone_meets_is_not_informative():
    target, same, _ = synthetic()
    easy = outcomes(np.linspace(0.0, 1.0, 200), np.ones(200, bool))
    rows = transfer.transfer_rows("s", {"same": same, "easy": easy}, same, {"t": target, "easy": easy}, 0.02, 101, 0)
    assert {r["target"]: r["trivial"] for r in rows} == {"t": False, "easy": True}
    single = {r["kind"]: r for r in transfer.success_rates(rows)}["single"]
    assert (single["cases"], single["informative_cases"]) == (2, 1)
    # "easy" as a source keeps everything, which fails on "t"; on "easy" itself anything meets the target.
    assert single["success_rate"] == 0.5 and single["informative_success_rate"] == 0.0


def test_leave_one_shift_out_never_fits_on_the_target():
    target, same, shifted = synthetic()
    sets = {"a": target, "b": same, "c": shifted}
    rows = transfer.transfer_rows("s", {"base": same, **sets}, same, sets, 0.02, 101, 0)
    assert {r["target"] for r in rows} == set(sets)
    for r in rows:
        assert r["target"] not in r["fitted_on"]
    constructed = [r for r in rows if r["kind"] == "constructed"]
    assert [sorted(r["fitted_on"]) for r in constructed] == [["b", "base", "c"], ["a", "base", "c"],
                                                            ["a", "b", "base"]]
    with pytest.raises(ValueError, match="add another shift"):
        transfer.sources_for("a", {"a": target}, same, sets, 0)


@pytest.mark.parametrize(("kwargs", "fix"), [({"n": 1}, "--n must be >= 2"), ({"shifts": ("bogus",)}, "choose from"),
                                            ({"shifts": ("long",)}, "at least two"),
                                            ({"strategies": ("embedding_lr",)}, "p_true_token")])
def test_bad_settings_name_the_flag(kwargs, fix):
    with pytest.raises(ConfigError, match=fix):
        CalibrateSettings(**kwargs)


@pytest.mark.parametrize(("kwargs", "flag"), [({"operand_factor": 1.0}, "--operand-factor"),
                                             ({"extra_steps": 0}, "--extra-steps"),
                                             ({"max_distractors": 0}, "--max-distractors")])
def test_shift_settings_that_shift_nothing_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        shifts.ShiftConfig(**kwargs)


def test_cli_errors_name_the_fix(tmp_path, capsys):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    assert main(["calibrate", "--profile", "smoke", "--root", str(tmp_path), "--shifts", "names,bogus"]) == 2
    assert "choose from names" in capsys.readouterr().err
    assert main(["calibrate", "--profile", "smoke", "--root", str(tmp_path)]) == 2
    assert "escalate zoo build --profile smoke" in capsys.readouterr().err
    assert main(["calibrate", "--profile", "smoke", "--root", str(tmp_path), "--operand-factor", "0.5"]) == 2
    assert "--operand-factor must be > 1" in capsys.readouterr().err


def test_help_says_what_it_measures(capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    out = capsys.readouterr().out
    assert "leave" in out.lower() or "without the target's shift" in out
    assert "--n" in out and "--shifts" in out


@pytest.mark.slow
def test_calibrate_smoke_end_to_end(tmp_path):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def escalate(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "escalate.cli", *args, "--profile", "smoke"], cwd=tmp_path,
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    escalate("data", "build")
    escalate("zoo", "build")
    printed = escalate("calibrate", "--n", "10", "--shifts", "names,operands,distractors")
    out = tmp_path / "artifacts" / "smoke" / "calibration"
    metrics = json.loads((out / "metrics.json").read_text())
    assert "informative_success_rate" in printed and "report: artifacts/smoke/calibration/report.md" in printed
    assert [r["kind"] for r in metrics["success_rates"]] == list(transfer.KINDS)
    assert {(r["strategy"], r["target"]) for r in metrics["benchmark"]} == {
        (s, t) for s in CalibrateSettings.strategies for t in ("names", "operands", "distractors")}
    assert all(r["target"] not in r["fitted_on"] for r in metrics["transfer"])
    assert metrics["context"]["calib_n"] == 24
    statements = {r["set"]: r for r in metrics["verbalized_statements"]}
    assert set(statements) >= {"calib", "target/names"} and statements["calib"]["n"] == 24
    assert "Success rate per calibration source" in (out / "report.md").read_text()


def test_calib_split_reuses_the_samples_stage_and_samples_what_it_lacks(tmp_path, monkeypatch):
    profile = load_profile("smoke", ROOT)
    questions = pd.DataFrame({"id": ["c0", "c1", "t0"], "split": ["calib", "calib", "test"]})
    stored = pd.DataFrame({"id": ["c0", "c1", "t0"], "model": ["slm", "slm", "slm"]})
    fresh = pd.DataFrame({"id": ["c0", "c1"], "model": ["new", "new"]})
    monkeypatch.setattr(construct, "load_questions", lambda p, root: questions)
    monkeypatch.setattr(construct, "load_samples", lambda p, root: stored)
    monkeypatch.setattr(construct, "sample_sets", lambda p, q, root, seed: fresh)
    # No samples stage output: the calib split is sampled.
    assert construct.calib_split(profile, tmp_path, 0)[1].equals(fresh)
    samples = construct.paths(profile, tmp_path)["samples"]
    samples.parent.mkdir(parents=True)
    samples.touch()
    _, reused = construct.calib_split(profile, tmp_path, 0)
    assert list(reused["id"]) == ["c0", "c1"] and set(reused["model"]) == {"slm"}
    # A samples table missing a calib question is not reused.
    monkeypatch.setattr(construct, "load_samples", lambda p, root: stored.iloc[1:])
    assert construct.calib_split(profile, tmp_path, 0)[1].equals(fresh)


STATED = {"high": "The answer is 7. Confidence: 0.90", "low": "The answer is 7. Confidence: 0.20",
          "words": "The answer is 7. Confidence: Neo has 6 stamps", "percent": "The answer is 7. Confidence: 90",
          "none": "The answer is 7.", "trailing": "The answer is 7. Confidence: 0.9 because"}


def test_stated_confidence_orders_statements_and_reads_garbage_as_nan():
    read = {k: verbalized.stated_confidence(v) for k, v in STATED.items()}
    assert read["high"] == pytest.approx(0.9) and read["low"] == pytest.approx(0.2) and read["high"] > read["low"]
    # COREA's rule: a probability in [0, 1] ending the response; a percentage or words are no statement.
    assert all(np.isnan(read[k]) for k in ("words", "percent", "none", "trailing"))
    assert np.isnan(verbalized.stated_confidence(None))


def statement_inputs(texts: list[str]) -> RouterInputs:
    ids = [f"q{i}" for i in range(len(texts))]
    slm = pd.DataFrame({"id": ids * 2, "sample_idx": [0] * len(ids) + [1] * len(ids), "model": "slm",
                        "correct": True, verbalized.STATEMENT: texts + [None] * len(ids),
                        verbalized.STATEMENT_TOKENS: [5.0] * len(ids) + [None] * len(ids)})
    return RouterInputs(pd.DataFrame({"id": ids[::-1]}), slm)  # question order differs from the samples'


def test_verbalized_router_keeps_a_stated_90_over_a_stated_20_and_escalates_garbage():
    router = verbalized.VerbalizedConfidenceRouter()
    inputs = statement_inputs([STATED["high"], STATED["low"], STATED["words"]])
    scores = router.score(inputs)  # questions q2, q1, q0
    assert scores.tolist() == pytest.approx([0.0, 0.2, 0.9])
    assert escalates(scores, 0.5).tolist() == [True, True, False]
    assert escalates(scores, 0.1).tolist() == [True, False, False]  # garbage escalates where a stated 0.2 is kept
    assert router.slm_reads(inputs).tolist() == [5.0, 5.0, 5.0]
    assert router.is_probability and router.mode == "cascade"


def test_verbalized_router_without_statements_names_the_fix():
    inputs = statement_inputs([STATED["high"]])
    inputs.slm_samples = inputs.slm_samples.drop(columns=[verbalized.STATEMENT])
    with pytest.raises(ValueError, match="state_confidences"):
        verbalized.VerbalizedConfidenceRouter().score(inputs)


class ScriptedBackend(GenerationBackend):
    """States a fixed continuation per prompt and records the prompts and params it was given."""

    def __init__(self, continuations: list[str]) -> None:
        self.continuations, self.prompts, self.params = continuations, [], None

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        self.prompts, self.params = prompts, params
        return [[Generation(text, [1, 2], [0.0, 0.0], n_prompt_tokens=30)] for text in self.continuations]


def test_state_confidences_prompts_after_the_greedy_answer_and_the_router_reads_it():
    questions = pd.DataFrame({"id": ["a", "b"], "question": ["Ann has 2 cups. How many?", "Bo has 3. How many?"],
                              "choices": [None, None]})
    greedy = pd.DataFrame({"id": ["b", "a"], "text": [" 3. The answer is 3.", " The answer is 2. "],
                           "n_prompt_tokens": [10, 10], "n_output_tokens": [12, 25]})
    backend = ScriptedBackend([" 0.85", " Bo has 3"])
    statements = verbalized.state_confidences(backend, questions, greedy)
    assert backend.prompts[0] == format_prompt("Bo has 3. How many?") + " 3. The answer is 3. Confidence:"
    assert backend.params.temperature == 0 and backend.params.max_new_tokens == verbalized.MAX_NEW_TOKENS
    # added tokens: the prompt beyond the answer's (30 - 22 = 8; never below 0) plus the 2 generated
    assert statements[verbalized.STATEMENT_TOKENS].tolist() == [10, 2]
    samples = pd.DataFrame({"id": ["a", "b", "a"], "model": "slm", "sample_idx": [0, 0, 1], "correct": True})
    merged = verbalized.with_statements(samples, statements)
    assert merged[verbalized.STATEMENT].isna().tolist() == [False, False, True]
    scores = verbalized.VerbalizedConfidenceRouter().score(RouterInputs(questions[["id"]], merged))
    assert scores.tolist() == pytest.approx([0.0, 0.85])
    counts = verbalized.statement_counts(merged.loc[merged["sample_idx"] == 0, verbalized.STATEMENT])
    assert (counts["ok"], counts["malformed"], counts["distinct"]) == (1, 1, 1)


def test_a_flat_score_meets_every_target_by_escalating_all_and_is_left_out_of_the_rates():
    target, same, _ = synthetic()
    flat = outcomes(np.zeros(200), target.slm_correct)
    assert transfer.flat(flat) and not transfer.flat(same)
    rows = transfer.transfer_rows("ranks", {"base": same}, same, {"t": target, "same": same}, 0.02, 101, 0)
    flat_rows = transfer.transfer_rows("flat", {"base": flat}, flat, {"t": target, "same": flat}, 0.02, 101, 0)
    on_t = [r for r in flat_rows if r["target"] == "t"]
    assert all(r["met"] and r["call_rate"] == 1.0 and r["saving"] < 0 for r in on_t)
    kept = transfer.ranking_rows(rows + flat_rows, {"flat"})
    assert kept == rows
    assert transfer.success_rates(kept) == transfer.success_rates(rows)
