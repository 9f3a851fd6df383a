"""Great Expectations suites for every table escalate reads or writes (DESIGN.md, "Data contracts").

A flow calls ``ensure_valid(df, "samples", source=path)`` before anything consumes a table. A bad
table raises ValidationError, whose report names the broken columns and the offending rows by
``id``, so the run stops with something a person can act on and nothing downstream runs.

Each table kind has one ExpectationSuite (``expectation_suite``), built from its columns in
``schema.TABLES`` (presence, value types, nulls) plus the table's own rules. GX runs it in two
passes: first the column pass, then the row pass with only the rules whose columns exist and hold
the right types, so a missing or mistyped column is reported once instead of crashing every rule
that reads it. GX has no expectations on list elements or JSON contents; such rules expect on
helper columns derived here and report the column they were derived from.

A questions table must hold rows of the split the pipeline evaluates on (``eval_split``, the
profile's evaluation.split); a table nothing is evaluated on, e.g. one for training only, is
validated with ``eval_split=None``.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # read when GX is imported: no telemetry

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.row_conditions import Column as Col

from escalate.config import DataConfig, EvaluationConfig
from escalate.data.schema import SPLITS, TOKEN_LABEL_CASES, Column, columns

MAX_IDS = 20  # offending row ids kept per failure; the count says how many there are in all
ROW = "_gx_row"  # positional row number, names a row whose id is missing or null
COLUMN_PASS, ROW_PASS = "columns", "rows"

# Type names GX resolves to numpy and Python types; it checks each value of an object column.
_INTS = ["int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
_TYPE_NAMES = {
    "str": ["str"],
    "int": _INTS,
    "float": ["float", "float16", "float32", *_INTS],
    "bool": ["bool"],
    "list[float]": ["list"],
    "list[int]": ["list"],
}
# Zero-width space, non-joiner and joiner, word joiner, byte-order mark: invisible, yet not whitespace.
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
NON_EMPTY = f"[^\\s{INVISIBLE}]"  # some visible character
# C0 and C1 control characters (and DEL), except tab, line feed and carriage return.
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
# Chat-template and tokenizer markers: a question must not be able to inject a turn or a token.
SPECIAL_TOKEN = (
    r"<\|[^|<>\s]*\|>"  # <|im_start|>, <|endoftext|>, <|eot_id|>, <|begin_of_text|>, ...
    r"|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|<(?:pad|unk|mask|bos|eos|sep|cls)>"
)
EDGE_SPACE = f"^[\\s{INVISIBLE}]|[\\s{INVISIBLE}]$"
# The profile's defaults, so that a file checked by hand meets the pipeline's limits.
MAX_QUESTION_CHARS = DataConfig.max_question_chars
EVAL_SPLIT = EvaluationConfig.split
# An int or float, optionally signed, thousands grouped by commas ("1,234.5"), optional exponent.
NUMBER = r"^\s*[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*$"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TYPE_RULE = gxe.ExpectColumnValuesToBeInTypeList.expectation_type


# --- the report --------------------------------------------------------------------------------


@dataclass
class Failure:
    """One broken rule: which column, how many rows, which ones (by id), and what was expected."""

    expectation: str
    column: str
    count: int
    ids: list[str]
    detail: str

    def summary(self) -> str:
        if not self.count:  # a rule on the whole table or column
            return f"{self.column}: {self.detail}"
        more = ", ..." if len(self.ids) >= MAX_IDS and self.count > len(self.ids) else ""
        return f"{self.column}: {self.detail} [{self.count} row(s): {', '.join(self.ids)}{more}]"


@dataclass
class ValidationReport:
    """What one table's suite found; empty failures means the table may be consumed."""

    table: str
    source: str
    n_rows: int
    failures: list[Failure]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        head = f"{self.table} table from {self.source} ({self.n_rows} rows)"
        if self.ok:
            return f"{head}: valid"
        lines = [f"{head}: {len(self.failures)} failed expectation(s)"]
        return "\n".join(lines + [f"  - {f.summary()}" for f in self.failures])

    def to_markdown(self) -> str:
        verdict = "valid" if self.ok else f"{len(self.failures)} failed expectation(s)"
        lines = [f"### `{self.table}` from `{self.source}`: {verdict} ({self.n_rows} rows)"]
        if self.failures:
            lines += ["", "| column | rule | rows | ids | expectation |", "|---|---|---|---|---|"]
            lines += [_markdown_row(f) for f in self.failures]
        return "\n".join(lines)


