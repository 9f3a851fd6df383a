"""Dataset adapters by name: adding a source is one module and one line here."""

from __future__ import annotations

from escalate.data.adapters.arith import ArithAdapter
from escalate.data.adapters.base import DatasetAdapter, DataSourceError
from escalate.data.adapters.choice import ChoiceAdapter
from escalate.data.adapters.gsm8k import GSM8KAdapter
from escalate.data.adapters.table import TableAdapter

ADAPTERS: dict[str, type[DatasetAdapter]] = {
    "arith": ArithAdapter,
    "gsm8k": GSM8KAdapter,
    "table": TableAdapter,
    "choice": ChoiceAdapter,
}


def get_adapter(name: str) -> DatasetAdapter:
    if name not in ADAPTERS:
        raise DataSourceError(f"unknown dataset adapter {name!r}; known: {', '.join(ADAPTERS)}")
    return ADAPTERS[name]()


__all__ = ["ADAPTERS", "DataSourceError", "DatasetAdapter", "get_adapter"]
