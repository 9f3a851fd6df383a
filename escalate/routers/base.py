"""The router interface: a query (and, for a cascade, the SLM's output) becomes a score.

Higher scores mean "the SLM will be right"; the base applies the one escalation rule to them
(evaluation/decision.py: score < threshold). A router also says which SLM answer its strategy gives
(the greedy one, or a vote over all samples), whether that answer is a refusal (SATER's SLM refuses;
a refusal the threshold kept still escalates: nobody is served "I don't know") and which samples it
paid for, so records and costs follow from it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from escalate.data.schema import is_refusal
from escalate.evaluation.decision import escalates

# The columns of the online tables (the cascade's question rows and ungraded sample rows), for routers
# that read RowInputs as DataFrames.
QUESTION_COLUMNS = ("id", "question", "choices", "split")
SAMPLE_COLUMNS = ("id", "model", "split", "sample_idx", "text", "parsed_answer", "correct", "n_prompt_tokens",
                  "n_output_tokens", "token_logprobs", "answer_logprob", "mean_entropy", "latency_s")
ANSWER_COLUMNS = ("id", "answer", "correct", "refused")
REQUIRED = object()  # greedy_column's default: a missing column is a KeyError


@dataclass
class RouterInputs:
    """What a router may look at: the questions, and the SLM's samples for them (all sample_idx).

    A calib split may also carry the LLM's samples, so a learned router can learn what escalating
    gains (the LLM right where the SLM is wrong), not only whether the SLM is right; scoring never does.
    Routers read through the accessors below where they can, so that one request's inputs (RowInputs,
    the gateway's path) are scored on plain rows without building a DataFrame.
    """

    questions: pd.DataFrame
    slm_samples: pd.DataFrame
    llm_samples: pd.DataFrame | None = None

    @property
    def n_questions(self) -> int:
        return len(self.questions)

    def question_texts(self) -> list[str]:
        return self.questions["question"].astype(str).tolist()

    def greedy(self) -> pd.DataFrame:
        """The SLM's greedy sample per question, in question order."""
        g = self.slm_samples[self.slm_samples["sample_idx"] == 0].set_index("id")
        return g.loc[self.questions["id"]].reset_index()

    def greedy_column(self, name: str, default: Any = REQUIRED) -> list:
        """One column of the greedy samples, in question order; `default` for each where the samples lack it."""
        if default is not REQUIRED and name not in self.slm_samples:
            return [default] * self.n_questions
        return self.greedy()[name].tolist()

    def samples_by_question(self) -> list[tuple[str, list[dict]]]:
        """Each question's id and its sample rows in sample_idx order, in question order."""
        grouped = {qid: g.to_dict("records") for qid, g in
                   self.slm_samples.sort_values("sample_idx").groupby("id", sort=False)}
        return [(qid, grouped[qid]) for qid in self.questions["id"]]

    def llm_correct(self) -> np.ndarray | None:
        """The LLM's greedy correctness per question, in question order; None without LLM samples."""
        if self.llm_samples is None or self.llm_samples.empty:
            return None
        g = self.llm_samples[self.llm_samples["sample_idx"] == 0].set_index("id")["correct"]
        missing = self.questions.loc[~self.questions["id"].isin(g.index), "id"]
        if len(missing):
            raise ValueError(f"the LLM samples lack questions {list(missing[:5])}")
        return g.loc[self.questions["id"]].to_numpy(bool)


class RowInputs(RouterInputs):
    """One request's inputs as plain rows (the online cascade): the accessors read the rows, and the
    DataFrames are built only for a router that reads them directly (a model router's own features)."""

    def __init__(self, questions: list[dict], slm_rows: list[dict]) -> None:
        self.rows, self.sample_rows, self.llm_samples = questions, slm_rows, None

    @cached_property
    def questions(self) -> pd.DataFrame:  # type: ignore[override]  # built on first direct read
        return pd.DataFrame(self.rows, columns=list(QUESTION_COLUMNS))

    @cached_property
    def slm_samples(self) -> pd.DataFrame:  # type: ignore[override]
        return pd.DataFrame(self.sample_rows, columns=list(SAMPLE_COLUMNS))

    @property
    def n_questions(self) -> int:
        return len(self.rows)

    def question_texts(self) -> list[str]:
        return [str(q["question"]) for q in self.rows]

    @cached_property
    def _greedy_rows(self) -> list[dict]:
        """The greedy sample row per question, in question order (read by every greedy_column call)."""
        greedy = {r["id"]: r for r in self.sample_rows if r["sample_idx"] == 0}
        return [greedy[q["id"]] for q in self.rows]

    def greedy_column(self, name: str, default: Any = REQUIRED) -> list:
        rows = self._greedy_rows
        return [row[name] for row in rows] if default is REQUIRED else [row.get(name, default) for row in rows]

    def samples_by_question(self) -> list[tuple[str, list[dict]]]:
        grouped: dict[str, list[dict]] = {}
        for row in sorted(self.sample_rows, key=lambda r: r["sample_idx"]):
            grouped.setdefault(row["id"], []).append(row)
        return [(q["id"], grouped[q["id"]]) for q in self.rows]


