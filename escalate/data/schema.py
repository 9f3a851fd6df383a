"""Column contracts of every table the pipeline reads or writes (DESIGN.md, "Data contracts").

One place names the columns and their types, so that adapters, writers and the validation suites
agree. Types are pandas dtypes as the tables hold them after loading from Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "calib", "test")
REFUSAL = "I don't know; escalating."
# CITER's token labels: how each was decided -> the label it implies (1: the LLM should write the token).
TOKEN_LABEL_CASES = {"slm_match": 0, "llm_match": 1, "slm_rollout": 0, "llm_rollout": 1, "neither": 0}


def _normal(text: str) -> str:
    return " ".join(text.replace("’", "'").lower().split())


_REFUSAL_KEY = _normal(REFUSAL).rstrip(".")


def is_refusal(text: str | None) -> bool:
    """Whether a response is the refusal: it starts with it, up to case, spacing and the final period.

    A model that refuses and then rambles on has still refused; a bare "I don't know" has not.
    """
    return isinstance(text, str) and _normal(text).startswith(_REFUSAL_KEY)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "str", "int", "float", "bool", "list[float]", "list[int]"
    required: bool = True
    nullable: bool = False


TABLES: dict[str, tuple[Column, ...]] = {
    "questions": (
        Column("id", "str"),
        Column("task", "str"),
        Column("question", "str"),
        Column("answer", "str"),
        Column("split", "str"),
        Column("difficulty", "int", required=False, nullable=True),
        Column("choices", "str", required=False, nullable=True),  # JSON list of option texts
        Column("meta", "str", required=False, nullable=True),  # JSON object
    ),
    "samples": (
        Column("id", "str"),  # question id
        Column("model", "str"),  # model role: one of the profile's model ids ("slm", "llm")
        Column("split", "str"),
        Column("sample_idx", "int"),  # 0 is the greedy generation, 1.. are sampled
        Column("text", "str"),
        Column("parsed_answer", "str", nullable=True),
        Column("correct", "bool"),
        Column("n_prompt_tokens", "int"),
        Column("n_output_tokens", "int"),
        Column("token_logprobs", "list[float]"),
        Column("answer_logprob", "float", nullable=True),  # log P(T): the answer tokens' probability
        Column("mean_entropy", "float"),
        Column("latency_s", "float"),
    ),
    "preferences": (
        Column("id", "str"),
        Column("prompt", "str"),
        Column("chosen", "str"),
        Column("rejected", "str"),
        Column("chosen_correct", "bool", required=False),
        Column("rejected_correct", "bool", required=False),
    ),
    "refusal_sft": (
        Column("id", "str"),
        Column("prompt", "str"),
        Column("completion", "str"),
        Column("p_correct", "float"),
    ),
    "calibration": (
        Column("id", "str"),
        Column("split", "str"),
        Column("slm_correct", "bool"),
    ),
    "token_labels": (  # CITER: one row per reference-solution token of one labelling round
        Column("id", "str"),
        Column("position", "int"),  # the token's index in the reference solution
        Column("hidden_index", "int"),  # row of the SLM hidden-state array stored beside the table
        Column("label", "int"),  # 1: the LLM should write this token
        Column("token_id", "int", required=False),  # the reference token
        Column("slm_top", "int", required=False),  # each model's top token, teacher-forced
        Column("llm_top", "int", required=False),
        Column("case", "str", required=False),  # how the label was decided (TOKEN_LABEL_CASES)
        Column("round", "int", required=False),  # the labelling round (2: rollouts under round 1's router)
    ),
}


def columns(table: str) -> tuple[Column, ...]:
    """The contract of one table kind; raises KeyError naming the known kinds."""
    if table not in TABLES:
        raise KeyError(f"unknown table kind {table!r}; known: {', '.join(TABLES)}")
    return TABLES[table]