def _markdown_row(failure: Failure) -> str:
    cells = [failure.column, failure.detail, str(failure.count), ", ".join(failure.ids), failure.expectation]
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


class ValidationError(ValueError):
    """A table broke its contract; .report says where, str() is the readable summary."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report


# --- helper columns: what GX cannot see inside a cell ------------------------------------------

CHOICES_OK = "_gx_choices_ok"
LETTER_OK = "_gx_answer_letter_ok"
LOGPROBS_OK = "_gx_token_logprobs_ok"
LOGPROBS_MAX = "_gx_token_logprobs_max"
ONE_SPLIT = "_gx_question_one_split"
ID_DISTINCT = "_gx_id_distinct"
ANSWER_FINITE = "_gx_answer_finite"
_NO_INVISIBLE = str.maketrans("", "", INVISIBLE)
_SPACES = re.compile(f"[\\s{INVISIBLE}]+")


def _is_missing(value: Any) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _choice_list(choices: Any) -> list[Any] | None:
    """The options of a JSON choices cell, or None when it is not a list of >= 2 options."""
    try:
        options = json.loads(choices)
    except (TypeError, ValueError):
        return None
    if not isinstance(options, list) or len(options) < 2:
        return None
    scalar = all(isinstance(o, (str, int, float)) and not isinstance(o, bool) for o in options)
    return options if scalar else None


def _choices_ok(df: pd.DataFrame) -> pd.Series:
    return df["choices"].map(lambda c: None if _is_missing(c) else _choice_list(c) is not None).astype(object)


def _answer_letter_ok(df: pd.DataFrame) -> pd.Series:
    def ok(answer: Any, choices: Any) -> bool | None:
        options = None if _is_missing(choices) else _choice_list(choices)
        if options is None:  # no choices, or broken ones: the choices rule reports those
            return None
        return answer in set(LETTERS[: len(options)])

    return pd.Series(
        [ok(a, c) for a, c in zip(df["answer"], df["choices"], strict=True)], index=df.index, dtype=object
    )


def _logprob_array(value: Any) -> np.ndarray | None:
    """A cell's log-probs as a 1-d numeric array, or None when they are not all numbers."""
    try:
        values = np.asarray(value)
    except ValueError:  # ragged nesting
        return None
    return values if values.ndim == 1 and values.dtype.kind in "fiu" else None


def _logprobs_ok(df: pd.DataFrame) -> pd.Series:
    def ok(value: Any) -> bool | None:
        if _is_missing(value):  # the not-null rule reports it
            return None
        values = _logprob_array(value)
        return values is not None and not np.isnan(values).any()

    return df["token_logprobs"].map(ok).astype(object)


def _logprobs_max(df: pd.DataFrame) -> pd.Series:
    def largest(value: Any) -> float:
        values = _logprob_array(value)
        if values is None or np.isnan(values).all():  # also empty; the other rule reports bad cells
            return np.nan
        return float(np.nanmax(values))

    return df["token_logprobs"].map(largest).astype(float)


def _question_key(question: Any) -> str | None:
    """What makes two questions the same one: text without zero-width characters, spacing or case."""
    if not isinstance(question, str):
        return None
    return " ".join(question.translate(_NO_INVISIBLE).split()).casefold()


def _question_in_one_split(df: pd.DataFrame) -> pd.Series:
    """False on every row whose question is also asked in another split: a test answer seen in training."""
    keys = [_question_key(q) for q in df["question"]]
    splits: dict[str, set[str]] = {}
    for key, split in zip(keys, df["split"], strict=True):
        if key is not None and isinstance(split, str):
            splits.setdefault(key, set()).add(split)
    return pd.Series([None if k is None else len(splits.get(k, ())) <= 1 for k in keys], index=df.index,
                     dtype=object)


