"""Benchmark `escalate calibrate`: run it, then write its report with the machine, load, time and commit.

    python bench/calibrate.py [--profile tiny] [--n 150] [--seed 0]

Writes bench/results/calibrate_<profile>.md: the command's own report.md unchanged, with the run's machine,
load, time and commit after its title, so every figure in the file is the command's. Needs the questions and
the zoo (`escalate data build`, `escalate zoo build`), as the command does.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import commit, cpu_model  # bench/ is the script's directory, so its sibling imports as a top-level module


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    command = ["escalate", "calibrate", "--profile", args.profile, "--n", str(args.n), "--seed", str(args.seed)]
    at_start, start = load(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "escalate.cli", *command[1:]], check=True)
    seconds, at_end = time.perf_counter() - start, load()
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # Linux reports KiB
    report = (Path("artifacts") / args.profile / "calibration" / "report.md").read_text()
    header = [
        f"<!-- written by `python bench/calibrate.py --profile {args.profile} --n {args.n} --seed {args.seed}` -->",
        "",
        f"`{' '.join(command)}` at commit {commit()}.",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs visible; load average (1, 5, 15 min) {at_start} when it "
        f"started, {at_end} when it ended. Wall time {seconds / 60:.0f} min {seconds % 60:02.0f} s, peak RSS "
        f"{peak_gb:.1f} GB.",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"calibrate_{args.profile}.md"
    title, body = report.split("\n", 1)  # the report's own title first, then where it was measured
    path.write_text("\n".join([title, "", *header]) + body)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
