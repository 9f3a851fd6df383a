"""Does the zoo land the same whatever the CPU? Build it under 1 and 2 torch threads and compare accuracies.

    python bench/zoo_threads.py --profile smoke    # seconds
    python bench/zoo_threads.py --profile tiny     # about 45 min on 2 cores: run it on a machine nobody shares
    python bench/zoo_threads.py --profile tiny --parallel   # both builds at once: less wall time, same figures

A different thread count splits the same float sums differently, as a different CPU does, so two builds
differ only in rounding; each runs in a fresh subprocess (torch's thread pool is fixed once it starts).
Each builds the profile's questions and zoo from scratch under bench/results/zoo_threads_<profile>.tmp/
(git-ignored), with the profile's gate bands off so a build outside them is still measured, and grades the
chosen SLM and LLM greedily on calib (the sample that chose the checkpoint) and on test (as the sample
stage would: profile.sampling.max_new_tokens). Writes bench/results/zoo_threads_<profile>.md; the target
is every figure within 3 points across thread counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd
import torch
from machine import cpu_model  # bench/machine.py: the script's own directory is on sys.path
from transformers import AutoModelForCausalLM, AutoTokenizer

from escalate.config import load_profile
from escalate.evaluation.report import markdown_table
from escalate.models import zoo
from escalate.stages.base import load_questions, paths
from escalate.stages.questions import QuestionsStage
from escalate.stages.zoo import ZooStage, gate_failures, graded_items

ROOT = Path(__file__).resolve().parents[1]
THREADS = (1, 2)
TARGET = 0.03


def worker(profile_name: str, threads: int, root: Path) -> dict:
    """Build questions and zoo under `threads` torch threads in `root`; the accuracies of the chosen models."""
    torch.set_num_threads(threads)
    profile = load_profile(profile_name, ROOT)
    assert profile.zoo is not None, f"profile {profile_name} has no zoo section"
    banded = profile.zoo
    profile = dataclasses.replace(profile, zoo=dataclasses.replace(
        banded, shipped=None, slm_accuracy=None, llm_min_accuracy=None))
    start = time.perf_counter()
    QuestionsStage().build(profile, root)
    ZooStage().build(profile, root)
    seconds = time.perf_counter() - start
    out = paths(profile, root)["zoo"]
    summary = json.loads((out / "zoo.json").read_text())
    items = graded_items(load_questions(profile, root).query("split == 'test'"))
    banded_at_all = banded.slm_accuracy is not None or banded.llm_min_accuracy is not None
    gate = ("; ".join(gate_failures(banded, summary)) or "passed") if banded_at_all else "no band set"
    result = {"threads": threads, "build_seconds": round(seconds, 1), "gate": gate, "models": {}}
    for role, m in summary["models"].items():
        model = AutoModelForCausalLM.from_pretrained(out / role).eval()
        tokenizer = AutoTokenizer.from_pretrained(out / role)
        result["models"][role] = {
            "calib": m["calib_accuracy"], "chosen_step": m["chosen_step"], "steps_run": m["steps_run"],
            "stopped": m["stopped"],
            "test": zoo.accuracy(model, tokenizer, items, profile.sampling.max_new_tokens)}
    return result



def report(profile: str, runs: list[dict], calib_questions: int, n_test: int) -> str:
    rows, worst = [], 0.0
    for role in ("slm", "llm"):
        a, b = (r["models"][role] for r in runs)
        for split in ("calib", "test"):
            diff = abs(a[split] - b[split])
            worst = max(worst, diff)
            rows.append({"model": role.upper(), "split": split, "1 thread": f"{a[split]:.3f}",
                         "2 threads": f"{b[split]:.3f}", "|difference|": f"{diff:.3f}"})
    steps = [{"model": role.upper(), "threads": r["threads"], "chosen step": r["models"][role]["chosen_step"],
              "steps run": r["models"][role]["steps_run"], "stopped": r["models"][role]["stopped"],
              "zoo build s (both models)": r["build_seconds"]} for role in ("slm", "llm") for r in runs]
    verdict = "met" if worst <= TARGET else "missed"
    gates = "; ".join(f"{r['threads']} thread(s): {r['gate']}" for r in runs)
    return "\n".join([
        f"# The zoo under 1 and 2 torch threads: profile {profile}",
        "",
        f"- **command:** `python bench/zoo_threads.py --profile {profile}` ({date.today().isoformat()})",
        f"- **machine:** {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        f"- **graded:** greedy answers; calib: the {calib_questions} questions that chose the checkpoint; test: "
        f"all {n_test}",
        f"- **target:** every figure within {TARGET * 100:.0f} points across thread counts: **{verdict}** "
        f"(largest difference {worst:.3f})",
        f"- **profile's gate (bands off while measuring):** {gates}",
        *(["- **note:** smoke trains 12 steps and grades 24 questions: equal figures here show the plumbing "
           "runs, not that two CPUs agree; that takes `--profile tiny`"] if profile == "smoke" else []),
        "",
        markdown_table(rows),
        "",
        markdown_table(steps),
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke", choices=["smoke", "tiny"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--parallel", action="store_true",
                        help="build both at once (halves the wall time; their build seconds then include contention)")
    parser.add_argument("--worker-threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-root", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_threads is not None:
        result = worker(args.profile, args.worker_threads, args.worker_root)
        (args.worker_root / "result.json").write_text(json.dumps(result, indent=2))
        return

    scratch = args.out / f"zoo_threads_{args.profile}.tmp"
    workers = []
    for threads in THREADS:
        root = scratch / f"threads{threads}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        worker_process = subprocess.Popen([sys.executable, __file__, "--profile", args.profile, "--worker-threads",
                                           str(threads), "--worker-root", str(root)], env=env)
        if not args.parallel and worker_process.wait() != 0:
            sys.exit(f"the {threads}-thread build failed (exit {worker_process.returncode})")
        workers.append((threads, root, worker_process))
    for threads, _, worker_process in workers:
        if worker_process.wait() != 0:
            sys.exit(f"the {threads}-thread build failed (exit {worker_process.returncode})")
    runs = [json.loads((root / "result.json").read_text()) for _, root, _ in workers]
    zoo_json = json.loads((scratch / "threads1" / "artifacts" / args.profile / "zoo" / "zoo.json").read_text())
    questions = scratch / "threads1" / "artifacts" / args.profile / "questions.parquet"
    n_test = int((pd.read_parquet(questions)["split"] == "test").sum())
    text = report(args.profile, runs, zoo_json["calib_questions"], n_test)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"zoo_threads_{args.profile}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