def _id_distinct(df: pd.DataFrame) -> pd.Series:
    """False on ids that another id equals once whitespace is removed ("q 1" and "q1"); exact
    duplicates are the uniqueness rule's to report."""
    keys = [_SPACES.sub("", i) if isinstance(i, str) else None for i in df["id"]]
    spellings: dict[str, set[str]] = {}
    for key, value in zip(keys, df["id"], strict=True):
        if key is not None:
            spellings.setdefault(key, set()).add(value)
    return pd.Series([None if k is None else len(spellings[k]) == 1 for k in keys], index=df.index, dtype=object)


def _answer_finite(df: pd.DataFrame) -> pd.Series:
    """Whether a numeric answer is a finite number ("1e999" is inf); None where it is not a number at
    all, which the number rule reports."""
    def finite(answer: Any) -> bool | None:
        if not isinstance(answer, str) or not re.match(NUMBER, answer):
            return None
        return math.isfinite(float(answer.replace(",", "")))

    return df["answer"].map(finite).astype(object)


@dataclass(frozen=True)
class _Helper:
    sources: tuple[str, ...]
    compute: Callable[[pd.DataFrame], pd.Series]


_HELPERS: dict[str, _Helper] = {
    CHOICES_OK: _Helper(("choices",), _choices_ok),
    LETTER_OK: _Helper(("answer", "choices"), _answer_letter_ok),
    LOGPROBS_OK: _Helper(("token_logprobs",), _logprobs_ok),
    LOGPROBS_MAX: _Helper(("token_logprobs",), _logprobs_max),
    ONE_SPLIT: _Helper(("question", "split"), _question_in_one_split),
    ID_DISTINCT: _Helper(("id",), _id_distinct),
    ANSWER_FINITE: _Helper(("answer",), _answer_finite),
}


# --- the suites --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    model_ids: tuple[str, ...] | None
    numeric_tasks: tuple[str, ...]
    max_question_chars: int
    eval_split: str | None


def _expect(
    kind: type[gxe.Expectation],
    rule: str,
    *,
    report: str | None = None,
    needs: Iterable[str] | None = None,
    stage: str = ROW_PASS,
    show_values: bool = True,
    **kwargs: Any,
) -> gxe.Expectation:
    """One expectation whose meta names the column to report and the columns it needs to run.

    report defaults to the expectation's column(s); needs defaults to those too. Rules on helper
    columns set both to the table columns the helper is derived from. show_values: whether the
    report quotes offending values (a boolean helper's False says nothing).
    """
    own = kwargs.get("column_list") or ([kwargs["column"]] if "column" in kwargs else [])
    needed = list(own if needs is None else needs)
    meta = {
        "column": report or ", ".join(own),
        "rule": rule,
        "needs": needed,
        "stage": stage,
        "show_values": show_values,
    }
    return kind(meta=meta, **kwargs)


def _column_rules(col: Column) -> list[gxe.Expectation]:
    """The schema's promise about one column: present if required, values of its kind, no nulls."""
    rules = []
    if col.required:
        rules.append(
            _expect(
                gxe.ExpectColumnToExist,
                "required column is missing",
                column=col.name,
                needs=[],
                stage=COLUMN_PASS,
            )
        )
    rules.append(
        _expect(
            gxe.ExpectColumnValuesToBeInTypeList,
            f"values must be {col.kind}",
            column=col.name,
            type_list=_TYPE_NAMES[col.kind],
            stage=COLUMN_PASS,
        )
    )
    if not col.nullable:
        rules.append(
            _expect(
                gxe.ExpectColumnValuesToNotBeNull,
                "values must not be null",
                column=col.name,
                stage=COLUMN_PASS,
                show_values=False,
            )
        )
    return rules


def _non_empty(*names: str) -> list[gxe.Expectation]:
    return [
        _expect(
            gxe.ExpectColumnValuesToMatchRegex,
            "must be a non-empty string (zero-width characters are empty)",
            column=name,
            regex=NON_EMPTY,
        )
        for name in names
    ]


