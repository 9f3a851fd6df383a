"""What `escalate citer train` runs (issue 8): token labels, two rounds of routers, a τ sweep on the selection
and evaluation splits, the comparison with the query-level strategies, and report.md.

Run: `escalate citer train --profile tiny` (or `dvc repro citer@tiny`; escalate.citer.stage is the stage).
Apart from stage.py because it loads torch and transformers, which the command line need not import.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoModelForCausalLM, AutoTokenizer

from escalate.citer import ROUNDS
from escalate.citer import evaluate as ev
from escalate.citer.decode import ModelCost, TokenLevelDecoder
from escalate.citer.labels import label, reference_solutions, teacher_force
from escalate.citer.router import FixedRouter, fit_router
from escalate.config import ConfigError, Profile
from escalate.data.graders import GRADERS
from escalate.evaluation import metrics, plots
from escalate.evaluation.report import format_cell, markdown_table, write_report
from escalate.models.backends import is_self_hosted, make_backend, model_path
from escalate.models.backends.hf import DTYPES
from escalate.sampling import grader_kind
from escalate.stages.base import Progress, load_questions, paths, write_metrics, write_validated

TARGET_COST = 0.60  # issue 8: LLM-only accuracy − δ at no more than 60% of LLM-only bytes moved
PLOTTED = ("p_true_token", "sater_refusal")  # the query-level cascades issue 8 compares CITER with



def check_pair(profile: Profile, root: Path | str = ".") -> None:
    """Refuse, before any weights load, a pair CITER cannot step token by token in one process: a model that
    is only an endpoint, one on a backend other than hf, or two tokenizers (read from their files)."""
    zoo, roles = paths(profile, root)["zoo"], ("slm", "llm")
    api_only = next((r for r in roles if not is_self_hosted(profile.models[r].backend)), None)
    if api_only is not None:
        cfg = profile.models[api_only]
        raise ConfigError(
            f"models.{api_only}.backend: CITER steps the SLM and the LLM token by token in one process, so it needs "
            f"their weights; {cfg.name!r} is an API-only model behind the {cfg.backend!r} backend. Self-host it "
            f"(backend hf, source a local checkpoint or hub id) to run CITER; the query-level strategies, SATER "
            f"and COREA run with it as it is")
    elsewhere = next((r for r in roles if profile.models[r].backend != "hf"), None)
    if elsewhere is not None:
        raise ConfigError(f"models.{elsewhere}.backend: CITER decodes both models in process and needs 'hf', "
                          f"got {profile.models[elsewhere].backend!r}")
    slm, llm = (AutoTokenizer.from_pretrained(model_path(profile.models[r], r, zoo)) for r in ("slm", "llm"))
    if slm.get_vocab() != llm.get_vocab():
        raise ConfigError(f"models: CITER routes token by token: SLM and LLM must share a tokenizer; "
                          f"{profile.models['slm'].name} has {len(slm)} tokens, {profile.models['llm'].name} {len(llm)}")


def _load(profile: Profile, root: Path | str = ".") -> tuple:
    """The SLM, the LLM and their one tokenizer, in process (CITER steps both models token by token); check_pair
    has vetted them."""
    zoo = paths(profile, root)["zoo"]
    models = {}
    for role in ("slm", "llm"):
        cfg = profile.models[role]
        path = model_path(cfg, role, zoo)
        models[role] = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype]).to(cfg.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path(profile.models["slm"], "slm", zoo))
    return models["slm"], models["llm"], tokenizer


def _write_labels(labels: pd.DataFrame, out: Path, round_: int) -> None:
    write_validated(labels, "token_labels", out / f"token_labels_r{round_}.parquet",
                    out / f"token_labels_r{round_}_report.json")


def label_summary(labels: pd.DataFrame) -> dict:
    return {"n_positions": len(labels), "n_questions": int(labels["id"].nunique()),
            "positive_share": float(labels["label"].mean()),
            "cases": {str(k): int(v) for k, v in labels["case"].value_counts().items()}}


def build_citer(profile: Profile, out: Path, root: Path | str = ".") -> Path:
    """Label, train both rounds' routers, sweep τ on the selection and evaluation splits; returns metrics.json."""
    if profile.citer is None:  # checked before the chat templates, so a profile without one hears that first
        raise ConfigError(f"profile {profile.name!r} has no citer section; add one to its YAML to train CITER")
    check_pair(profile, root)  # an endpoint LLM is the first thing to hear: no flag in the profile can fix it
    if any(m.chat_template for m in profile.models.values()):
        # Labels, routers and the τ sweep read plain completion prompts; a chat template would serve others.
        raise ConfigError(f"profile {profile.name!r}: CITER trains and evaluates on plain completion prompts; "
                          "set models.slm.chat_template and models.llm.chat_template to false for it")
    cfg, p = profile.citer, paths(profile, root)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress("citer", 2 * len(ROUNDS) + 2)  # its clock counts loading the models too
    max_new = profile.sampling.max_new_tokens
    questions = load_questions(profile, root)
    train = questions[questions["split"] == "train"].reset_index(drop=True)
    if cfg.max_train_questions is not None:
        train = train.head(cfg.max_train_questions)
    slm, llm, tokenizer = _load(profile, root)
    positions = teacher_force(slm, llm, tokenizer, train, reference_solutions(train, cfg.reference_key), cfg.batch_size)
    np.save(out / "hidden_states.npy", positions.hidden)
    graders = {row["id"]: (GRADERS[grader_kind(row)], str(row["answer"])) for _, row in train.iterrows()}

    def grade(qid: str, text: str) -> bool:
        check, answer = graders[qid]
        return bool(check(text, answer))

    def decoder(router, tau: float) -> TokenLevelDecoder:
        return TokenLevelDecoder(slm, llm, tokenizer, router, tau, cfg.batch_size)

    splits = [cfg.select_split, profile.evaluation.split]
    evaluation = {s: questions[questions["split"] == s].reset_index(drop=True) for s in dict.fromkeys(splits)}
    costs = {"slm": ModelCost.of(slm), "llm": ModelCost.of(llm)}
    labels, routers, router_summaries, taus, chosen, parts = {}, {}, {}, {}, {}, []
    for r in ROUNDS:
        if r == 1:  # no router yet: the SLM's start is continued by the SLM, the LLM's by the LLM
            sides = (decoder(FixedRouter(), 1.0), decoder(FixedRouter(), 0.0))
        else:  # iterative preference collection: both continue under the previous round's router
            policy = decoder(routers[r - 1], chosen[r - 1] if cfg.rollout_tau is None else cfg.rollout_tau)
            sides = (policy, policy)
        labels[r] = label(positions, grade, *sides, max_new, r)
        _write_labels(labels[r], out, r)
        routers[r], router_summaries[r] = fit_router(positions.hidden[labels[r]["hidden_index"].to_numpy()],
                                                     labels[r]["label"].to_numpy(), labels[r]["id"].to_numpy(),
                                                     cfg.router, profile.seed)
        routers[r].save(out / f"router_r{r}")
        progress.step(f"round {r} labelled and trained")
        taus[r] = ev.sweep_taus(routers[r].predict(positions.hidden), cfg.n_taus)
        swept = {s: ev.decode_records(slm, llm, tokenizer, routers[r], taus[r], q, max_new, cfg.batch_size)
                 .assign(round=r, split=s) for s, q in evaluation.items()}
        parts += swept.values()
        chosen[r] = select_tau(swept[cfg.select_split], costs, profile.evaluation.delta)[0]
        progress.step(f"round {r} swept")
    records = pd.concat(parts, ignore_index=True)
    records.to_parquet(out / "records.parquet", index=False)

    test = evaluation[profile.evaluation.split]
    timed = test.head(cfg.latency_queries)
    latency = {r: ev.single_request_latency(slm, llm, tokenizer, routers[r], taus[r], timed, max_new)
               for r in ROUNDS} if len(timed) else {}
    plain = ev.plain_latency({role: make_backend(profile.models[role], role, p["zoo"], 1) for role in ("slm", "llm")},
                             timed, max_new) if len(timed) else {}
    progress.step("single requests timed")
    result = summarize(profile, records, latency, plain, costs, questions, p, out)
    result.update({
        "labels": {f"r{r}": label_summary(labels[r]) for r in ROUNDS},
        "labels_changed_r1_r2": float((labels[1]["label"] != labels[2]["label"]).mean()),
        "rollout_tau_r2": chosen[1] if cfg.rollout_tau is None else cfg.rollout_tau,
        "routers": {f"r{r}": router_summaries[r] for r in ROUNDS},
        "seconds": progress.seconds(),
    })
    written = write_metrics(out, result)
    write_citer_report(result, out)
    progress.step("report written")
    progress.close()
    return written


