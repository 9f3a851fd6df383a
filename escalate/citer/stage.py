"""The CITER stage (issue 8): token labels, two rounds of routers, a τ sweep, the comparison, the report;
its token-level cascade is one more registry candidate.

Run: `escalate citer train --profile tiny` (or `dvc repro citer@tiny`; escalate.citer.train does the work).
Writes artifacts/<profile>/citer/: token_labels_r{1,2}.parquet (validated, with their GX reports) and
hidden_states.npy (the SLM's hidden state of every labelled position, indexed by the tables' hidden_index),
router_r{1,2}/, records.parquet (one row per question per τ per round per split), metrics.json, report.md and
plots. `escalate citer log --profile tiny` puts the figures and files in an MLflow run under `citer/`.
`citer_candidate` turns these outputs into one more registry candidate (escalate.registry.publish).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from escalate.citer import ROUNDS, STRATEGY
from escalate.config import Profile
from escalate.evaluation.cost import CostModel
from escalate.evaluation.metrics import saving_at_iso_accuracy
from escalate.evaluation.report import format_cell
from escalate.evaluation.thresholds import meets_accuracy
from escalate.stages.base import Candidate, TrainingStage, cost_model


class CiterStage(TrainingStage):
    name = "citer"
    command = ("citer", "train")
    help = "token labels, routers of rounds 1 and 2, τ sweep, comparison, report"
    group_help = "CITER: token-level routing between the SLM and the LLM"
    outputs = ("citer",)

    def build(self, profile: Profile, root: Path | str = ".") -> Path:
        from escalate.citer.train import build_citer  # torch and transformers: only when the stage runs

        return build_citer(profile, citer_dir(profile, root), root)

    def run(self, profile: Profile) -> str:
        """Each target with its verdict, each round's operating point, the cheapest query-level rival."""
        result = json.loads(self.build(profile).read_text())
        lines = [f"{name}: {format_cell(t['value'])} (needs {t['relation']} {format_cell(t['limit'])}): "
                 f"{'met' if t['met'] else 'missed'}" for name, t in result["targets"].items()]
        lines += [f"round {k[1:]}: τ {format_cell(r['tau'])}, accuracy {format_cell(r['accuracy'])}, bytes "
                  f"{format_cell(r['cost'])}, FLOPs {format_cell(r['flops'])} of LLM-only"
                  for k, r in result["rounds"].items()]
        comparison = result["comparison"]
        if comparison["available"] and comparison["best_at_iso_accuracy"]:
            lines.append(f"cheapest query-level strategy within δ of LLM-only accuracy: "
                         f"{comparison['best_at_iso_accuracy']} (CITER moves "
                         f"{format_cell(comparison['citer_over_best_at_iso_accuracy'])}× its bytes)")
        return "\n".join(lines + [f"report: {citer_dir(profile) / 'report.md'}"])

    def log(self, profile: Profile, root: Path | str = ".") -> dict:
        return citer_log(profile, root)

    def candidates(self, profile: Profile, root: Path | str = ".") -> list[Candidate]:
        """The token-level cascade, run with the profile's own models."""
        row, where = citer_candidate(profile, root)
        return [(row, profile, where)]


def citer_dir(profile: Profile, root: Path | str = ".") -> Path:
    return profile.artifacts(root) / "citer"


def citer_log(profile: Profile, root: Path | str = ".") -> dict:
    """What the finished stage contributes to an MLflow run: metrics and files, all under `citer/`."""
    out = citer_dir(profile, root)
    result = json.loads((out / "metrics.json").read_text())
    figures = {f"citer/{k}/{f}": v for k, r in result["rounds"].items() for f, v in r.items() if f != "sweep"}
    figures.update({f"citer/{k}/router_val_auroc": r["val_auroc"] for k, r in result["routers"].items()})
    figures.update({f"citer/{k}/label_positive_share": r["positive_share"] for k, r in result["labels"].items()})
    figures.update({f"citer/target/{k}_met": float(t["met"]) for k, t in result["targets"].items()})
    if result["comparison"]["available"]:
        figures.update({f"citer/comparison/{k}": v for k, v in result["comparison"].items()
                        if k.startswith(("citer_over", "best_cost_at"))})
    # priced as the registry and the query-level table price it (the profile's cost model, e.g. token prices)
    chosen = candidate_figures(profile, cost_model(profile, root), out)
    figures.update({f"citer/priced/{k}": v for k, v in chosen.row.items() if k in ("accuracy", "cost", "call_rate")})
    figures["citer/priced/round"] = chosen.round
    records = pd.read_parquet(out / "records.parquet")
    figures["citer/priced/saving_at_iso_accuracy"] = priced_saving(
        records[(records["round"] == chosen.round) & (records["split"] == result["context"]["split"])],
        cost_model(profile, root), profile.evaluation.delta)
    files = [out / name for name in ("metrics.json", "report.md", "token_labels_r1_report.json",
                                      "token_labels_r2_report.json", "router_r1", "router_r2")]
    return {"metrics": {k: v for k, v in figures.items() if isinstance(v, (int, float))},
            "artifacts": files + sorted(out.glob("*.png"))}