def _at_least(name: str, low: float) -> gxe.Expectation:
    return _expect(gxe.ExpectColumnValuesToBeBetween, f"must be >= {low}", column=name, min_value=low)


def _at_most(name: str, high: float, rule: str | None = None, **kwargs: Any) -> gxe.Expectation:
    return _expect(
        gxe.ExpectColumnValuesToBeBetween, rule or f"must be <= {high}", column=name, max_value=high, **kwargs
    )


def _in_splits() -> gxe.Expectation:
    return _expect(
        gxe.ExpectColumnValuesToBeInSet,
        f"must be one of {', '.join(SPLITS)}",
        column="split",
        value_set=list(SPLITS),
    )


def _holds(helper: str, rule: str, report: str) -> gxe.Expectation:
    """A rule GX cannot state directly: a derived boolean helper column must be True."""
    return _expect(
        gxe.ExpectColumnValuesToBeInSet,
        rule,
        column=helper,
        value_set=[True],
        report=report,
        needs=_HELPERS[helper].sources,
        show_values=False,
    )


def _unique(*names: str) -> gxe.Expectation:
    if len(names) == 1:
        return _expect(gxe.ExpectColumnValuesToBeUnique, "must be unique", column=names[0])
    return _expect(
        gxe.ExpectCompoundColumnsToBeUnique, f"({', '.join(names)}) must be unique", column_list=list(names)
    )


def _questions(opts: _Options) -> list[gxe.Expectation]:
    rules = [
        *_non_empty("id", "task", "question", "answer"),
        _unique("id"),
        _expect(gxe.ExpectColumnValuesToNotMatchRegex, "must not start or end with whitespace", column="id",
                regex=EDGE_SPACE),
        _holds(ID_DISTINCT, "must not differ from another id only by whitespace", "id"),
        _expect(gxe.ExpectColumnValuesToNotMatchRegex, "must not contain control characters", column="question",
                regex=CONTROL),
        _expect(gxe.ExpectColumnValuesToNotMatchRegex,
                "must not contain chat-template or tokenizer markers (<|...|>, <s>, [INST], ...)",
                column="question", regex=SPECIAL_TOKEN),
        _expect(gxe.ExpectColumnValueLengthsToBeBetween, f"must be at most {opts.max_question_chars} characters",
                column="question", max_value=opts.max_question_chars, show_values=False),
        _holds(ONE_SPLIT, "the same question (ignoring case and spacing) must not be in two splits", "question"),
        _in_splits(),
        _at_least("difficulty", 0),
        _holds(CHOICES_OK, "must be a JSON list of at least 2 options (strings or numbers)", "choices"),
        _holds(LETTER_OK, "must be the letter of one of the row's choices (A, B, ...)", "answer"),
    ]
    if opts.numeric_tasks:
        rules.append(
            _expect(
                gxe.ExpectColumnValuesToMatchRegex,
                f"must be a number (tasks {', '.join(opts.numeric_tasks)})",
                column="answer",
                regex=NUMBER,
                row_condition=Col("task").is_in(opts.numeric_tasks),
                needs=["answer", "task"],
            )
        )
        rules.append(
            _expect(
                gxe.ExpectColumnValuesToBeInSet,
                f"must be a finite number (tasks {', '.join(opts.numeric_tasks)})",
                column=ANSWER_FINITE,
                value_set=[True],
                row_condition=Col("task").is_in(opts.numeric_tasks),
                report="answer",
                needs=["answer", "task"],
                show_values=False,
            )
        )
    if opts.eval_split is not None:
        rules.append(
            _expect(
                gxe.ExpectColumnDistinctValuesToContainSet,
                f"no {opts.eval_split!r} rows: the evaluation split must not be empty",
                column="split",
                value_set=[opts.eval_split],
                show_values=False,
            )
        )
    return rules