def select_tau(records: pd.DataFrame, costs: dict[str, ModelCost], delta: float) -> tuple[float, pd.Series | None]:
    """The cheapest swept τ within δ of LLM-only accuracy on these records (one split, one round), and its
    curve point; τ = 0 (every token from the LLM) when none qualifies."""
    refs = ev.references(records, costs)
    point = metrics.operating_point(ev.curve(records, refs), float(refs.at[ev.curves.LLM_ONLY, "accuracy"]), delta)
    return (0.0 if point is None else float(point["threshold"])), point


def summarize(profile: Profile, records: pd.DataFrame, latency: dict, plain_latency: dict,
              costs: dict[str, ModelCost], questions: pd.DataFrame, p: dict[str, Path], out: Path) -> dict:
    """Curves, the operating point chosen on the selection split and confirmed on the evaluation split,
    targets, and the comparison with the query-level strategies; draws the plots."""
    cfg, delta = profile.citer, profile.evaluation.delta
    split, select = profile.evaluation.split, cfg.select_split
    bytes_cost, flops_cost = ev.bytes_and_flops(costs)
    found, rounds = {}, {}
    for s in dict.fromkeys([select, split]):
        part = records[records["split"] == s]
        found[s] = {r: (ev.references(part[part["round"] == r], costs), part[part["round"] == r]) for r in ROUNDS}
    refs = found[split][ROUNDS[-1]][0]
    a_llm = float(refs.at[ev.curves.LLM_ONLY, "accuracy"])
    curves_by = {}
    for r in ROUNDS:
        tau, point = select_tau(found[select][r][1], costs, delta)
        test_refs, test_records = found[split][r]
        test_curve = ev.curve(test_records, test_refs)
        curves_by[r] = test_curve
        at = test_curve[test_curve["threshold"] == tau].iloc[0]
        best = metrics.operating_point(test_curve, a_llm, delta)
        rounds[f"r{r}"] = {
            "tau": tau, f"{select}_accuracy": None if point is None else float(point["accuracy"]),
            f"{select}_cost": None if point is None else float(point["cost"]),
            **{k: float(at[k]) for k in ("accuracy", "cost", "flops", "llm_token_share", "call_rate", "wall_s")},
            "latency_s": latency.get(r, {}).get(tau),
            "saving_at_iso_accuracy": metrics.saving_at_iso_accuracy(test_curve, a_llm, delta),
            "iso_accuracy_tau": None if best is None else float(best["threshold"]),
            "sweep": [{**row, "latency_s": latency.get(r, {}).get(row["threshold"])}
                      for row in test_curve.to_dict(orient="records")],
        }
    final = rounds[f"r{ROUNDS[-1]}"]
    targets = {}
    for k, r in rounds.items():
        iso_cost = 1 - r["saving_at_iso_accuracy"]  # NaN when no swept τ is within δ of LLM-only accuracy
        targets.update({
            f"{k}_accuracy_at_selected_tau": _target(r["accuracy"], a_llm - delta, ">="),
            f"{k}_bytes_at_selected_tau": _target(r["cost"], TARGET_COST, "<="),
            f"{k}_bytes_at_iso_accuracy_in_sweep": _target(iso_cost, TARGET_COST, "<="),
        })
    comparison = query_level_comparison(profile, questions, p, bytes_cost, flops_cost, curves_by[ROUNDS[-1]],
                                        final["accuracy"], a_llm, delta, out, refs)
    png = {
        "Accuracy vs bytes moved": plots.plot_accuracy_vs_cost(
            {f"CITER round {r}": c for r, c in curves_by.items()} | comparison.pop("curves"), refs, out / "accuracy_vs_bytes.png",
            profile=profile.name, split=split, cost_model="bytes moved: weights + KV cache read per forward pass"),
        "Accuracy vs FLOPs": plots.plot_accuracy_vs_cost(
            {f"CITER round {r}": c.assign(cost=c["flops"]) for r, c in curves_by.items()}, refs.assign(cost=refs["flops"]),
            out / "accuracy_vs_flops.png", profile=profile.name, split=split, cost_model="FLOPs = 2 · parameters · tokens"),
    }
    return {
        "context": {"profile": profile.name, "split": split, "select_split": select, "seed": profile.seed,
                    "cost_model": bytes_cost.describe(), "n": int(records[records["split"] == split]["id"].nunique()),
                    "delta": delta, "max_new_tokens": profile.sampling.max_new_tokens,
                    "latency_queries": cfg.latency_queries},
        "references": {name: {k: float(v) for k, v in row.items()} for name, row in refs.iterrows()},
        "plain_latency_s": plain_latency,
        "rounds": rounds,
        "targets": targets,
        "comparison": comparison,
        "plots": {k: v.name for k, v in png.items()},
    }