def log_command(profile: Profile, run_id: str | None = None) -> str:
    """`escalate citer log`: the finished stage's figures and files into an MLflow run; returns what to print."""
    return f"logged to MLflow run {log_citer(profile, '.', run_id)} under citer/"


def log_citer(profile: Profile, root: Path | str = ".", run_id: str | None = None) -> str:
    """Log the stage's figures and files to MLflow under `citer/`: into run_id, or a new run `citer-<profile>`."""
    from escalate.tracking import Tracker, git_commit  # MLflow: seconds to import, only when logging

    tracker = Tracker(profile.tracking.uri, profile.tracking.experiment, Path(root))
    record = citer_log(profile, root)
    run = run_id or tracker.start(f"citer-{profile.name}", tags=git_commit(Path(root)))
    tracker.metrics(run, record["metrics"])
    for path in record["artifacts"]:
        tracker.artifacts(run, path, "citer/" + path.name if path.is_dir() else "citer")
    if run_id is None:
        tracker.end(run, ok=True)
    return run


@dataclass(frozen=True)
class CiterCandidate:
    """The CITER cascade as a registry candidate: one round's router at its τ chosen on the selection split."""

    round: int
    tau: float
    row: dict[str, Any]  # its summary row, shaped like the evaluate stage's (rank_candidates and the gates read it)
    llm_accuracy: float  # LLM-only (τ = 0) accuracy on the evaluation split
    outcomes: pd.DataFrame  # per evaluation-split query at τ: id, correct, escalated, cost
    router_dir: Path


def candidate_figures(profile: Profile, cost: CostModel, out: Path) -> CiterCandidate:
    """The candidate from the stage's outputs in `out`, priced under `cost` (the registry's cost model).

    Each round's τ is the one the stage chose on the selection split (in bytes moved, CITER's measure);
    here both rounds are re-priced under `cost` and the round registered is the one the registry's
    objective prefers on the selection split: within evaluation.delta of LLM-only accuracy at the lowest
    cost (the later round on a tie, the last round when neither is within δ). The test split only
    confirms it. The call rate is the share of queries the LLM wrote any token of.
    """
    from escalate.citer import evaluate as ev  # torch: the registry prices CITER's records only when it gates them

    for name in ("metrics.json", "records.parquet"):
        if not (out / name).is_file():
            raise FileNotFoundError(f"{out / name} is missing; run `escalate citer train --profile {profile.name}` first")
    result = json.loads((out / "metrics.json").read_text())
    records = pd.read_parquet(out / "records.parquet")
    select, split = result["context"]["select_split"], result["context"]["split"]
    found = {}
    for r in ROUNDS:
        tau = float(result["rounds"][f"r{r}"]["tau"])
        part = records[records["round"] == r]
        calib, _ = ev.priced_point(part[part["split"] == select], tau, cost)
        test, outcomes = ev.priced_point(part[part["split"] == split], tau, cost)
        found[r] = (tau, calib, test, outcomes)
    within = [r for r, (_, calib, _, _) in found.items()
              if meets_accuracy(calib["accuracy"], calib["llm_accuracy"], profile.evaluation.delta)]
    chosen = min(within, key=lambda r: (found[r][1]["cost"], -r)) if within else ROUNDS[-1]
    tau, calib, test, outcomes = found[chosen]
    row = {"strategy": STRATEGY, "mode": "token", "round": chosen, "threshold": tau,
           "calib_accuracy": calib["accuracy"], "calib_cost": calib["cost"], "calib_llm_accuracy": calib["llm_accuracy"],
           "accuracy": test["accuracy"], "cost": test["cost"], "call_rate": test["call_rate"],
           "llm_token_share": test["llm_token_share"], "ece": None}
    return CiterCandidate(chosen, tau, row, test["llm_accuracy"], outcomes, out / f"router_r{chosen}")


def priced_saving(records: pd.DataFrame, cost: CostModel, delta: float) -> float:
    """One round's largest saving over its swept τ at accuracy ≥ LLM-only − δ, priced under `cost` (the profile's:
    token prices on tiny), from its records on one split: CITER's figure beside the query-level strategies'
    `saving_at_iso_accuracy`, which are priced the same way."""
    from escalate.citer import evaluate as ev  # torch: see candidate_figures

    curve = pd.DataFrame([ev.priced_point(records, float(tau), cost)[0] for tau in records["tau"].drop_duplicates()])
    return saving_at_iso_accuracy(curve, float(curve["llm_accuracy"].iloc[0]), delta)


def citer_candidate(profile: Profile, root: Path | str = ".") -> tuple[dict[str, Any], Path]:
    """The CITER cascade as one more gated registry candidate: its summary row, which rank_candidates ranks
    with the evaluate stage's, and the directory register_candidate registers it from. The flow:

        row, citer_eval = citer_candidate(cfg, root)
        rows.append(row)
        sources["citer"] = (cfg, citer_eval)  # register_candidate("citer", profile=cfg, eval_dir=citer_eval, ...)
    """
    out = citer_dir(profile, root)
    return candidate_figures(profile, cost_model(profile, root), out).row, out
