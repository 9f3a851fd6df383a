"""CITER's token labels: at each token of a reference solution, should the SLM or the LLM write it?

Both models are teacher-forced on the reference solutions (prompt + " " + solution + eos, exactly as
the zoo was pretrained), which gives, per reference token, the SLM's last hidden state (the router's
input) and each model's top token. A position is labelled by the paper's shortcut where it can be,
and by rollouts where it cannot:

- `slm_match`: the SLM's top token is the reference token: the SLM suffices (label 0);
- `llm_match`: only the LLM's is: the LLM is needed (label 1);
- neither: two rollouts from the reference prefix, one starting with the SLM's top token and one with
  the LLM's, each continued by a policy and graded on the final answer: `slm_rollout` (label 0) when
  the SLM's start reaches the right answer, `llm_rollout` (label 1) when only the LLM's does, and
  `neither` (label 0) when both fail: with no accuracy at stake the cheaper model is preferred, as in
  the paper's cost-aware reward.

Round 1 has no router yet: the SLM's start is continued by the SLM and the LLM's by the LLM. Round 2
continues both under the round-1 router (iterative preference collection): the shortcut labels stay,
the rollout labels are what a router in the loop changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from escalate.citer.decode import TokenLevelDecoder
from escalate.data.schema import TOKEN_LABEL_CASES
from escalate.prompts import format_prompt


def reference_solutions(questions: pd.DataFrame, key: str) -> list[str]:
    """Each question's reference solution: `meta[key]` (arith keeps one per style, GSM8K its solution)."""
    solutions, missing = [], []
    for qid, meta in zip(questions["id"], questions.get("meta", pd.Series([None] * len(questions)))):
        try:
            solution = json.loads(meta)[key] if isinstance(meta, str) else None
        except (ValueError, KeyError, TypeError):
            solution = None
        if not isinstance(solution, str) or not solution.strip():
            missing.append(str(qid))
        solutions.append(solution or "")
    if missing:
        raise ValueError(f"no reference solution under meta[{key!r}] for {len(missing)} question(s): "
                         f"{', '.join(missing[:10])}; set citer.reference_key to a key every row has")
    return solutions


@dataclass
class Positions:
    """Teacher-forced reference tokens: one row each in `frame`, the SLM's hidden state in `hidden`.

    frame columns: id, position (index in the solution's tokens), hidden_index (row of `hidden`),
    token_id, slm_top, llm_top. `sequences` holds each question's bos + prompt + solution + eos; row i
    predicts token `cuts[i]` of sequence `seq_index[i]`.
    """

    frame: pd.DataFrame
    hidden: np.ndarray
    sequences: list[list[int]]
    seq_index: np.ndarray
    cuts: np.ndarray

    def context(self, row: int) -> list[int]:
        """Row's prompt and reference prefix, as token ids."""
        return self.sequences[self.seq_index[row]][: self.cuts[row]]


