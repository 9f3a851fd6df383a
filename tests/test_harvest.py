"""Harvest: traffic part files -> deduplicated questions with stable ids and one split each, validated,
with lineage and a watermark; the Prefect flow end to end (slow)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from escalate.config import load_profile
from escalate.data.validation import ValidationError
from escalate.harvest import (
    LINEAGE_FILE,
    QUESTIONS_FILE,
    UNLABELLED_FILE,
    WATERMARK_FILE,
    build,
    collect,
    normalize,
    publish,
    question_id,
)
from escalate.serving.traffic import SCHEMA

ROOT = Path(__file__).resolve().parents[1]
CFG = load_profile("tiny", ROOT)
START = datetime(2026, 5, 1, 12, tzinfo=UTC)


def record(question: str, model: str = "llm", parsed: str | None = "7", minutes: int = 0) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(SCHEMA.names, 0)
    row.update(time=START + timedelta(minutes=minutes), deployment_model="escalate-cascade", deployment_version="3",
               alias="champion", strategy="entropy", score=0.4, threshold=0.5, model=model, served_by=model,
               escalated=model == "llm", fallback=None, question=question, answer=f"the answer is {parsed}",
               parsed_answer=parsed, shadow=None, shadow_answer=None, shadow_parsed_answer=None, shadow_agrees=None,
               latency_shadow_s=None)
    return row


def write_part(traffic: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    folder = traffic / f"date={rows[0]['time'].date().isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / name)
    return folder / name


def harvest_once(traffic: Path, out: Path) -> dict[str, Any]:
    return publish(build(collect(traffic, out), out, CFG), traffic, out)


def test_ids_are_stable_hashes_of_the_normalized_question() -> None:
    assert normalize("  Tom has\u200b 3  APPLES. ") == "tom has 3 apples."
    assert question_id("Tom has 3 apples.") == question_id("tom  has 3\tapples.") != question_id("Tom has 4 apples.")


def test_harvest_deduplicates_labels_llm_answers_and_keeps_each_question_in_one_split(tmp_path: Path) -> None:
    traffic, out = tmp_path / "traffic", tmp_path / "harvest"
    questions = [f"Tom has {i} apples. Then buys 3 more. How many apples does Tom have now?" for i in range(40)]
    rows = [record(q, "llm", str(i + 3), minutes=i) for i, q in enumerate(questions)]
    rows += [record(questions[0].upper(), "llm", "3", minutes=50),  # the same question, asked again
             record("Ann has 2 pens. How many pens does Ann have?", "slm", "2", minutes=51),
             record("Bad <|im_start|>system question", "llm", "1", minutes=52)]  # refused by the contract: dropped
    write_part(traffic, "part-1.parquet", rows)
    lineage = harvest_once(traffic, out)
    labelled, unlabelled = pd.read_parquet(out / QUESTIONS_FILE), pd.read_parquet(out / UNLABELLED_FILE)
    assert len(labelled) == 40 and labelled["id"].is_unique and set(labelled.task) == {"arith"}
    first = labelled.set_index("id").loc[question_id(questions[0])]
    assert first.answer == "3" and json.loads(first.meta)["asked"] == 2  # the earliest LLM answer is the label
    assert set(labelled.split) <= {"train", "calib", "test"} and labelled.split.nunique() > 1
    assert unlabelled.question.tolist() == ["Ann has 2 pens. How many pens does Ann have?"]
    assert "answer" not in unlabelled.columns
    assert (lineage["partitions"], lineage["parts"]) == (["date=2026-05-01"], ["date=2026-05-01/part-1.parquet"])
    assert (lineage["rows_read"], lineage["dropped_inadmissible"], lineage["questions"]) == (43, 1, 40)
    assert json.loads((out / LINEAGE_FILE).read_text()) == lineage

    # the next day: only the new part is read; the same question keeps its id and split, and an LLM answer
    # to a question the SLM kept moves it to the labelled table
    write_part(traffic, "part-2.parquet", [record(questions[5], "llm", "8", minutes=60 * 24),
                                           record("ann has 2 pens.  How many pens does Ann have?", "llm", "2",
                                                  minutes=60 * 24 + 1)])
    lineage = harvest_once(traffic, out)
    assert lineage["parts"] == ["date=2026-05-02/part-2.parquet"] and lineage["rows_read"] == 2
    again = pd.read_parquet(out / QUESTIONS_FILE)
    assert len(again) == 41 and len(pd.read_parquet(out / UNLABELLED_FILE)) == 0
    before = labelled.set_index("id").split
    assert (again.set_index("id").split.loc[before.index] == before).all()
    assert json.loads((out / WATERMARK_FILE).read_text())["parts"] == ["date=2026-05-01/part-1.parquet",
                                                                      "date=2026-05-02/part-2.parquet"]
    assert collect(traffic, out) == []


def test_a_contract_failure_writes_nothing_and_keeps_the_watermark(tmp_path: Path) -> None:
    traffic, out = tmp_path / "traffic", tmp_path / "harvest"
    write_part(traffic, "part-1.parquet", [record("What is 2 + 2?", "llm", "4")])
    harvest_once(traffic, out)
    write_part(traffic, "part-2.parquet", [record("What is 3 + 3?", "llm", "six")])  # arith answers are numbers
    with pytest.raises(ValidationError, match="answer"):
        build(collect(traffic, out), out, CFG)
    assert pd.read_parquet(out / QUESTIONS_FILE).question.tolist() == ["What is 2 + 2?"]
    assert [p.name for p in collect(traffic, out)] == ["part-2.parquet"]


@pytest.mark.slow
def test_the_harvest_flow_end_to_end(prefect_harness: None, tmp_path: Path) -> None:
    from flows.harvest import harvest  # Prefect: imported by the one test that runs the flow

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    traffic = tmp_path / "serving" / "traffic"
    assert harvest(profile="tiny", root=str(tmp_path))["outcome"] == "no-new-traffic"
    write_part(traffic, "part-1.parquet", [record("What is 2 + 2?", "llm", "4"), record("What is 1 + 1?", "slm")])
    result = harvest(profile="tiny", root=str(tmp_path))
    assert (result["outcome"], result["questions"], result["unlabelled"]) == ("harvested", 1, 1)
    assert (tmp_path / "data" / "harvest" / "tiny" / QUESTIONS_FILE).is_file()
