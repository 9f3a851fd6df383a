"""The registry side of escalate: cascade bundles, quality gates, and aliases in the MLflow registry.

- `bundle`: one candidate cascade as one MLflow pyfunc model (log_bundle, CascadeModel).
- `gates`: pure pass/fail checks with their figures and reasons (GateLimits, GateResult).
- `load_gate_child`: the load gate's fresh process (`python -m escalate.registry.load_gate_child`).
- `aliases`: register every candidate, move @challenger / @champion, promote, roll back (Registry).
- `cli`: `escalate registry list | show | diff | promote | rollback`.

Submodules are imported on use: gates stay importable without MLflow's model machinery.
"""
