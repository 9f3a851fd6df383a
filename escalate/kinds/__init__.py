"""Cascade kinds by name: adding one is one module and one line here.

A bundle's cascade.json names its kind; the registry (publish, bundle) and serving (promote, engine)
look it up here and ask it what differs, instead of branching on the name:

- `query` (escalate.kinds.query): a router per whole question; an escalate.cascade.Cascade served
  over one vLLM server per self-hosted model;
- `token` (escalate.kinds.token, CITER): a router per token; a TokenLevelCascade decoded in the
  gateway's own process, with no model server.
"""

from __future__ import annotations

from escalate.kinds.base import CascadeKind, Found
from escalate.kinds.query import QueryLevel
from escalate.kinds.token import TokenLevel

KINDS: dict[str, CascadeKind] = {"query": QueryLevel(), "token": TokenLevel()}
# The kinds' names as data: cascade.json, tests, and version-1 bundles (written before `kind`, all query-level).
QUERY_LEVEL, TOKEN_LEVEL = QueryLevel.name, TokenLevel.name


def kind_for(strategy: str) -> CascadeKind:
    """The kind whose candidates `strategy` names: a query-level router's name, or CITER's."""
    for kind in KINDS.values():
        if kind.offers(strategy):
            return kind
    raise ValueError(f"no cascade kind ({', '.join(KINDS)}) offers strategy {strategy!r}")


__all__ = ["KINDS", "QUERY_LEVEL", "TOKEN_LEVEL", "CascadeKind", "Found", "QueryLevel", "TokenLevel", "kind_for"]
