"""The load gate's fresh process: load each bundle, answer its smoke questions, report one line per bundle.

Run as `python -m escalate.registry.load_gate_child` by gates.load_gates, never imported for its
work: the jobs ([{"uri", "questions", "timeout_s"}, ...]) come as JSON on stdin, and each bundle's
report is one stdout line, MARKER + JSON (the answers' shape, or an "error"), flushed at once so a
later crash still leaves the earlier verdicts.

Each bundle imports escalate from its own code path: every `escalate` module (this one's package
included) is dropped from sys.modules before a bundle loads. So this module uses only what it
imported itself (the standard library, MLflow, pandas), never escalate, once it runs.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
from typing import Any

MARKER = "ESCALATE_LOAD_GATE "


class TimedOut(Exception):
    """A bundle's alarm went off: it did not load and answer within its timeout_s."""


def _alarm(signum: int, frame: Any) -> None:
    raise TimedOut()


def _drop_escalate() -> None:
    """Forget every escalate module, so the next bundle imports its own (MLflow puts its code path first)."""
    for name in [m for m in sys.modules if m == "escalate" or m.startswith("escalate.")]:
        del sys.modules[name]


def answer(job: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Load one bundle and answer its questions within its alarm: (the report, the model or None)."""
    import mlflow  # on use: gates.py imports MARKER from this module without loading MLflow
    import pandas as pd  # with MLflow: imported after the purge, for this bundle

    start = time.perf_counter()
    model = None
    signal.setitimer(signal.ITIMER_REAL, job["timeout_s"])
    try:
        model = mlflow.pyfunc.load_model(job["uri"])
        loaded = time.perf_counter()
        out = model.predict(pd.DataFrame({"question": job["questions"]}))
        signal.setitimer(signal.ITIMER_REAL, 0)
        return {
            "uri": job["uri"], "rows": len(out), "columns": list(out.columns),
            "models": [str(m) for m in out["model"]] if "model" in out else [],
            "answers": [a if isinstance(a, str) else None for a in out["answer"]] if "answer" in out else [],
            "costs": [float(c) for c in out["cost"]] if "cost" in out else [],
            "load_s": loaded - start, "predict_s": time.perf_counter() - loaded,
        }, model
    except TimedOut:
        return {"uri": job["uri"], "error": f"did not load and answer within {job['timeout_s']:g} s"}, model
    except Exception as exc:  # this bundle fails its gate; the next one is still loaded
        signal.setitimer(signal.ITIMER_REAL, 0)
        return {"uri": job["uri"], "error": f"{type(exc).__name__}: {exc}"[:2000]}, model


def close(model: Any) -> None:
    """Close a bundle's cascade (its engines and servers); a failed load left nothing to close."""
    try:
        model.unwrap_python_model().cascade.close()
    except Exception:  # no model, or one that never built its cascade
        pass


def free_memory() -> None:
    """Collect the dropped bundle (a GPU holds one vLLM engine at a time) before the next one loads."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    signal.signal(signal.SIGALRM, _alarm)
    for job in json.loads(sys.stdin.read()):
        _drop_escalate()
        report, model = answer(job)
        print(MARKER + json.dumps(report), flush=True)
        close(model)
        del model  # the last reference: free_memory can collect it
        free_memory()


if __name__ == "__main__":
    main()