def _target(value: float, limit: float, relation: str) -> dict:
    met = value >= limit - 1e-9 if relation == ">=" else value <= limit + 1e-9  # NaN meets nothing
    return {"value": value, "limit": limit, "relation": relation, "met": bool(met)}


def query_level_comparison(profile: Profile, questions: pd.DataFrame, p: dict[str, Path], bytes_cost, flops_cost,
                           citer_curve: pd.DataFrame, accuracy: float, a_llm: float, delta: float, out: Path,
                           refs: pd.DataFrame) -> dict:
    """The evaluate stage's strategies re-priced in bytes moved (and FLOPs) beside CITER's last round."""
    if not (p["eval"] / "routers").is_dir() or not p["samples"].is_file():
        return {"available": False, "curves": {},
                "note": f"no query-level evaluation found under {p['eval']}; run `escalate evaluate --profile "
                        f"{profile.name}` first to compare"}
    routers, samples = ev.load_query_level(p["eval"], p["sater"] / "samples.parquet", pd.read_parquet(p["samples"]))
    split, n = profile.evaluation.split, profile.evaluation.n_thresholds
    by_bytes = ev.query_level_curves(questions, samples, routers, bytes_cost, split, n)
    by_flops = ev.query_level_curves(questions, samples, routers, flops_cost, split, n)
    targets = {"iso_accuracy": a_llm - delta, "citer_accuracy": accuracy}
    rows = ev.compare({"citer": citer_curve} | by_bytes, targets)
    for row, f in zip(rows, ev.compare({"citer": citer_curve.assign(cost=citer_curve["flops"])} | by_flops, targets)):
        row.update({f"flops_at_{k}": f[f"cost_at_{k}"] for k in targets})
    pd.DataFrame([{"strategy": k, **row} for k, c in by_bytes.items() for row in c.to_dict(orient="records")]) \
        .to_parquet(out / "query_level_curves.parquet", index=False)
    return {
        "available": True, "rows": rows, **{f"{k}_target": a for k, a in targets.items()},
        **{k: v for target in targets for k, v in _best(rows, target).items()},
        "llm_only_bytes_query_level": float(sum(bytes_cost.cost("llm", int(a), int(b)) for a, b in zip(
            *_llm_token_counts(samples, questions, split)))),
        "llm_only_bytes_citer": float(refs.at[ev.curves.LLM_ONLY, "bytes_total"]),
        # Plotted beside CITER: the cascades issue 8 names and the cheapest one at iso-accuracy (all are in the table).
        "curves": {name: c for name, c in by_bytes.items()
                   if name in PLOTTED or name == _best(rows, "iso_accuracy")["best_at_iso_accuracy"]},
    }


