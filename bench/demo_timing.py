"""How long `make demo` takes after install: a clean run, its first results table, and a rerun with nothing changed.

    .venv/bin/python bench/demo_timing.py --profile tiny        # about 30-50 min on 2 cores
    .venv/bin/python bench/demo_timing.py --profile tiny --keep /tmp/demo   # keep the clone (its metrics/, dvc.lock)

Clones the committed project into a scratch directory (an empty DVC cache, no artifacts/, no mlruns/), then
runs what `make demo` runs after its install step, in that clone with this interpreter: the `retrain` flow, then
the `promote` flow, then `retrain` again with nothing changed; then stops the serving it started. Every output
line is timestamped; the first results table is the evaluate stage's summary (its header line holds `strategy`,
`accuracy` and `cost`). Writes bench/results/demo_timing_<profile>.{md,json}; issue 15's targets: clean ≤ 20 min,
first table ≤ 5 min, rerun ≤ 2 min.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from machine import cpu_model  # bench/machine.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parents[1]
TARGETS_S = {"clean": 20 * 60, "first_table": 5 * 60, "rerun": 2 * 60}
TABLE_HEADER = re.compile(r"^\s*strategy\s+.*\baccuracy\b.*\bcost\b")


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, float | None]:
    """Run `cmd`, echoing and logging each line with its offset; (seconds, offset of the first results table)."""
    start, first_table = time.perf_counter(), None
    with log.open("a") as out, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            offset = time.perf_counter() - start
            if first_table is None and TABLE_HEADER.match(line):
                first_table = offset
            out.write(f"[{offset:8.1f}s] {line}")
            sys.stdout.write(line)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); its output is in {log}")
    return time.perf_counter() - start, first_table



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--keep", type=Path, default=None, help="clone here and keep it (default: a temporary one)")
    args = parser.parse_args()
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="escalate-demo-"))
    shutil.rmtree(scratch, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(scratch)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=scratch, capture_output=True, text=True,
                            check=True).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(scratch), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "ESCALATE_SERVE_PYTHON": os.environ.get("ESCALATE_SERVE_PYTHON", str(ROOT / ".venv-serve" / "bin" / "python")),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = ROOT / "bench" / "results" / f"demo_timing_{args.profile}.log"
    log.write_text("")
    python = sys.executable
    try:
        retrain, first_table = timed([python, "-m", "flows.retrain", "--profile", args.profile], scratch, env, log)
        promote, _ = timed([python, "-m", "flows.promote", "--profile", args.profile], scratch, env, log)
        rerun, _ = timed([python, "-m", "flows.retrain", "--profile", args.profile], scratch, env, log)
    finally:
        subprocess.run([python, "-m", "escalate.cli", "serve", "--stop"], cwd=scratch, env=env, check=False)
    figures = {"clean": retrain + promote, "retrain": retrain, "promote": promote, "first_table": first_table,
               "rerun": rerun}
    verdicts = {k: figures[k] is not None and figures[k] <= limit for k, limit in TARGETS_S.items()}
    result = {"profile": args.profile, "commit": commit, "date": date.today().isoformat(),
              "machine": f"{cpu_model()}, {os.cpu_count()} CPUs", "seconds": figures, "targets_s": TARGETS_S,
              "met": verdicts}
    out = ROOT / "bench" / "results" / f"demo_timing_{args.profile}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))

    def minutes(seconds: float | None) -> str:
        return "—" if seconds is None else f"{seconds / 60:.1f} min"

    rows = [("a clean demo after install (retrain + promote)", "clean"), ("its first results table", "first_table"),
            ("a rerun with nothing changed", "rerun")]
    text = "\n".join([
        f"# `make demo` after install: profile {args.profile}", "",
        f"- command: `python bench/demo_timing.py --profile {args.profile}` ({result['date']}, commit {commit})",
        f"- machine: {result['machine']}; load average at the end {os.getloadavg()[0]:.1f}",
        f"- of the clean run: retrain {minutes(retrain)}, promote {minutes(promote)}; timestamped output: {log.name} "
        "(not committed)",
        "", "| | measured | target | |", "|---|---|---|---|",
        *[f"| {label} | {minutes(figures[key])} | ≤ {TARGETS_S[key] // 60} min | "
          f"{'met' if verdicts[key] else '**missed**'} |" for label, key in rows], ""])
    out.with_suffix(".md").write_text(text)
    print(text)
    if args.keep is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
