"""GSM8K JSONL (`question`, `answer` ending in '#### N'): the numeric answer is what follows ####."""

from __future__ import annotations

import json

import pandas as pd

from escalate.config import DataConfig
from escalate.data.adapters.base import DatasetAdapter, DataSourceError, finish, read_table
from escalate.data.graders import normalize_number


class GSM8KAdapter(DatasetAdapter):
    name = "gsm8k"
    grader = "numeric"

    def load(self, cfg: DataConfig, seed: int) -> pd.DataFrame:
        raw = read_table(cfg.path)
        missing = {"question", "answer"} - set(raw.columns)
        if missing:
            raise DataSourceError(f"{cfg.path}: GSM8K rows need {sorted(missing)}; found {list(raw.columns)}")
        bad = [i for i, a in enumerate(raw["answer"]) if "####" not in str(a)]
        if bad:
            raise DataSourceError(f"{cfg.path}: rows {bad[:10]} have no '#### N' final answer")
        final = raw["answer"].map(lambda a: normalize_number(str(a).rsplit("####", 1)[1]))
        df = pd.DataFrame({
            "id": [f"gsm8k-{i:05d}" for i in range(len(raw))],
            "question": raw["question"].astype(str),
            # An unparseable final answer is kept verbatim so validation names the row.
            "answer": [f if f is not None else str(a).rsplit("####", 1)[1].strip() for f, a in zip(final, raw["answer"])],
            # Difficulty: the number of calculator annotations (<<...>>), i.e. solution steps.
            "difficulty": raw["answer"].map(lambda a: max(1, str(a).count("<<"))),
            "meta": raw["answer"].map(lambda a: json.dumps({"solution": str(a)})),
        })
        return finish(df, cfg, cfg.task or "gsm8k", seed)