def _best(rows: list[dict], target: str) -> dict:
    """The cheapest query-level strategy reaching `target`, and CITER's cost over its (< 1: CITER moves less)."""
    column = f"cost_at_{target}"
    reached = [r for r in rows[1:] if not math.isnan(r[column])]
    best = min(reached, key=lambda r: r[column]) if reached else None
    return {f"best_at_{target}": best and best["strategy"], f"best_cost_at_{target}": best and best[column],
            f"citer_over_best_at_{target}": best and rows[0][column] / best[column]}


def _llm_token_counts(samples: pd.DataFrame, questions: pd.DataFrame, split: str) -> tuple[list[int], list[int]]:
    """The LLM's greedy token counts on `split` in the samples table (the cascades' LLM-only)."""
    ids = set(questions.loc[questions["split"] == split, "id"])
    g = samples[(samples["model"] == "llm") & (samples["sample_idx"] == 0) & samples["id"].isin(ids)]
    return g["n_prompt_tokens"].astype(int).tolist(), g["n_output_tokens"].astype(int).tolist()


def write_citer_report(result: dict, out: Path) -> Path:
    ctx, rounds, refs = result["context"], result["rounds"], result["references"]
    select = ctx["select_split"]
    rows = [{"strategy": name, "tau": None, "accuracy": r["accuracy"], "bytes": r["cost"], "flops": r["flops"],
             "llm_token_share": 1.0 if name == "LLM-only" else 0.0} for name, r in refs.items()]
    rows += [{"strategy": f"CITER round {k[1:]}", "tau": f"{v['tau']:.3g}", "accuracy": v["accuracy"], "bytes": v["cost"],
              "flops": v["flops"], "llm_token_share": v["llm_token_share"], "latency_s": v["latency_s"],
              "saving_at_iso_accuracy": v["saving_at_iso_accuracy"]} for k, v in rounds.items()]
    sections = {
        "Targets (issue 8; selected τ: chosen on " + select + "; in sweep: the cheapest τ on this split)": "\n".join(
            f"- {name}: {format_cell(t['value'])} (needs {t['relation']} {format_cell(t['limit'])}): "
            f"**{'met' if t['met'] else 'missed'}**" for name, t in result["targets"].items()),
        "Query-level strategies under the same cost model": _comparison_text(result["comparison"]),
        "Token labels": markdown_table([{"round": k, **{c: v["cases"].get(c, 0) for c in
                                                         ("slm_match", "llm_match", "slm_rollout", "llm_rollout", "neither")},
                                         "positive_share": v["positive_share"]} for k, v in result["labels"].items()])
        + f"\n\nRound 2's rollouts continue under the round-1 router at τ = {result['rollout_tau_r2']:.3g}; "
        f"labels changed from round 1 to round 2: {format_cell(result['labels_changed_r1_r2'])}.",
        "Routers": markdown_table([{"round": k, "val_auroc": v["val_auroc"], "val_loss": v["val_loss"],
                                    "best_epoch": v["best_epoch"], "n_positions": v["n_positions"]}
                                   for k, v in result["routers"].items()]),
        **{f"τ sweep, round {k[1:]} ({ctx['split']})": markdown_table(
            [{**row, "threshold": f"{row['threshold']:.3g}"} for row in v["sweep"]],
            ["threshold", "accuracy", "cost", "flops", "llm_token_share", "call_rate", "wall_s", "latency_s"])
           for k, v in rounds.items()},
        "Single-request latency of plain greedy decoding": "\n".join(
            f"- {role}-only: {format_cell(s)} s per question" for role, s in result["plain_latency_s"].items()) or "not measured",
        "How to read this": READING_GUIDE.format(select=select, n=ctx["latency_queries"]),
    }
    return write_report(out / "report.md", title=f"CITER token-level routing: {ctx['profile']}", context=ctx, rows=rows,
                        columns=["strategy", "tau", "accuracy", "bytes", "flops", "llm_token_share", "latency_s",
                                 "saving_at_iso_accuracy"],
                        plots=result["plots"], extra_sections=sections)


