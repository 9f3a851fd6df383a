"""The base SLM's prompted verbalized confidence: a row of the uncertainty benchmark (issue 17 item 4).

After its greedy answer the untrained SLM is handed COREA's confidence tag (`... Confidence:`) and continues
greedily; COREA's parser (escalate.corea.confidence) reads the statement, so the base SLM's stated
confidence and the COREA-trained one's obey one rule: a number in [0, 1] ending the response. The
statement is generated here, for `escalate calibrate`, rather than in the samples stage: the stage's
outputs are DVC-tracked and this row needs no change to them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from escalate.corea.confidence import TAG, confidence_counts, distinct_confidences, parse_confidence
from escalate.models.backends import GenerationBackend, SamplingParams
from escalate.prompts import format_prompt
from escalate.routers.base import Router, RouterInputs

VERBALIZED = "verbalized_confidence"
STATEMENT, STATEMENT_TOKENS = "stated", "stated_tokens"  # columns added to the SLM's greedy sample rows
MAX_NEW_TOKENS = 8  # "0.85." is at most a few tokens; more would only let a rambling continuation go on


def stated_confidence(text: str | None) -> float:
    """The probability a statement gives (COREA's parser), NaN when it states none readable.

    NaN, not COREA's 0: a statement that says nothing is not a stated confidence of 0, and the
    benchmark counts the two apart; the router still escalates it (VerbalizedConfidenceRouter.score).
    """
    stated = parse_confidence(text)
    return stated.value if stated.status == "ok" else float("nan")


def statement_prompt(prompt: str, response: str) -> str:
    """The SLM's own prompt and greedy response, then COREA's tag for it to continue."""
    return f"{prompt}{response.rstrip()} {TAG}"


def state_confidences(backend: GenerationBackend, questions: pd.DataFrame, greedy: pd.DataFrame) -> pd.DataFrame:
    """Per greedy SLM row: the statement (response, tag and the SLM's continuation) and the tokens it added.

    `greedy` holds the SLM's sample-0 rows (id, text, n_prompt_tokens, n_output_tokens); the added tokens
    are the tag's and the continuation's, what a cascade that kept the answer's cache would pay for.
    """
    q = questions.set_index("id").loc[greedy["id"]]
    prompts = [statement_prompt(format_prompt(text, choices), response)
               for text, choices, response in zip(q["question"], q["choices"], greedy["text"].fillna(""))]
    gens = [g[0] for g in backend.generate(prompts, SamplingParams(max_new_tokens=MAX_NEW_TOKENS))]
    before = greedy["n_prompt_tokens"].to_numpy(int) + greedy["n_output_tokens"].to_numpy(int)
    added = [max(gen.n_prompt_tokens - b, 0) + gen.n_output_tokens for gen, b in zip(gens, before)]
    return pd.DataFrame({"id": greedy["id"].to_numpy(), "sample_idx": 0, "model": "slm",
                         STATEMENT: [f"{response.rstrip()} {TAG}{gen.text}"
                                     for response, gen in zip(greedy["text"].fillna(""), gens)],
                         STATEMENT_TOKENS: added})


def with_statements(samples: pd.DataFrame, statements: pd.DataFrame) -> pd.DataFrame:
    """The samples table with each SLM greedy row's statement; other rows get none."""
    keys = ["id", "model", "sample_idx"]
    return samples.drop(columns=[STATEMENT, STATEMENT_TOKENS], errors="ignore").merge(statements, on=keys, how="left")


def statement_counts(texts: Iterable[str | None]) -> dict[str, float]:
    """COREA's counts (readable `ok`, `missing`, `malformed`, the unreadable rate) and how many distinct values
    the readable statements take: a score of one or two values cannot rank."""
    texts = list(texts)
    return {**confidence_counts(texts), "distinct": distinct_confidences(texts)}


class VerbalizedConfidenceRouter(Router):
    """Score = the confidence the base SLM states after its greedy answer; a statement it cannot read scores 0.

    The records refuse NaN scores, so an unreadable statement is scored 0, below every readable one but
    a stated 0: it escalates at every threshold above the lowest, as decision.decide escalates a NaN.
    """

    name = VERBALIZED
    mode = "cascade"
    is_probability = True  # asked for P(correct), whether or not the base SLM can say it
    top_logprobs_needed = 0

    def score(self, inputs: RouterInputs) -> np.ndarray:
        g = self._greedy(inputs)
        return np.nan_to_num(np.array([stated_confidence(t) for t in g[STATEMENT]], dtype=float), nan=0.0)

    def slm_reads(self, inputs: RouterInputs) -> np.ndarray:
        """The tag and the statement: SLM tokens paid on every query, priced as SLM input."""
        return self._greedy(inputs)[STATEMENT_TOKENS].to_numpy(float)

    @staticmethod
    def _greedy(inputs: RouterInputs) -> pd.DataFrame:
        g = inputs.greedy()
        if STATEMENT not in g or g[STATEMENT].isna().any():
            raise ValueError(f"{VERBALIZED} needs the SLM's stated confidences on every greedy sample (column "
                             f"{STATEMENT!r}); add them with escalate.calibration.verbalized.state_confidences")
        return g
