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
from typing import ClassVar

import numpy as np
import pandas as pd

from escalate.data.schema import is_refusal
from escalate.evaluation.decision import escalates


@dataclass
class RouterInputs:
    """What a router may look at: the questions, and the SLM's samples for them (all sample_idx).

    A calib split may also carry the LLM's samples, so a learned router can learn what escalating
    gains (the LLM right where the SLM is wrong), not only whether the SLM is right; scoring never does.
    """

    questions: pd.DataFrame
    slm_samples: pd.DataFrame
    llm_samples: pd.DataFrame | None = None

    def greedy(self) -> pd.DataFrame:
        """The SLM's greedy sample per question, in question order."""
        g = self.slm_samples[self.slm_samples["sample_idx"] == 0].set_index("id")
        return g.loc[self.questions["id"]].reset_index()

    def llm_correct(self) -> np.ndarray | None:
        """The LLM's greedy correctness per question, in question order; None without LLM samples."""
        if self.llm_samples is None or self.llm_samples.empty:
            return None
        g = self.llm_samples[self.llm_samples["sample_idx"] == 0].set_index("id")["correct"]
        missing = self.questions.loc[~self.questions["id"].isin(g.index), "id"]
        if len(missing):
            raise ValueError(f"the LLM samples lack questions {list(missing[:5])}")
        return g.loc[self.questions["id"]].to_numpy(bool)


class Router(ABC):
    """Scores queries; `mode` says whether the SLM attempt is paid before deciding (cascade) or not."""

    name: ClassVar[str] = "base"
    mode: ClassVar[str] = "cascade"  # "cascade" | "pregen"
    is_probability: ClassVar[bool] = False  # is the score meant as P(SLM correct)?
    uses_all_samples: ClassVar[bool] = False  # does the strategy pay for (and vote over) all K samples?
    # Alternatives per SLM token the score reads, all the gateway asks the server for: 1 (the chosen token's
    # log-probability), k (a top-k entropy), 0 (none); None: all the server gives (routers that do not say).
    top_logprobs_needed: ClassVar[int | None] = None

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

    def slm_answers(self, inputs: RouterInputs) -> pd.DataFrame:
        """Per question: the answer this strategy's SLM side gives, whether it is correct, and whether it
        is the refusal (which escalates whatever the score)."""
        g = inputs.greedy()
        return pd.DataFrame({"id": g["id"], "answer": g["parsed_answer"], "correct": g["correct"].astype(bool),
                             "refused": refused(g).to_numpy(bool)})


def refused(samples: pd.DataFrame) -> pd.Series:
    """Per sample row, whether its text is the refusal; a table without `text` holds no refusals."""
    if "text" not in samples:
        return pd.Series(False, index=samples.index)
    return samples["text"].map(is_refusal).astype(bool)


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

    @abstractmethod
    def vote(self, samples: pd.DataFrame) -> tuple[object, float]:
        """One question's samples (in sample_idx order) -> (voted answer or None, winning share)."""

    def _votes(self, inputs: RouterInputs) -> pd.DataFrame:
        rows = []
        for qid, g in inputs.slm_samples.sort_values("sample_idx").groupby("id", sort=False):
            answer, share = self.vote(g)
            correct = "correct" in g and bool(
                answer is not None and (g["correct"].astype(bool) & (g["parsed_answer"] == answer)).any()
            )
            # Only a unanimous refusal refuses: one answering sample gives the vote an answer to keep.
            rows.append({"id": qid, "answer": answer, "share": share, "correct": correct,
                         "refused": bool(refused(g).all())})
        return pd.DataFrame(rows).set_index("id").loc[inputs.questions["id"]].reset_index()

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return self._votes(inputs)["share"].to_numpy(dtype=float)

    def slm_answers(self, inputs: RouterInputs) -> pd.DataFrame:
        return self._votes(inputs)[["id", "answer", "correct", "refused"]]