@torch.inference_mode()
def teacher_force(slm: PreTrainedModel, llm: PreTrainedModel, tokenizer, questions: pd.DataFrame,
                  solutions: list[str], batch_size: int = 64) -> Positions:
    """Run both models over prompt + reference; every completion token becomes one position."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = tokenizer([format_prompt(q) for q in questions["question"]], add_special_tokens=False)["input_ids"]
    completions = tokenizer([" " + s for s in solutions], add_special_tokens=False)["input_ids"]
    heads = [([bos] if bos is not None else []) + p for p in prompts]
    sequences = [h + c + [eos] for h, c in zip(heads, completions)]
    rows, hidden, seq_index, cuts = [], [], [], []
    for start in tqdm(range(0, len(sequences), batch_size), desc="citer teacher forcing", unit="batch",
                      dynamic_ncols=True):
        batch = sequences[start : start + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([s + [eos if pad is None else pad] * (width - len(s)) for s in batch])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        slm_out = slm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        slm_top, llm_top = slm_out.logits.argmax(-1), llm(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        states = slm_out.hidden_states[-1].float()
        for b, seq in enumerate(batch):
            q = start + b
            for position, at in enumerate(range(len(heads[q]) - 1, len(seq) - 1)):  # `at` predicts seq[at + 1]
                rows.append({"id": questions["id"].iloc[q], "position": position, "hidden_index": len(hidden),
                             "token_id": seq[at + 1], "slm_top": int(slm_top[b, at]), "llm_top": int(llm_top[b, at])})
                hidden.append(states[b, at].numpy())
                seq_index.append(q)
                cuts.append(at + 1)
    frame = pd.DataFrame(rows, columns=["id", "position", "hidden_index", "token_id", "slm_top", "llm_top"])
    states = np.stack(hidden) if hidden else np.zeros((0, slm.config.hidden_size), np.float32)
    return Positions(frame, states, sequences, np.asarray(seq_index, dtype=int), np.asarray(cuts, dtype=int))


def shortcut_cases(frame: pd.DataFrame) -> pd.Series:
    """The paper's shortcut: `slm_match`, `llm_match`, or None where only a rollout can tell."""
    slm_ok, llm_ok = frame["slm_top"] == frame["token_id"], frame["llm_top"] == frame["token_id"]
    return pd.Series(np.where(slm_ok, "slm_match", np.where(llm_ok, "llm_match", None)), index=frame.index,
                     dtype=object)


def rollout_texts(decoder: TokenLevelDecoder, positions: Positions, rows: list[int], first: str,
                  max_new_tokens: int) -> list[str]:
    """The responses when position `rows[i]` is written with `first`'s top token ("slm_top" or "llm_top")
    and `decoder` writes the rest, within a generation budget of `max_new_tokens` tokens in all."""
    frame, eos = positions.frame, decoder.tokenizer.eos_token_id
    prefixes, continue_at, contexts, budgets = [], [], [], []
    for i, row in enumerate(rows):
        token, position = int(frame.at[row, first]), int(frame.at[row, "position"])
        context = positions.context(row) + [token]
        prefixes.append(context[len(context) - position - 1 :])  # the reference prefix and the first token
        budget = max_new_tokens - position - 1
        if token != eos and budget >= 1:
            continue_at.append(i)
            contexts.append(context)
            budgets.append(budget)
    texts = [decoder.tokenizer.decode(p, skip_special_tokens=True) for p in prefixes]
    for i, gen in zip(continue_at, decoder.generate_ids(contexts, budgets) if contexts else []):
        texts[i] = decoder.tokenizer.decode(prefixes[i] + gen.token_ids, skip_special_tokens=True)
    return texts


def label(positions: Positions, grade: Callable[[str, str], bool], slm_side: TokenLevelDecoder,
          llm_side: TokenLevelDecoder, max_new_tokens: int, round_: int) -> pd.DataFrame:
    """The token-labels table of one round: shortcut labels, rollouts where neither model matched.

    grade(question id, response) says whether a response reaches the question's answer. slm_side
    continues a rollout that starts with the SLM's top token, llm_side one that starts with the LLM's
    (round 1: each model alone; round 2: both under the round-1 router).
    """
    frame = positions.frame.copy()
    frame["case"] = shortcut_cases(frame)
    open_rows = frame.index[frame["case"].isna()].tolist()
    ids = frame.loc[open_rows, "id"].tolist()
    slm_ok = [grade(q, t) for q, t in zip(ids, rollout_texts(slm_side, positions, open_rows, "slm_top", max_new_tokens))]
    llm_ok = [grade(q, t) for q, t in zip(ids, rollout_texts(llm_side, positions, open_rows, "llm_top", max_new_tokens))]
    frame.loc[open_rows, "case"] = ["slm_rollout" if s else "llm_rollout" if m else "neither"
                                    for s, m in zip(slm_ok, llm_ok)]
    frame["label"] = frame["case"].map(TOKEN_LABEL_CASES).astype(int)
    frame["round"] = round_
    return frame
