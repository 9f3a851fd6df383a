"""Screenshots of what a reviewer sees in the MLflow UI: the retrain run's page and the champion's version page.

    .venv/bin/python bench/mlflow_ui.py                                  # the tiny profile's store (make demo)
    .venv/bin/python bench/mlflow_ui.py --tracking-uri sqlite:////tmp/x/mlflow.db --tag smoke

Starts `mlflow server` on 127.0.0.1 over an existing store (one `make demo` or the retrain test made),
finds the newest retrain run and the registered model's @champion, opens each page in headless
Chromium (Debian: `apt-get install chromium`) with a fresh browser profile and writes
bench/results/mlflow_ui_<tag>_<page>.png; the server is stopped by its process group id at the end,
however the script ends. Each URL carries ?workflowType=machine_learning, as the links escalate prints
do: a fresh profile's MLflow 3.17 UI opens in its GenAI view otherwise (escalate.tracking.EXPERIMENT_KIND).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from escalate.registry.aliases import CHAMPION, DEFAULT_NAME
from escalate.tracking import MODEL_TRAINING_VIEW, resolve_uri, ui_route

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: the tiny profile's)")
    parser.add_argument("--name", default=DEFAULT_NAME, help="registered model")
    parser.add_argument("--port", type=int, default=5077)
    parser.add_argument("--tag", default="demo", help="names the PNGs: mlflow_ui_<tag>_<page>.png")
    parser.add_argument("--wait-ms", type=int, default=20000, help="Chromium's virtual time for the page to render")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no Chromium on PATH: apt-get install -y chromium", file=sys.stderr)
        return 2
    uri = resolve_uri(args.tracking_uri, ROOT, "tiny")
    pages = page_routes(MlflowClient(tracking_uri=uri, registry_uri=uri), args.name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{args.port}"
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    # A store the client API made lacks the server's own migrations; the server's workers would race to apply them.
    subprocess.run([mlflow_cli, "db", "upgrade", uri], check=True, capture_output=True, timeout=300)
    server = subprocess.Popen(
        [mlflow_cli, "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(args.port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    try:
        wait_healthy(base, server)
        with tempfile.TemporaryDirectory(prefix="escalate-chromium-") as profile_dir:
            for page, route in pages.items():
                out = RESULTS / f"mlflow_ui_{args.tag}_{page}.png"
                subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                f"--user-data-dir={profile_dir}", "--window-size=1600,1400",
                                f"--virtual-time-budget={args.wait_ms}", f"--screenshot={out}", f"{base}/{route}"],
                               check=True, capture_output=True, timeout=180)
                print(f"{page}: {base}/{route} -> {out.relative_to(ROOT)}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started, by its group id
        server.wait(timeout=30)
    return 0


def page_routes(client: MlflowClient, name: str) -> dict[str, str]:
    """The UI routes to capture, in the model-training view (a fresh browser profile would open them in the GenAI
    view: escalate.tracking.EXPERIMENT_KIND says why): the experiment, its newest retrain run that registered
    versions, and @champion's version."""
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="attributes.run_name LIKE 'retrain-%'", order_by=["attributes.start_time DESC"])
    registering = [r for r in runs if r.data.tags.get("escalate.registered")]
    if not registering:
        raise SystemExit("no retrain run that registered versions in this store: run `make demo` first")
    run = registering[0].info
    champion = client.get_model_version_by_alias(name, CHAMPION)
    return {"experiment": ui_route(run.experiment_id), "run": ui_route(run.experiment_id, run.run_id),
            "champion": f"#/models/{name}/versions/{champion.version}{MODEL_TRAINING_VIEW}"}


def wait_healthy(base: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"mlflow server not healthy at {base} after {timeout_s:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
