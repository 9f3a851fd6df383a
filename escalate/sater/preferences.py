"""SATER's training tables from the samples table: preference pairs (stage I) and refusal targets (stage II).

Both read one model's K graded samples per question. Completions are kept exactly as the samples
hold them, including the leading space that follows "Answer:", so that a training pair tokenizes
like the text the model generated; the refusal target gets the same leading space.
Run by the sater stage (escalate.sater.stage); from Python: `build_preferences(samples, questions)`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from escalate.data.schema import REFUSAL
from escalate.prompts import format_prompt

REFUSAL_COMPLETION = " " + REFUSAL  # the refusal as a completion of a prompt ending in "Answer:"
PREFERENCE_COLUMNS = ["id", "prompt", "chosen", "rejected", "chosen_correct", "rejected_correct"]
REFUSAL_COLUMNS = ["id", "prompt", "completion", "p_correct"]


def _prompts(questions: pd.DataFrame) -> dict[str, str]:
    choices = questions["choices"] if "choices" in questions else [None] * len(questions)
    return {qid: format_prompt(q, c if isinstance(c, str) and c.strip() else None)
            for qid, q, c in zip(questions["id"], questions["question"], choices)}


def _per_question(samples: pd.DataFrame, questions: pd.DataFrame) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(id, prompt, that question's samples ordered by (length, sample_idx)) for questions with samples."""
    models = samples["model"].unique() if "model" in samples else []
    if len(models) > 1:
        raise ValueError(f"samples of one model expected, got {sorted(models)}")
    prompts = _prompts(questions)
    ordered = samples.sort_values(["n_output_tokens", "sample_idx"], kind="stable")
    for qid, group in ordered.groupby("id", sort=True):
        if qid in prompts:
            yield qid, prompts[qid], group


def build_preferences(samples: pd.DataFrame, questions: pd.DataFrame) -> pd.DataFrame:
    """The `preferences` table: per question, the shortest correct response against each worse one.

    chosen: the correct sample with the fewest output tokens (ties: the lowest sample_idx).
    rejected: each distinct incorrect response, and each correct one strictly longer than chosen. A
    correct response of the same length is no worse, so it is never rejected; a question with no
    correct sample has nothing to prefer and gives no pair. Repeated texts give one pair, so a
    question does not weigh more because the SLM repeats itself; blank responses are skipped.
    """
    rows = []
    for qid, prompt, group in _per_question(samples, questions):
        correct = group[group["correct"].astype(bool)]
        if correct.empty:
            continue
        best = correct.iloc[0]
        worse = group[~group["correct"].astype(bool) | (group["n_output_tokens"] > best["n_output_tokens"])]
        seen = {best["text"]}
        for _, r in worse.iterrows():
            if r["text"] in seen or not r["text"].strip():
                continue
            seen.add(r["text"])
            rows.append({"id": qid, "prompt": prompt, "chosen": best["text"], "rejected": r["text"],
                         "chosen_correct": True, "rejected_correct": bool(r["correct"])})
    return pd.DataFrame(rows, columns=PREFERENCE_COLUMNS)


def refusal_targets(samples: pd.DataFrame, questions: pd.DataFrame, tau: float) -> pd.DataFrame:
    """The `refusal_sft` table: per question, the refusal when sampled accuracy p̂ < tau, else the shortest correct one.

    p̂ is the share of the question's samples graded correct; tau must be in (0, 1] so that a
    question with no correct sample always refuses.
    """
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    rows = []
    for qid, prompt, group in _per_question(samples, questions):
        correct = group[group["correct"].astype(bool)]
        p_hat = len(correct) / len(group)
        completion = REFUSAL_COMPLETION if p_hat < tau else correct.iloc[0]["text"]
        rows.append({"id": qid, "prompt": prompt, "completion": completion, "p_correct": p_hat})
    return pd.DataFrame(rows, columns=REFUSAL_COLUMNS)
