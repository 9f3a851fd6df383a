"""Does the served cascade route as the registered bundle does in process? Same questions, both ways.

    make demo        # @champion served behind the gateway
    python bench/serving_parity.py --n 100 --out bench/results/serving_parity.md

In process the bundle generates with Hugging Face (what evaluation measured); served, vLLM
generates. Different kernels can flip a near-tie greedy token, which changes the text and the
router's score; this counts how often the route and the answer agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import openai
import pandas as pd

from escalate.config import load_profile
from escalate.registry.bundle import keep_sys_path, use_tracking_uri
from escalate.serving import gateway_process
from escalate.serving.deployment import current
from escalate.stages import paths
from escalate.tracking import resolve_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--n", type=int, default=100, help="test questions to ask")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    gateway, deployment = gateway_process.running(root), current(root)
    if gateway is None or deployment is None:
        print("no running gateway with a deployment under", root, "- run `make demo` or `make serve`", file=sys.stderr)
        return 2
    profile = load_profile(args.profile, root)
    questions = pd.read_parquet(paths(profile, root)["questions"])
    questions = questions[questions["split"] == profile.evaluation.split].head(args.n)
    uri = resolve_uri(None, root, profile)
    with use_tracking_uri(uri), keep_sys_path():
        model = mlflow.pyfunc.load_model(f"models:/{deployment.model_name}/{deployment.version}")
    local = model.predict(pd.DataFrame({"question": questions["question"].tolist()}))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway_process.api_key(root))
    served = []
    for question in questions["question"]:
        r = client.completions.create(model=deployment.model_name, prompt=question)
        served.append({"answer": r.choices[0].text.strip(), **r.model_extra["escalate"]})
    served = pd.DataFrame(served)
    route = float(np.mean(served["model"].to_numpy() == local["model"].to_numpy()))
    answer = float(np.mean(served["answer"].to_numpy() == local["answer"].str.strip().to_numpy()))
    gap = np.abs(served["score"].astype(float).to_numpy() - local["score"].astype(float).to_numpy())
    lines = [f"# Serving parity: {deployment.label} (strategy {deployment.read()[0].strategy}), profile {profile.name}, "
             f"{len(questions)} {profile.evaluation.split} questions", "",
             "| measure | value |", "|---|---|",
             f"| same route (SLM kept / escalated) | {route:.3f} |", f"| same answer text | {answer:.3f} |",
             f"| router score difference, median | {np.median(gap):.5f} |",
             f"| router score difference, max | {gap.max():.5f} |",
             f"| escalated in process / served | {(local['model'] == 'llm').mean():.3f} / "
             f"{(served['model'] == 'llm').mean():.3f} |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"route": route, "answer": answer,
                                                             "median_gap": float(np.median(gap))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