def _samples(opts: _Options) -> list[gxe.Expectation]:
    rules = [
        *_non_empty("id", "model"),
        _in_splits(),
        _at_least("sample_idx", 0),
        _at_least("n_prompt_tokens", 0),
        _at_least("n_output_tokens", 0),
        _holds(LOGPROBS_OK, "must hold numbers only, no NaN", "token_logprobs"),
        _at_most(
            LOGPROBS_MAX,
            0,
            "log-probs must be <= 0",
            report="token_logprobs",
            needs=_HELPERS[LOGPROBS_MAX].sources,
        ),
        _at_most("answer_logprob", 0),
        _at_least("mean_entropy", 0),
        _at_least("latency_s", 0),
        _unique("id", "model", "sample_idx"),
    ]
    if opts.model_ids is not None:
        rules.append(
            _expect(
                gxe.ExpectColumnValuesToBeInSet,
                f"unknown model id (known: {', '.join(opts.model_ids) or 'none'})",
                column="model",
                value_set=list(opts.model_ids),
            )
        )
    return rules


def _preferences(opts: _Options) -> list[gxe.Expectation]:
    return [
        *_non_empty("id", "prompt", "chosen", "rejected"),
        _expect(
            gxe.ExpectSelectColumnValuesToBeUniqueWithinRecord,
            "chosen must differ from rejected",
            column_list=["chosen", "rejected"],
        ),
    ]


def _refusal_sft(opts: _Options) -> list[gxe.Expectation]:
    return [
        *_non_empty("id", "prompt", "completion"),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            "must be in [0, 1]",
            column="p_correct",
            min_value=0,
            max_value=1,
        ),
    ]


def _calibration(opts: _Options) -> list[gxe.Expectation]:
    return [*_non_empty("id"), _unique("id"), _in_splits()]


def _token_labels(opts: _Options) -> list[gxe.Expectation]:
    rules = [
        *_non_empty("id"),
        _at_least("position", 0),
        _at_least("hidden_index", 0),
        _expect(gxe.ExpectColumnValuesToBeInSet, "must be 0 or 1", column="label", value_set=[0, 1]),
        _unique("id", "position"),
        *(_at_least(name, 0) for name in ("token_id", "slm_top", "llm_top")),
        _at_least("round", 1),
        _expect(gxe.ExpectColumnValuesToBeInSet, f"must be one of {', '.join(TOKEN_LABEL_CASES)}", column="case",
                value_set=list(TOKEN_LABEL_CASES)),
        # The shortcut cases are facts about the teacher-forced top tokens, not judgements.
        _expect(gxe.ExpectColumnPairValuesToBeEqual, "slm_match rows: slm_top must equal token_id",
                column_A="slm_top", column_B="token_id", row_condition=Col("case").is_in(["slm_match"]),
                report="slm_top", needs=["slm_top", "token_id", "case"]),
        _expect(gxe.ExpectColumnPairValuesToBeEqual, "llm_match rows: llm_top must equal token_id",
                column_A="llm_top", column_B="token_id", row_condition=Col("case").is_in(["llm_match"]),
                report="llm_top", needs=["llm_top", "token_id", "case"]),
    ]
    for value in (0, 1):
        cases = [c for c, v in TOKEN_LABEL_CASES.items() if v == value]
        rules.append(_expect(gxe.ExpectColumnValuesToBeInSet, f"must be {value} where case is {' or '.join(cases)}",
                             column="label", value_set=[value], row_condition=Col("case").is_in(cases),
                             needs=["label", "case"]))
    return rules


_TABLE_RULES: dict[str, Callable[[_Options], list[gxe.Expectation]]] = {
    "questions": _questions,
    "samples": _samples,
    "preferences": _preferences,
    "refusal_sft": _refusal_sft,
    "calibration": _calibration,
    "token_labels": _token_labels,
}


def _rules(table: str, opts: _Options) -> list[gxe.Expectation]:
    """Every expectation of one table kind: its schema columns' rules, then the table's own."""
    rules = [rule for col in columns(table) for rule in _column_rules(col)]
    rules.append(
        _expect(
            gxe.ExpectTableRowCountToBeBetween,
            "must have at least one row",
            report="(table)",
            min_value=1,
            stage=COLUMN_PASS,
        )
    )
    return rules + _TABLE_RULES[table](opts)