class Router(ABC):
    """Scores queries; `mode` says whether the SLM attempt is paid before deciding (cascade) or not."""

    name: ClassVar[str] = "base"
    mode: ClassVar[str] = "cascade"  # "cascade" | "pregen"
    is_probability: ClassVar[bool] = False  # is the score meant as P(SLM correct)?
    uses_all_samples: ClassVar[bool] = False  # does the strategy pay for (and vote over) all K samples?
    # Alternatives per SLM token the score reads, all the gateway asks the server for: 1 (the chosen token's
    # log-probability), k (a top-k entropy), 0 (none); None: all the server gives (routers that do not say).
    top_logprobs_needed: ClassVar[int | None] = None
    # Does scoring take well under a millisecond (arithmetic over the SLM's sample rows)? The gateway scores
    # such routers on its event loop; the rest (a model's inference: embeddings, probes) on a worker thread.
    cheap_to_score: ClassVar[bool] = False

    def fit(self, calib: RouterInputs) -> Router:
        """Learn from the calibration split; routers without parameters need not override."""
        return self

    @abstractmethod
    def score(self, inputs: RouterInputs) -> np.ndarray:
        """One score per question, in `inputs.questions` order; higher = keep with the SLM."""

    def escalate(self, inputs: RouterInputs, threshold: float) -> np.ndarray:
        return self.decide(self.score(inputs), threshold)

    @staticmethod
    def decide(scores: np.ndarray, threshold: float, refused: np.ndarray | None = None) -> np.ndarray:
        """The one escalation rule (decision.escalates), for callers that already hold the scores; `refused`
        once the SLM's answers are known (slm_answers), None before."""
        return escalates(scores, threshold, refused)

    def slm_reads(self, inputs: RouterInputs) -> np.ndarray | None:
        """Per question, how many tokens the SLM reads to score it (a prefill, priced as SLM input tokens and
        timed as SLM time), for routers that run the SLM before deciding; None for the rest, which cost nothing."""
        return None

    def bind_slm(self, checkpoint: str) -> None:  # noqa: B027 (an optional hook, a no-op for most routers)
        """Read the SLM from `checkpoint` from now on; routers that read the SLM's weights override this,
        so a bundle re-points them at its own copy of the SLM wherever it is loaded."""

    def slm_answer_rows(self, inputs: RouterInputs) -> list[dict]:
        """Per question (ANSWER_COLUMNS): the answer this strategy's SLM side gives, whether it is correct,
        and whether it is the refusal (which escalates whatever the score)."""
        columns = (inputs.greedy_column("id"), inputs.greedy_column("parsed_answer"),
                   inputs.greedy_column("correct"), inputs.greedy_column("text", None))
        return [{"id": qid, "answer": answer, "correct": bool(correct), "refused": is_refusal(text)}
                for qid, answer, correct, text in zip(*columns)]

    def slm_answers(self, inputs: RouterInputs) -> pd.DataFrame:
        """slm_answer_rows as a table (offline records)."""
        return pd.DataFrame(self.slm_answer_rows(inputs), columns=list(ANSWER_COLUMNS))


def refused_row(sample: dict) -> bool:
    """Whether a sample row's text is the refusal (schema.is_refusal); a row without `text` is no refusal."""
    return "text" in sample and is_refusal(sample["text"])


def majority(answers: list) -> tuple[object, float]:
    """The most frequent non-empty answer and its share of all samples (refusals and blanks count against)."""
    votes = Counter(a for a in answers if a is not None and a == a)
    if not votes:
        return None, 0.0
    answer, count = votes.most_common(1)[0]
    return answer, count / len(answers)


class VotingRouter(Router):
    """A vote over all K samples answers; the winning share is the score (subclasses say how to vote).

    The strategy pays for every sample and answers with the voted answer, which is correct exactly
    when it equals the answer of a sample graded correct.
    """

    uses_all_samples: ClassVar[bool] = True
    cheap_to_score: ClassVar[bool] = True

    @abstractmethod
    def vote(self, samples: list[dict]) -> tuple[object, float]:
        """One question's sample rows (in sample_idx order) -> (voted answer or None, winning share)."""

    def _votes(self, inputs: RouterInputs) -> list[dict]:
        rows = []
        for qid, samples in inputs.samples_by_question():
            answer, share = self.vote(samples)
            correct = all("correct" in s for s in samples) and answer is not None and any(
                bool(s["correct"]) and s["parsed_answer"] == answer for s in samples)
            # Only a unanimous refusal refuses: one answering sample gives the vote an answer to keep.
            rows.append({"id": qid, "answer": answer, "share": share, "correct": bool(correct),
                         "refused": all(refused_row(s) for s in samples)})
        return rows

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return np.asarray([row["share"] for row in self._votes(inputs)], dtype=float)

    def slm_answer_rows(self, inputs: RouterInputs) -> list[dict]:
        return [{c: row[c] for c in ANSWER_COLUMNS} for row in self._votes(inputs)]
