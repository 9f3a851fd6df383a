"""`escalate serve` (the gateway) and `escalate promote` (the Prefect flow `promote`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from escalate.locks import Busy
from escalate.serving.deployment import CURRENT_FILE, SERVING_DIR


def add_serving_commands(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway in front of the deployed cascade",
                           description="Run the gateway. It serves serving/current.json (the last promotion) "
                                       "and is switched by `escalate promote`. The client key is $ESCALATE_API_KEY, "
                                       "else the one kept in serving/gateway.key; /admin/deploy takes "
                                       "$ESCALATE_ADMIN_KEY, else serving/admin.key; /metrics answers loopback, "
                                       "or $ESCALATE_METRICS_KEY when set.")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--root", type=Path, default=Path("."), help="project root holding serving/")
    serve.add_argument("--deployment", type=Path, default=None, help="a deployment.json to serve (default: current)")
    serve.add_argument("--no-current", action="store_true", help="start without a deployment (promote loads one)")
    serve.add_argument("--detach", action="store_true", help="start in the background; serving/gateway.json says where")
    serve.add_argument("--stop", action="store_true",
                       help="stop the background gateway and the vLLM servers of the current deployment")
    serve.add_argument("--max-concurrency", type=int, default=64,
                       help="requests answered at once (each mostly awaits its model servers, which batch them)")
    serve.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond that before 429s")
    serve.add_argument("--max-body-bytes", type=int, default=64_000, help="larger bodies get 413")
    serve.add_argument("--deadline", type=float, default=30.0,
                       help="seconds a request may take in all, queue included; then 504")
    serve.add_argument("--slm-share", type=float, default=0.5,
                       help="fraction of the deadline the SLM may take; past it the request escalates to the LLM")
    serve.add_argument("--body-timeout", type=float, default=10.0, help="seconds to send a request body; then 408")
    serve.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json (off by default)")
    serve.add_argument("--traffic-dir", type=Path, default=None,
                       help="where answered exchanges are logged for `harvest` (default: serving/traffic under --root)")
    serve.add_argument("--no-traffic-log", action="store_true",
                       help="log no exchange (a client opts one request out with the header x-escalate-no-log: 1)")
    serve.add_argument("--traffic-flush", type=float, default=1.0,
                       help="seconds between traffic-log writes: at most this much is lost if the gateway is killed")
    serve.add_argument("--traffic-retention-days", type=int, default=30,
                       help="traffic partitions (days) older than this are deleted")
    serve.add_argument("--shadow-fraction", type=float, default=0.0,
                       help="share of the answers the SLM kept that are also sent to the LLM off the request path, "
                            "to label them (agreed or not) in the traffic log and /metrics (default 0: off)")
    serve.add_argument("--shadow-max-per-minute", type=int, default=60,
                       help="the most shadow calls in any minute; beyond it they are dropped and counted")
    serve.set_defaults(handler=_serve)

    promote = sub.add_parser("promote", help="serve a registry alias: vLLM servers, gateway switch, smoke test",
                             description="Runs the Prefect flow `promote`: resolve the alias, export its bundle, start "
                                         "vLLM for the self-hosted models, switch the gateway, send smoke queries, "
                                         "record the deployment and move @serving. On any failure everything is "
                                         "left as it was and the exit status is 1.")
    promote.add_argument("--alias", default="champion", help="registry alias to serve (default: champion)")
    promote.add_argument("--profile", default="tiny", help="profile whose tracking URI holds the registry")
    promote.add_argument("--root", type=Path, default=Path("."))
    promote.add_argument("--timeout", type=float, default=300.0, help="seconds each server may take to be healthy")
    shadow = promote.add_argument_group("challenger in shadow", "compare a version with the served one on live "
                                        "traffic, off the user's path, without moving any alias (no Prefect flow)")
    shadow.add_argument("--shadow", metavar="ALIAS_OR_VERSION",
                        help="load this alias (or version number) into the running gateway beside the served "
                             "deployment: it scores every answered request, and /admin/status and /metrics compare")
    shadow.add_argument("--shadow-max-per-minute", type=int, default=60,
                        help="SLM calls the challenger may make of its own in any minute (none when it shares "
                             "the champion's SLM: it reuses the champion's generation)")
    shadow.add_argument("--shadow-report", action="store_true",
                        help="write the comparison so far to MLflow on the challenger's version (metrics "
                             "shadow.*, artifact registration/shadow_comparison.json)")
    shadow.add_argument("--shadow-stop", action="store_true",
                        help="unload the challenger (after --shadow-report when both are given)")
    promote.set_defaults(handler=_promote)

    export = sub.add_parser("export", help="write a deployment (bundle + deployment.json) for servers run elsewhere",
                            description="Export @alias's bundle to DIR with a deployment.json naming the servers "
                                        "(Kubernetes, compose) that serve its models; `escalate serve --deployment "
                                        "DIR/deployment.json` then serves it. vLLM must serve each model under "
                                        "its role name (--served-model-name slm / llm). A token-level (CITER) "
                                        "bundle is decoded in the gateway's process and takes no --endpoint.")
    export.add_argument("--alias", default="champion")
    export.add_argument("--to", type=Path, required=True, help="directory to write (a volume the gateway mounts)")
    export.add_argument("--endpoint", action="append", default=[], metavar="ROLE=URL",
                        help="where a model's OpenAI server is, e.g. slm=http://vllm-slm:8000 (repeat per "
                             "self-hosted model of a query-level bundle)")
    export.add_argument("--profile", default="tiny", help="profile whose tracking URI holds the registry")
    export.add_argument("--root", type=Path, default=Path("."))
    export.set_defaults(handler=_export)


def _serve(args: argparse.Namespace) -> int:
    # MLflow, FastAPI and the engines: seconds to import; every `escalate` command builds this parser, few serve
    from escalate.serving import gateway_process
    from escalate.serving.deployment import current

    root = args.root.resolve()
    if args.stop:
        gateway = gateway_process.running(root)
        if gateway is not None:
            gateway.stop()
            print(f"stopped the gateway at {gateway.url} (pid {gateway.pid})")
        from escalate.serving.promote import retire, shadow_stop, sweep  # as above

        shadow_stop(root)  # the gateway is gone: only a challenger's own servers are left to stop
        deployment = current(root)
        retire(deployment)
        if deployment is not None:
            (root / SERVING_DIR / CURRENT_FILE).unlink(missing_ok=True)
            print(f"stopped the servers of {deployment.label}")
        try:
            for label in sweep(root):
                print(f"stopped the leftover servers of {label} (a promotion killed earlier)")
        except Busy as exc:
            print(f"left the servers of the promotion in progress alone: {exc}")
        return 0
    if args.detach:
        gateway = gateway_process.running(root) or gateway_process.start(root, args.port, args.host)
        print(f"gateway at {gateway.url}/v1 (pid {gateway.pid}, log {gateway.log})")
        return 0
    return _run_gateway(args, root)


def _run_gateway(args: argparse.Namespace, root: Path) -> int:
    # MLflow, FastAPI and the engines: seconds to import; every `escalate` command builds this parser, few serve
    import uvicorn

    from escalate.serving.deployment import current
    from escalate.serving.gateway import METRICS_KEY_ENV, GatewaySettings, create_app, load_current
    from escalate.serving.gateway_process import admin_key, api_key, vllm_key
    from escalate.serving.traffic import TRAFFIC_DIR
    from escalate.serving.vllm_server import VLLM_KEY_ENV

    metrics_key = os.environ.get(METRICS_KEY_ENV)
    traffic = None if args.no_traffic_log else str(args.traffic_dir or root / SERVING_DIR / TRAFFIC_DIR)
    settings = GatewaySettings(api_keys=(api_key(root),), max_body_bytes=args.max_body_bytes,
                               max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                               admin_keys=(admin_key(root),), metrics_keys=(metrics_key,) if metrics_key else (),
                               serving_dir=str(root / SERVING_DIR), deadline_s=args.deadline,
                               slm_share=args.slm_share, body_timeout_s=args.body_timeout, docs=args.docs,
                               traffic_dir=traffic, traffic_flush_s=args.traffic_flush,
                               traffic_retention_days=args.traffic_retention_days,
                               shadow_fraction=args.shadow_fraction, shadow_max_per_minute=args.shadow_max_per_minute)
    os.environ[VLLM_KEY_ENV] = vllm_key(root)  # the deployments promote writes name it for their servers' key
    app = create_app(settings)
    live = None if args.deployment or args.no_current else current(root)
    deployment = args.deployment or (Path(live.path) if live else None)
    if deployment:
        print(f"loading {deployment}: {load_current(app, Path(deployment))}", flush=True)
    # Idle and half-sent connections are bounded: 5 s keep-alive, 16 KiB of headers, and a cap on open
    # connections (the body itself has --body-timeout), so slow senders cannot pile up sockets.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=5,
                h11_max_incomplete_event_size=16 * 1024,
                limit_concurrency=4 * (args.max_concurrency + args.max_queue) + 16)
    return 0


def _export(args: argparse.Namespace) -> int:
    # MLflow, FastAPI and the engines: seconds to import; every `escalate` command builds this parser, few serve
    from escalate.registry.aliases import profile_registry
    from escalate.serving.promote import export

    endpoints = dict(item.split("=", 1) for item in args.endpoint if "=" in item)
    bad = [item for item in args.endpoint if "=" not in item] + [r for r in endpoints if r not in ("slm", "llm")]
    if bad:
        print(f"escalate: error: --endpoint takes ROLE=URL with ROLE slm or llm; got {bad}", file=sys.stderr)
        return 2
    root = args.root.resolve()
    registry = profile_registry(args.profile, root)
    deployment = export(registry, args.alias, root, args.to.resolve(), endpoints)
    print(f"wrote {deployment.path} ({deployment.label}, endpoints {deployment.endpoints})")
    return 0


def _promote(args: argparse.Namespace) -> int:
    """The flow lives in flows/ (escalate itself never imports Prefect): run it as its own process."""
    if args.shadow or args.shadow_report or args.shadow_stop:
        return _shadow(args)
    command = [sys.executable, "-m", "flows.promote", "--alias", args.alias, "--profile", args.profile,
               "--root", str(args.root), "--timeout", str(args.timeout)]
    return subprocess.call(command, env=os.environ.copy())


def _shadow(args: argparse.Namespace) -> int:
    """--shadow, --shadow-report, --shadow-stop: admin calls on the running gateway, and the registry."""
    # MLflow and the gateway's engines: seconds to import; every `escalate` command builds this parser
    from escalate.registry.aliases import RegistryError, profile_registry
    from escalate.serving.promote import PromotionFailed, shadow_report, shadow_start, shadow_status, shadow_stop

    if args.shadow and (args.shadow_report or args.shadow_stop):
        print("escalate: error: --shadow loads a challenger; report on or stop it in a later call", file=sys.stderr)
        return 2
    if args.shadow_max_per_minute < 1:
        print("escalate: error: --shadow-max-per-minute must be >= 1", file=sys.stderr)
        return 2
    root = args.root.resolve()
    try:
        if args.shadow:
            loaded = shadow_start(profile_registry(args.profile, root), root, args.shadow, args.shadow_max_per_minute,
                                  args.timeout)
            print(f"challenger {loaded['challenger']['label']} scores live traffic in shadow; no alias moved"
                  + (f" (replaced {loaded['previous']['label']})" if loaded["previous"] else ""))
            return 0
        if args.shadow_report:
            status = shadow_status(root)
            version = shadow_report(profile_registry(args.profile, root), status)
            figures = {k: v for k, v in status["comparison"].items() if v is not None}
            print(f"wrote the comparison to {status['model']} v{version}: {figures}")
        if args.shadow_stop:
            final = shadow_stop(root)
            print(f"unloaded the challenger {final['label']}" if final else "no challenger was loaded")
    except (PromotionFailed, RegistryError) as exc:
        print(f"escalate: error: {exc}", file=sys.stderr)
        return 1
    return 0