def expectation_suite(
    table: str,
    *,
    model_ids: Iterable[str] | None = None,
    numeric_tasks: Iterable[str] = ("arith", "gsm8k"),
    max_question_chars: int = MAX_QUESTION_CHARS,
    eval_split: str | None = EVAL_SPLIT,
) -> gx.ExpectationSuite:
    """The GX suite of one table kind, e.g. to inspect or save it; validate() runs it in two passes."""
    opts = _options(model_ids, numeric_tasks, max_question_chars, eval_split)
    return gx.ExpectationSuite(name=f"escalate.{table}", expectations=_rules(table, opts))


def _options(
    model_ids: Iterable[str] | None, numeric_tasks: Iterable[str], max_question_chars: int, eval_split: str | None
) -> _Options:
    return _Options(
        None if model_ids is None else tuple(model_ids), tuple(numeric_tasks), max_question_chars, eval_split
    )


# --- running GX --------------------------------------------------------------------------------

_GX_LOCK = threading.Lock()  # one context serves the process; flows may validate from threads


@cache
def _batch_definition() -> BatchDefinition:
    """The process's one GX pandas batch definition; making a context is slow, so it is reused."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("escalate").add_dataframe_asset("table")
    return asset.add_batch_definition_whole_dataframe("whole table")


def _run(suite: gx.ExpectationSuite, frame: pd.DataFrame) -> list[Any]:
    """GX results of suite on frame, unexpected rows named by id (and row number, for null ids)."""
    if not suite.expectations:
        return []
    labels = ["id", ROW] if "id" in frame.columns else [ROW]
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": labels}
    with _GX_LOCK:
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
        return list(batch.validate(suite, result_format=result_format).results)


def _stage(table: str, rules: list[gxe.Expectation], stage: str, usable: set[str]) -> gx.ExpectationSuite:
    """The suite of one pass: its rules whose columns are all usable.

    Built from fresh rules, not from a suite's: GX binds an expectation to its suite, and copying
    a bound one deep-copies the whole suite, which costs more than validating a small table.
    """
    chosen = [e for e in rules if e.meta["stage"] == stage and set(e.meta["needs"]) <= usable]
    return gx.ExpectationSuite(name=f"escalate.{table}.{stage}", expectations=chosen)


def _as_objects(series: pd.Series, kind: str) -> pd.Series:
    """One column as Python objects; integral floats count as ints, arrays as lists.

    Parquet turns an int column with nulls into floats and reads lists back as numpy arrays.
    """
    values = series.astype(object).tolist()
    if kind == "int":
        values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]
    elif kind.startswith("list"):
        values = [
            v.tolist() if isinstance(v, np.ndarray) else list(v) if isinstance(v, tuple) else v
            for v in values
        ]
    return pd.Series(values, dtype=object)  # built, not mapped: map would turn ints and NaN to floats


def _column_frame(df: pd.DataFrame, contract: tuple[Column, ...]) -> pd.DataFrame:
    """The contract's columns as object columns, so GX checks each value's type and names bad rows.

    On any other dtype GX checks only the dtype, naming no row, and pandas 3's `str` dtype matches
    none of its type names.
    """
    frame = pd.DataFrame({c.name: _as_objects(df[c.name], c.kind) for c in contract if c.name in df.columns})
    return frame.assign(**{ROW: np.arange(len(df))})


def _row_frame(
    df: pd.DataFrame, contract: tuple[Column, ...], usable: set[str], suite: gx.ExpectationSuite
) -> pd.DataFrame:
    """The usable scalar columns, the helper columns the suite reads, and row numbers.

    List columns stay out: rules read them through helpers, and GX fingerprints every batch by
    pickling it when a cell is unhashable, which costs seconds on a large table of arrays.
    """
    table = df.reset_index(drop=True)
    keep = [c.name for c in contract if c.name in usable and not c.kind.startswith("list")]
    read = {getattr(e, "column", None) for e in suite.expectations}
    helpers = {name: h.compute(table) for name, h in _HELPERS.items() if name in read}
    labels = ["id"] if "id" in table.columns and "id" not in keep else []
    return table[keep + labels].assign(**helpers, **{ROW: np.arange(len(table))})


def _mistyped(results: list[Any]) -> set[str]:
    return {
        r.expectation_config.kwargs["column"]
        for r in results
        if r.expectation_config.type == _TYPE_RULE and not r.success
    }


# --- from GX results to the report -------------------------------------------------------------


def _row_label(entry: dict[str, Any]) -> str:
    value = entry.get("id")
    return f"row {entry[ROW]}" if _is_missing(value) else str(value)


def _exception(info: dict[str, Any]) -> str | None:
    """GX's error message for a rule it could not evaluate (its shape varies with the rule)."""
    infos = [info] if "raised_exception" in info else [i for i in info.values() if isinstance(i, dict)]
    messages = [str(i.get("exception_message")) for i in infos if i.get("raised_exception")]
    return "; ".join(messages) or None


