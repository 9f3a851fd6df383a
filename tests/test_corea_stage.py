"""The COREA stage: its domains and targets as pure functions, and `dvc repro corea@smoke` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from escalate import stages
from escalate.cli import main
from escalate.config import load_profile
from escalate.corea import report as corea_report
from escalate.corea.confidence import parse_confidence
from escalate.corea.stage import corea_candidate
from escalate.data.validation import ensure_valid
from escalate.stages.registry import stage_log
from escalate.tracking import Tracker
from tests.checkpoints import weights_changed
from tests.conftest import dvc_repro

ROOT = Path(__file__).resolve().parents[1]


def questions(difficulties: list[float], split: str) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"{split}{i}" for i in range(len(difficulties))], "split": split,
                         "difficulty": difficulties})


def test_domains_hold_out_the_hard_questions_and_keep_those_without_a_difficulty_in() -> None:
    q = questions([1, 2, 3, 4, math.nan], "test")
    masks = corea_report.domain_masks(q, ood_min_difficulty=3)
    assert list(masks["in_domain"]) == [True, True, False, False, True]
    assert list(masks["ood"]) == [False, False, True, True, False]
    assert masks["all"].all()
    none = corea_report.domain_masks(q, ood_min_difficulty=None)
    assert none["in_domain"].all() and not none["ood"].any()


def test_out_of_domain_questions_are_tested_with_the_in_domain_calib_threshold() -> None:
    q = pd.concat([questions([1, 4], "test"), questions([1, 4], "calib"), questions([1], "train")], ignore_index=True)
    masks = corea_report.domain_masks(q, ood_min_difficulty=4)
    picked = {d: list(corea_report.eval_questions(q, masks, d, "test")["id"]) for d in masks}
    assert picked == {"all": ["test0", "test1", "calib0", "calib1"], "in_domain": ["test0", "calib0"],
                      "ood": ["test1", "calib0"]}


def row(model: str, ece: float, auroc: float, accuracy: float, saving: float) -> dict:
    return {"model": model, "domain": "in_domain", "ece": ece, "auroc": auroc, "accuracy": accuracy,
            "saving_at_iso_accuracy": saving}


def test_targets_compare_corea_with_rlvr_in_domain() -> None:
    rows = [row("rlvr", 0.20, 0.60, 0.50, 0.10), {**row("corea", 0.11, 0.66, 0.495, 0.25), "distinct_confidences": 5},
            {**row("corea", 0.9, 0.1, 0.1, 0.0), "domain": "ood"}]  # out-of-domain rows are not judged
    got = corea_report.check_targets(rows)
    assert got["ece_reduction"]["value"] == pytest.approx(0.45) and got["ece_reduction"]["met"]
    assert got["distinct_confidences"]["value"] == 5 and got["distinct_confidences"]["met"]
    assert got["auroc_gain"]["value"] == pytest.approx(0.06) and got["auroc_gain"]["met"]
    assert got["accuracy_drop"]["value"] == pytest.approx(0.005) and got["accuracy_drop"]["met"]
    assert got["saving"]["value"] == 0.25 and got["saving"]["met"]
    missed = corea_report.check_targets([row("rlvr", 0.20, 0.60, 0.50, 0.1), row("corea", 0.15, 0.62, 0.48, math.nan)])
    assert {k: v["met"] for k, v in missed.items()} == dict.fromkeys(corea_report.TARGETS, False)
    assert missed["ece_reduction"]["value"] == pytest.approx(0.25)


def test_train_without_a_corea_section_exits_2_saying_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str], bare_gpu_root: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["corea", "train", "--profile", "gpu", "--root", str(bare_gpu_root)]) == 2
    assert "profile 'gpu' has no corea section" in capsys.readouterr().err


# --- end to end on the smoke profile -------------------------------------------------------------


@pytest.fixture(scope="module")
def corea_project(smoke_pipeline: Path) -> Path:
    """The smoke project after `dvc repro corea@smoke`: the DVC stage, the CLI and build_corea, for real."""
    return dvc_repro(smoke_pipeline, "corea@smoke")


@pytest.mark.slow
def test_stage_trains_every_model_and_writes_validated_outputs(corea_project: Path) -> None:
    profile = load_profile("smoke", root=corea_project)
    p = stages.paths(profile, corea_project)
    out = p["corea"]
    assert weights_changed(p["zoo"] / "slm", out / "warmup")
    assert weights_changed(out / "warmup", out / "rlvr") and weights_changed(out / "warmup", out / "corea")
    for table, name in (("samples", "train_samples"), ("refusal_sft", "warmup"), ("samples", "samples")):
        assert json.loads((out / f"{name}_report.json").read_text())["ok"]
        ensure_valid(pd.read_parquet(out / f"{name}.parquet"), table)
    warmup = pd.read_parquet(out / "warmup.parquet")
    assert all(parse_confidence(c).status == "ok" for c in warmup["completion"])
    # the warm-up sees every difficulty; RL only those below corea.ood_min_difficulty (2)
    train = pd.read_parquet(p["questions"]).query("split == 'train'").set_index("id")["difficulty"]
    assert set(train[warmup["id"]]) == {1, 2}
    samples = pd.read_parquet(out / "samples.parquet")
    assert set(samples["model"]) == set(corea_report.VARIANTS) and set(samples["split"]) == {"calib", "test"}
    assert (samples["sample_idx"] == 0).all()  # greedy only: the router reads nothing else

    metrics = json.loads((out / "metrics.json").read_text())
    assert {(r["domain"], r["model"]) for r in metrics["rows"]} == {
        (d, m) for d in ("all", "in_domain", "ood") for m in corea_report.MODELS}
    assert set(metrics["targets"]) == set(corea_report.TARGETS)
    context = metrics["context"]
    assert context.pop("cost_model").startswith("token prices")
    assert context == {"profile": "smoke", "split": "test", "seed": 0, "delta": 0.02, "ood_min_difficulty": 2,
                       "n_warmup_questions": len(train), "n_rl_questions": int((train < 2).sum())}
    assert metrics["training"]["rlvr"]["steps"] == metrics["training"]["corea"]["steps"] == profile.corea.grpo.steps
    assert "calibration" in metrics["training"]["corea"]["rewards"]
    assert "calibration" not in metrics["training"]["rlvr"]["rewards"]
    report = (out / "report.md").read_text()
    assert report.startswith("# COREA vs RLVR: smoke") and "## Targets" in report and "## Out of domain" in report
    for model in corea_report.MODELS:
        for domain in ("in_domain", "ood"):
            png = out / "eval" / model / domain / f"reliability_{corea_report.ROUTER[model]}.png"
            assert png.read_bytes()[:4] == b"\x89PNG" and f"]({png.relative_to(out)})" in report


@pytest.mark.slow
def test_stage_log_puts_every_figure_under_its_models_prefix(corea_project: Path, mlflow_uri: str) -> None:
    profile = load_profile("smoke", root=corea_project)
    record = stage_log("corea", profile, corea_project)
    for key in ("corea/in_domain/ece", "corea/ood/accuracy", "rlvr/in_domain/brier", "base/all/accuracy",
                "corea/in_domain/saving_at_iso_accuracy", "corea/targets/accuracy_drop"):
        assert key in record["metrics"], key
    assert {"corea/train/calibration", "rlvr/train/correctness", "warmup/train/loss"} <= set(record["series"])

    tracker = Tracker(mlflow_uri, "corea-test", corea_project)
    run_id = tracker.start("corea")
    tracker.metrics(run_id, record["metrics"])
    for key, values in record["series"].items():
        tracker.series(run_id, key, values)
    tracker.end(run_id, ok=True)
    logged = MlflowClient(tracking_uri=tracker.uri).get_run(run_id).data.metrics
    assert {k.split("/")[0] for k in logged} == set(corea_report.MODELS)
    assert logged["corea/targets/accuracy_drop"] == record["metrics"]["corea/targets/accuracy_drop"]


@pytest.mark.slow
def test_candidate_is_the_corea_checkpoint_with_its_whole_split_evaluation(corea_project: Path) -> None:
    profile = load_profile("smoke", root=corea_project)
    candidate, eval_dir = corea_candidate(profile, corea_project)
    assert Path(candidate.models["slm"].source) == (stages.paths(profile, corea_project)["corea"] / "corea").resolve()
    assert candidate.models["slm"].name == f"{profile.models['slm'].name}-corea"
    assert candidate.models["llm"] == profile.models["llm"]
    result = json.loads((eval_dir / "metrics.json").read_text())
    assert [r["strategy"] for r in result["summary"]][0] == "corea_confidence"
    assert set(pd.read_parquet(eval_dir / "records.parquet")["strategy"]) == {"corea_confidence"}
    assert result["context"]["n"] == 24  # every test question of the smoke profile
