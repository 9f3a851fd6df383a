"""Harvest: the gateway's traffic log (escalate.serving.traffic) becomes tomorrow's questions.

    python -m flows.harvest --profile tiny       # the Prefect flow that calls these functions

Each run reads the part files written since the last harvest (the watermark lists those already
read), keeps one row per question (normalized: case, spacing and invisible characters do not make
a new one), and writes under data/harvest/<profile>/:

- `questions.parquet`: a questions table (schema.TABLES["questions"]) of the questions the LLM
  answered or shadowed (escalate.serving.shadow: a kept answer also asked of the LLM), the LLM's
  parsed answer as the label; `meta.shadow_agrees` says whether a shadowed one's SLM answer agreed.
  `id` is a hash of the normalized question and the split is hashed from that id (the profile's
  split fractions and seed, as the file adapters assign them), so a question asked again on another
  day keeps its id and never lands in two splits.
- `unlabelled.parquet`: the questions the SLM kept and nobody shadowed, with no answer column: nobody
  checked the SLM's answer, so it is no label. They are the queue for shadow labelling. The questions
  contract requires an answer, so this table is validated with the same suite over a placeholder answer
  (UNLABELLED) and no numeric-answer rule: every rule about the question itself still applies.
  A question later answered by the LLM moves from here to questions.parquet.
- `lineage.json`: the traffic partitions and part files this harvest read, the rows it kept and
  dropped, and the tables' content hashes.

Questions were redacted by the gateway before they were logged. A question the contract refuses
(control characters, chat-template markers, over-long) is dropped and counted, not harvested: live
traffic is not curated, and one odd request must not stop every later harvest. Anything else the
suite finds stops the run before anything is written, and the watermark does not move.

data/ is one DVC output (data.dvc), so the harvest cannot be `dvc add`ed on its own; lineage.json
records its provenance until data.dvc is split (see README, "Production loop").
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from escalate.config import Profile
from escalate.data.adapters.base import assign_splits
from escalate.data.validation import CONTROL, INVISIBLE, SPECIAL_TOKEN, ensure_valid
from escalate.serving.traffic import part_files, read_parts

HARVEST_DIR = Path("data/harvest")
QUESTIONS_FILE, UNLABELLED_FILE = "questions.parquet", "unlabelled.parquet"
WATERMARK_FILE, LINEAGE_FILE = "watermark.json", "lineage.json"
UNLABELLED = "?"  # the placeholder answer an unlabelled row is validated with
COLUMNS = ["id", "task", "question", "answer", "split", "meta"]
_NO_INVISIBLE = {ord(c): None for c in INVISIBLE}


def normalize(question: str) -> str:
    """What makes two questions the same: text without invisible characters, spacing or case (as the
    questions suite's one-split rule compares them)."""
    return " ".join(question.translate(_NO_INVISIBLE).split()).casefold()


def question_id(question: str) -> str:
    """A stable id: the same normalized question gets the same id on every day and every replica."""
    return "h-" + hashlib.sha256(normalize(question).encode()).hexdigest()[:16]


def harvest_dir(root: Path, profile: str) -> Path:
    return root / HARVEST_DIR / profile


@dataclass
class Watermark:
    """The part files already harvested, by path relative to the traffic directory."""

    parts: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Watermark:
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def new_parts(self, files: list[Path], traffic_dir: Path) -> list[Path]:
        seen = set(self.parts)
        return [f for f in files if _relative(f, traffic_dir) not in seen]

    def advanced(self, files: list[Path], traffic_dir: Path) -> Watermark:
        """This watermark plus `files`, forgetting parts retention has deleted since."""
        kept = [p for p in self.parts if (traffic_dir / p).is_file()]
        return Watermark(kept + [_relative(f, traffic_dir) for f in files])


def admissible(questions: pd.Series, max_chars: int) -> pd.Series:
    """True where a logged question can enter a questions table; the rest are dropped, not harvested."""
    text = questions.fillna("")
    return (text.str.strip().str.len() > 0) & (text.str.len() <= max_chars) & ~text.str.contains(
        CONTROL, regex=True) & ~text.str.contains(SPECIAL_TOKEN, regex=True) & (text == text.str.strip())


def build_questions(traffic: pd.DataFrame, cfg: Profile) -> pd.DataFrame:
    """One row per normalized question of `traffic`: COLUMNS, `answer` the LLM's parsed answer where the
    LLM answered or shadowed it (else null), `meta` when and how often it was asked, and for a shadowed
    one whether the SLM's kept answer agreed."""
    if traffic.empty:
        return pd.DataFrame(columns=COLUMNS)
    df = traffic.assign(id=traffic["question"].map(question_id))
    answered = df["parsed_answer"].where((df["model"] == "llm") & df["parsed_answer"].notna())
    df["label"] = answered.fillna(df["shadow_parsed_answer"])  # a failed shadow call has none: no label
    df["agrees"] = df["shadow_agrees"].where(df["shadow_parsed_answer"].notna())
    df = df.sort_values("time", kind="stable")
    grouped = df.groupby("id", sort=False)
    out = grouped.agg(question=("question", "first"), answer=("label", "first"), first_seen=("time", "min"),
                      last_seen=("time", "max"), asked=("question", "size"), agrees=("agrees", "first")).reset_index()
    out["task"] = cfg.data.task or cfg.data.adapter
    out["split"] = assign_splits(out["id"], cfg.data.split_fractions, cfg.seed).to_numpy()
    out["meta"] = [json.dumps({"source": "traffic", "first_seen": f.isoformat(), "last_seen": last.isoformat(),
                               "asked": int(n), **({} if pd.isna(a) else {"shadow_agrees": bool(a)})})
                   for f, last, n, a in zip(out.first_seen, out.last_seen, out.asked, out.agrees)]
    out["answer"] = out["answer"].astype(object).where(out["answer"].notna(), None)
    return out[COLUMNS]


def merge(existing: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Earlier harvests plus this one, one row per id: a labelled row wins, then the earlier one."""
    both = pd.concat([existing[COLUMNS], new[COLUMNS]], ignore_index=True) if len(existing) else new[COLUMNS]
    order = both.assign(_unlabelled=both["answer"].isna()).sort_values("_unlabelled", kind="stable")
    return order.drop_duplicates("id").drop(columns="_unlabelled").reset_index(drop=True)


def read_existing(out_dir: Path) -> pd.DataFrame:
    """What earlier harvests wrote, both tables together (unlabelled rows with a null answer)."""
    parts = [pd.read_parquet(out_dir / QUESTIONS_FILE)] if (out_dir / QUESTIONS_FILE).is_file() else []
    if (out_dir / UNLABELLED_FILE).is_file():
        parts.append(pd.read_parquet(out_dir / UNLABELLED_FILE).assign(answer=None))
    return pd.concat(parts, ignore_index=True)[COLUMNS] if parts else pd.DataFrame(columns=COLUMNS)


@dataclass
class Harvest:
    """One harvest's tables, validated, and what it read."""

    labelled: pd.DataFrame
    unlabelled: pd.DataFrame
    parts: list[Path]
    rows_read: int
    dropped: int


def collect(traffic_dir: Path, out_dir: Path) -> list[Path]:
    """The traffic part files not harvested yet."""
    return Watermark.load(out_dir / WATERMARK_FILE).new_parts(part_files(traffic_dir), traffic_dir)


def build(parts: list[Path], out_dir: Path, cfg: Profile) -> Harvest:
    """Read `parts`, keep the admissible questions, merge with earlier harvests and validate both tables;
    raises ValidationError (nothing written) when the contract fails."""
    traffic = read_parts(parts)
    ok = admissible(traffic["question"], cfg.data.max_question_chars)
    table = merge(read_existing(out_dir), build_questions(traffic[ok], cfg))
    labelled = table[table["answer"].notna()].reset_index(drop=True)
    unlabelled = table[table["answer"].isna()].drop(columns="answer").reset_index(drop=True)
    limits = {"max_question_chars": cfg.data.max_question_chars, "eval_split": None}
    if len(labelled):  # an empty table is "nothing yet", which the contract's at-least-one-row rule refuses
        ensure_valid(labelled, "questions", source=str(out_dir / QUESTIONS_FILE), **limits)
    if len(unlabelled):
        ensure_valid(unlabelled.assign(answer=UNLABELLED), "questions", source=str(out_dir / UNLABELLED_FILE),
                     numeric_tasks=(), **limits)
    return Harvest(labelled, unlabelled, parts, len(traffic), int((~ok).sum()))


def publish(harvest: Harvest, traffic_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write both tables and the lineage, then move the watermark (last: a crash before it re-reads
    the same parts, which merge() absorbs). Returns the lineage."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in ((QUESTIONS_FILE, harvest.labelled), (UNLABELLED_FILE, harvest.unlabelled)):
        _atomic(out_dir / name, lambda tmp, df=df: df.to_parquet(tmp, index=False))
    parts = [_relative(f, traffic_dir) for f in harvest.parts]
    lineage = {
        "harvested_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "traffic_dir": str(traffic_dir),
        "partitions": sorted({p.split("/")[0] for p in parts}), "parts": parts, "rows_read": harvest.rows_read,
        "dropped_inadmissible": harvest.dropped, "questions": len(harvest.labelled),
        "unlabelled": len(harvest.unlabelled),
        "md5": {name: hashlib.md5((out_dir / name).read_bytes()).hexdigest() for name in (QUESTIONS_FILE, UNLABELLED_FILE)},
    }
    _atomic(out_dir / LINEAGE_FILE, lambda tmp: tmp.write_text(json.dumps(lineage, indent=2) + "\n"))
    mark = Watermark.load(out_dir / WATERMARK_FILE).advanced(harvest.parts, traffic_dir)
    _atomic(out_dir / WATERMARK_FILE, lambda tmp: tmp.write_text(json.dumps(asdict(mark), indent=2) + "\n"))
    return lineage


def _relative(path: Path, directory: Path) -> str:
    return path.relative_to(directory).as_posix()


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