def _examples(result: dict[str, Any], with_types: bool) -> str:
    """A few offending values (and their types, for a type rule), to say what was found."""
    values = result.get("partial_unexpected_list") or []
    if not values:
        return ""
    shown = ", ".join(
        list(dict.fromkeys(repr(v.item() if isinstance(v, np.generic) else v) for v in values))[:3]
    )
    if with_types:
        return f"; found {', '.join(dict.fromkeys(type(v).__name__ for v in values))}: {shown}"
    return f"; e.g. {shown}"


def _failure(result: Any) -> Failure:
    config = result.expectation_config
    outcome = result.result or {}
    error = _exception(result.exception_info or {})
    if error:
        detail = f"{config.meta['rule']}; GX could not check it: {error}"
    elif config.meta["show_values"]:
        detail = config.meta["rule"] + _examples(outcome, config.type == _TYPE_RULE)
    else:
        detail = config.meta["rule"]
    labels = list(dict.fromkeys(map(_row_label, outcome.get("unexpected_index_list") or [])))
    return Failure(
        config.type,
        config.meta["column"],
        int(outcome.get("unexpected_count") or 0),
        labels[:MAX_IDS],
        detail,
    )


# --- public entry points -----------------------------------------------------------------------


def validate(
    df: pd.DataFrame,
    table: str,
    *,
    source: str = "<dataframe>",
    model_ids: Iterable[str] | None = None,
    numeric_tasks: Iterable[str] = ("arith", "gsm8k"),
    max_question_chars: int = MAX_QUESTION_CHARS,
    eval_split: str | None = EVAL_SPLIT,
) -> ValidationReport:
    """Run the table kind's suite on df and report every broken rule with the rows that broke it.

    model_ids: the profile's model ids; samples naming any other model fail (None: not checked).
    numeric_tasks: tasks whose answers must parse as finite numbers.
    max_question_chars: the longest question a questions table may hold (the profile's
    data.max_question_chars).
    eval_split: the split a questions table must have rows of, as the pipeline evaluates on it
    (the profile's evaluation.split); None for a table that is not evaluated on, e.g. training only.
    """
    contract = columns(table)
    rules = _rules(table, _options(model_ids, numeric_tasks, max_question_chars, eval_split))
    present = {c.name for c in contract if c.name in df.columns}
    checked = _run(_stage(table, rules, COLUMN_PASS, present), _column_frame(df, contract))
    usable = present - _mistyped(checked)
    row_suite = _stage(table, rules, ROW_PASS, usable)
    results = checked + _run(row_suite, _row_frame(df, contract, usable, row_suite))
    return ValidationReport(table, source, len(df), [_failure(r) for r in results if not r.success])


def ensure_valid(df: pd.DataFrame, table: str, **kwargs: Any) -> ValidationReport:
    """validate(), raising ValidationError unless the table passed: the gate before any consumer."""
    report = validate(df, table, **kwargs)
    if not report.ok:
        raise ValidationError(report)
    return report