def _comparison_text(comparison: dict) -> str:
    if not comparison["available"]:
        return comparison["note"]
    lines = []
    for target, what in (("iso_accuracy", "within δ of LLM-only accuracy"), ("citer_accuracy", "CITER's own accuracy")):
        accuracy, best = format_cell(comparison[f"{target}_target"]), comparison[f"best_at_{target}"]
        if best is None:
            lines.append(f"- At {what} (≥ {accuracy}) no query-level strategy reaches it on this split.")
        else:
            lines.append(f"- At {what} (≥ {accuracy}) the cheapest query-level strategy is {best} at "
                         f"{format_cell(comparison[f'best_cost_at_{target}'])} of LLM-only bytes; CITER moves "
                         f"{format_cell(comparison[f'citer_over_best_at_{target}'])}× its bytes.")
    columns = ["strategy", "cost_at_iso_accuracy", "cost_at_citer_accuracy", "flops_at_iso_accuracy",
               "flops_at_citer_accuracy"]
    return "\n".join(lines) + "\n\n" + markdown_table(comparison["rows"], columns)


READING_GUIDE = """\
- `bytes`, `flops`: summed over questions and divided by LLM-only greedy decoding of the same questions;
  CITER pays the SLM on every token, the router on every token and the LLM where it writes (one pass per
  catch-up). Bytes moved: every weight and the KV cache of every attended position, once per forward pass.
- τ: the LLM writes a token when the router's P(LLM needed) > τ; τ = 0 is LLM-only output, τ = 1 SLM-only.
- The CITER rows are at the τ chosen on the {select} split (the cheapest point within δ of LLM-only accuracy
  there); `saving_at_iso_accuracy` is over the whole sweep on this split.
- `wall_s`: batched decoding's wall time per question (the LLM runs for the whole batch when any sequence
  needs it); `latency_s`: one question at a time, mean over the first {n} questions of this split.
- Query-level strategies are the evaluate stage's routers, re-priced from their stored samples."""
