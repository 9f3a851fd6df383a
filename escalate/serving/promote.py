"""Promote a registry alias to serving: export, start vLLM, switch the gateway, smoke-test, record.

A bundle whose kind needs no model servers (escalate.kinds: token-level, CITER) starts no vLLM
server: the gateway decodes it in its own process (serving.engine.InProcessEngine), so `launch` has
nothing to start and `export` takes no endpoints.

Each step is a plain function; `promote_alias` chains them. Nothing user-visible changes until the
last step: on any failure, SIGTERM or SIGINT, the servers this run started are stopped, the gateway
is switched back (or was never switched; a gateway this run started is stopped, and one that served
nothing serves nothing again), serving/current.json and the registry aliases stay where they were,
and PromotionFailed says which step failed and why. One promotion runs at a time (promote_guard).
Servers are stopped only once the gateway has no request in flight on them (`retire`). A promotion
killed outright (SIGKILL) cannot clean up: its lock goes with it, and the next promotion (or
`escalate serve --stop`) stops the servers it left (`retire_orphans`). From the switch on, a guard
process (serving/promote_recover.py) waits beside the promotion on its lock: if the promotion dies
before its commit (serving/current.json naming the new deployment), the guard switches the gateway
back, stops the new servers and puts @serving back. The record step is a compare-and-swap of @serving
from the version it pointed at when the promotion began (Registry.mark_serving), tags and alias together.

A challenger in shadow (`shadow_start`, `shadow_report`, `shadow_stop`; `escalate promote --shadow`) moves
no alias: it is loaded beside the served deployment (on the champion's servers when its SLM is the same
files, else on servers of its own), scores live requests off the user's path (serving.challenger), and
its comparison is written to MLflow on its own version.

Kill drills (tests/test_promote_kill.py) use one test-only hook: $ESCALATE_PROMOTE_PAUSE_AT=<step>
makes the promotion say `promote: paused at <step>` on stderr as that step starts and wait there until
a signal ends it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from escalate.kinds import KINDS
from escalate.locks import Busy
from escalate.registry.aliases import REGISTRATION_DIR, SERVING, Registry, RegistryError, _model_id, who
from escalate.registry.bundle import BundleError, read_bundle
from escalate.registry.files import SPEC_FILE
from escalate.serving import gateway_process
from escalate.serving.deployment import (
    DEPLOYMENT_FILE,
    SERVING_DIR,
    Deployment,
    bundle_artifacts,
    current,
    export_bundle,
    mark_current,
    new_deployment_dir,
    write_json,
)
from escalate.serving.gateway_process import GatewayProcess
from escalate.serving.promote_guard import PromotionLock, Signals
from escalate.serving.vllm_server import VllmServer, free_port, serve_python, stop_group, wait_gone

SMOKE_QUESTIONS = ("Eva has 7 cups. Then gives away 1. How many cups does Eva have now?",
                   "Tom has 12 apples. Then buys 9 more. Then gives away 4. How many apples does Tom have now?")
# Ask for every alternative when the vocabulary is this small, so served entropy equals evaluated entropy.
FULL_VOCAB_LOGPROBS_UP_TO = 4096
DEFAULT_TOP_LOGPROBS = 20
LOCK_FILE = "promote.lock"
CHALLENGER_FILE = "challenger.json"  # the deployment loaded in shadow (shadow_start), whose servers are not orphans
PENDING_FILE = "promote.pending.json"  # what the guard undoes if the promotion dies before its commit
GUARD_LOG = "promote-guard.log"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding this escalate package
PAUSE_ENV = "ESCALATE_PROMOTE_PAUSE_AT"  # test-only: wait at this step, for kill drills
# Past the gateway's own bound on a request (its drain_s), this long for the last answers to be sent.
DRAIN_MARGIN_S = 5.0
DRAIN_POLL_S = 0.2
log = logging.getLogger("escalate.promote")


class PromotionFailed(RuntimeError):
    """A promotion that stopped; the message names the step, and nothing it changed was kept."""


@dataclass
class Promotion:
    """What a successful promotion did."""

    version: str
    alias: str
    deployment: Path
    gateway: str
    previous: str | None
    answers: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # deployments whose leftover servers this run stopped

    def summary(self) -> str:
        lines = [f"serving {self.deployment.parent.name} (from @{self.alias}) behind {self.gateway}/v1; "
                 f"previous: {self.previous or 'none'}"]
        if self.orphans:
            lines.append(f"  stopped leftover servers of {', '.join(self.orphans)} (a promotion killed earlier)")
        for a in self.answers:
            e = a["escalate"]
            lines.append(f"  {a['question'][:60]!r} -> {a['answer']!r} by {e['model']} ({e['served_by']}), "
                         f"score {e['score']:.3f}, cost {e['cost']['total']:.2f}")
        return "\n".join(lines)


def resolve(registry: Registry, ref: str) -> Any:
    """The model version an alias names, or a version number itself."""
    if not ref.isdigit():
        return registry.resolve(ref)
    mv = registry.version(ref)
    if mv is None:
        raise RegistryError(f"{registry.name} has no version {ref}; `escalate registry list` shows them")
    return mv


def top_logprobs(checkpoint: Path) -> int:
    vocab = int(json.loads((checkpoint / "config.json").read_text()).get("vocab_size", 0))
    return vocab if 0 < vocab <= FULL_VOCAB_LOGPROBS_UP_TO else DEFAULT_TOP_LOGPROBS


def export(registry: Registry, alias: str, root: Path, directory: Path | None = None,
           endpoints: dict[str, str] | None = None) -> Deployment:
    """Resolve @alias and export its bundle to a deployment directory (default: a fresh one under
    serving/). `endpoints` names servers started elsewhere (Kubernetes, compose): then a query-level
    bundle needs one for each self-hosted model, and a token-level one, decoded in the gateway's
    process, takes none. None: `launch` starts the servers (none for a token-level bundle)."""
    mv = resolve(registry, alias)
    directory = directory or new_deployment_dir(root, registry.name, str(mv.version))
    bundle = export_bundle(registry.uri, registry.name, str(mv.version), directory)
    deployment = Deployment(model_name=registry.name, version=str(mv.version), alias=alias,
                            bundle_dir=str(bundle.relative_to(directory)))  # relative: the directory can move
    if endpoints is not None:
        spec, _, checkpoints = read_bundle(bundle_artifacts(bundle))
        kind = KINDS[spec.kind]
        if not kind.needs_servers and endpoints:
            raise BundleError(f"{deployment.label} is a {kind.label} bundle, decoded in the gateway's process; "
                              f"it takes no endpoints (got {sorted(endpoints)}): drop --endpoint")
        missing = sorted(set(checkpoints) - set(endpoints)) if kind.needs_servers else []
        if missing:
            raise BundleError(f"{deployment.label} needs a server for each self-hosted model; no endpoint for "
                              f"{missing}: add --endpoint {missing[0]}=URL")
    for role, url in (endpoints or {}).items():
        deployment.endpoints[role], deployment.served_names[role] = url, role
        deployment.top_logprobs[role] = top_logprobs(Path(deployment.artifacts()[role]))
    return deployment.save_to(directory)


def launch(deployment: Deployment, root: Path, timeout_s: float = 300.0) -> Deployment:
    """Start a vLLM server for each self-hosted model and wait until each is healthy; all or none.
    A token-level bundle needs none: the gateway decodes it in process."""
    spec, _, checkpoints = deployment.read()
    if not KINDS[spec.kind].needs_servers:
        return deployment.save_to(Path(deployment.path).parent)
    python = serve_python(root)
    directory = Path(deployment.path).parent
    servers: list[VllmServer] = []
    try:
        for role, checkpoint in sorted(checkpoints.items()):
            name = f"{deployment.model_name}-v{deployment.version}-{role}"
            limit = top_logprobs(Path(checkpoint))
            server = VllmServer(Path(checkpoint), name, free_port(), python, directory / f"vllm-{role}.log",
                                extra_args=["--max-logprobs", str(limit)], api_key=gateway_process.vllm_key(root))
            servers.append(server.start())
            deployment.endpoints[role], deployment.served_names[role] = server.url, name
            deployment.pids[role], deployment.top_logprobs[role] = server.process.pid, limit
            deployment.api_key_env[role] = gateway_process.VLLM_KEY_ENV
        for server in servers:
            server.wait_ready(timeout_s)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return deployment.save_to(directory)


def switch(gateway: str, key: str, deployment: Deployment, timeout_s: float = 300.0) -> dict[str, Any]:
    """Tell the gateway to load the deployment; it probes it and swaps only when the probe is answered."""
    response = httpx.post(f"{gateway}/admin/deploy", json={"deployment": deployment.path},
                          headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s)
    if response.status_code != 200:
        raise PromotionFailed(f"the gateway refused the deployment (HTTP {response.status_code}): {response.text[:500]}")
    return response.json()


def smoke(gateway: str, key: str, model: str, questions: tuple[str, ...] = SMOKE_QUESTIONS) -> list[dict[str, Any]]:
    """Ask the gateway the smoke questions as any OpenAI client would; each must be answered."""
    answers = []
    for question in questions:
        response = httpx.post(f"{gateway}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": model, "messages": [{"role": "user", "content": question}]}, timeout=120)
        if response.status_code != 200:
            raise PromotionFailed(f"smoke query {question!r} got HTTP {response.status_code}: {response.text[:300]}")
        body = response.json()
        answers.append({"question": question, "answer": body["choices"][0]["message"]["content"],
                        "escalate": body["escalate"]})
    return answers


def retire(deployment: Deployment | None, gateway: str | None = None, key: str | None = None) -> None:
    """Stop the servers a deployment started, once the gateway (when given, with its admin key) has no
    request in flight on it: it finishes those on the bundle they started with. The wait is bounded
    by the gateway's deadline plus DRAIN_MARGIN_S; a gateway that cannot say is not waited for. A pid
    that no longer runs this deployment's files (reused since) is left alone; the pids are then
    dropped from deployment.json, so a later sweep does not stop them twice."""
    if deployment is None or not deployment.pids:
        return
    if gateway is not None and key is not None:
        _wait_drained(deployment, gateway, key)
    directory = Path(deployment.path).parent
    for pid in deployment.pids.values():
        if _runs_from(int(pid), directory) and stop_group(int(pid)):
            wait_gone(int(pid))
    deployment.pids = {}
    if Path(deployment.path).is_file():
        deployment.save_to(directory)


def _wait_drained(deployment: Deployment, gateway: str, key: str) -> None:
    target, deadline = Path(deployment.path).resolve(), None
    while (status := gateway_process.status(gateway, key)) is not None:
        left = sum(d["in_flight"] for d in status["draining"] if Path(d["deployment"]).resolve() == target)
        if not left:
            return
        deadline = deadline or time.monotonic() + float(status["drain_s"]) + DRAIN_MARGIN_S
        if time.monotonic() >= deadline:
            log.warning("%s still had %d requests in flight after %.0f s; stopping its servers anyway",
                        deployment.label, left, float(status["drain_s"]) + DRAIN_MARGIN_S)
            return
        time.sleep(DRAIN_POLL_S)


def _runs_from(pid: int, directory: Path) -> bool:
    """Whether `pid` still runs a server of the deployment in `directory` (its command line names a file
    there). Without /proc (not Linux) it cannot tell and trusts the pid."""
    try:
        return str(directory) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False


def retire_orphans(root: Path) -> list[str]:
    """Stop the servers of deployments nothing serves: left by a promotion killed (SIGKILL) before it
    could clean up. Run under the promotion lock, so no promotion in flight owns them; returns their labels."""
    keep = {Path(d.path).resolve() for d in (current(root), _challenger(root)) if d is not None}
    orphans = []
    for path in sorted((root / SERVING_DIR).glob(f"*/{DEPLOYMENT_FILE}")):
        if path.resolve() in keep:  # served, or scoring in shadow
            continue
        try:
            deployment = Deployment.load(path)
        except BundleError:
            continue  # not ours to judge; the gateway never loads it either
        if deployment.pids:
            retire(deployment)
            orphans.append(deployment.label)
    return orphans


def sweep(root: Path) -> list[str]:
    """`retire_orphans` for `escalate serve --stop`: under the promotion lock, so the servers of a
    promotion still running are not taken for leftovers; Busy when one is."""
    with PromotionLock(root / SERVING_DIR / LOCK_FILE):
        return retire_orphans(root)


def promote_alias(registry: Registry, root: Path, alias: str = "champion", timeout_s: float = 300.0,
                  by: str | None = None) -> Promotion:
    """The whole promotion, one at a time (serving/promote.lock); PromotionFailed (with everything
    undone) when any step fails, when another promotion is running, or on SIGTERM; KeyboardInterrupt
    (everything undone) on SIGINT. A signal that arrives from the record step on does not stop it:
    the promotion completes, then the signal is raised again under the caller's handlers."""
    root = root.resolve()
    try:
        with PromotionLock(root / SERVING_DIR / LOCK_FILE), Signals() as signals:
            return _promote(registry, root, alias, timeout_s, by, signals)
    except Busy as exc:
        raise PromotionFailed(f"promoting @{alias} refused: {exc}") from None


def _promote(registry: Registry, root: Path, alias: str, timeout_s: float, by: str | None,
             signals: Signals) -> Promotion:
    orphans = retire_orphans(root)
    previous = current(root)
    step, deployment, switched, started, guard = "export", None, False, None, None
    gateway = gateway_process.running(root)
    admin = gateway_process.admin_key(root)
    try:
        _at(step)
        serving = registry.aliases().get(SERVING)  # where the record step's compare-and-swap expects @serving
        deployment = export(registry, alias, root)
        step = _at("launch")
        deployment = launch(deployment, root, timeout_s)
        step = _at("gateway")
        if gateway is None:
            gateway = started = gateway_process.start(root)
        key = gateway_process.api_key(root)
        guard = arm(root, registry, deployment, previous, gateway, started is not None, serving)
        step = _at("switch")
        switched = True  # before the call: a signal during it may land after the gateway swapped
        try:
            switch(gateway.url, admin, deployment, timeout_s)
        except PromotionFailed:  # refused: the gateway kept what it served
            switched = False
            raise
        step = _at("smoke")
        answers = smoke(gateway.url, key, deployment.model_name)
        step = _at("record")
        signals.defer()  # the commit: a signal now waits until the promotion is whole
        registry.mark_serving(deployment.version, {
            "escalate.serving.at": deployment.created_at, "escalate.serving.by": who(by),
            "escalate.serving.gateway": f"{gateway.url}/v1",
            "escalate.serving.endpoints": json.dumps(deployment.endpoints),
            "escalate.serving.deployment": deployment.path}, expected=serving)
    except BaseException as exc:
        signals.defer()
        _roll_back(exc, root, gateway, started, admin, previous, deployment if switched else None, timeout_s)
        retire(deployment, None if started or not switched else gateway.url, admin)
        disarm(root, guard)
        if isinstance(exc, KeyboardInterrupt):
            raise
        label = f"@{alias}" + (f" (v{deployment.version})" if deployment else "")
        state = (f"the gateway still serves {previous.label}" if previous else "nothing is serving yet")
        held = f" ({signal.Signals(signals.held).name} received meanwhile)" if signals.held else ""
        raise PromotionFailed(f"promoting {label} failed at step '{step}': {exc}\n{state}; @{SERVING} was not "
                              f"moved; the servers this run started were stopped{held}") from exc
    mark_current(root, Path(deployment.path).parent)  # the commit point the guard checks
    disarm(root, guard)
    if previous is not None and previous.path != deployment.path:
        retire(previous, gateway.url, admin)
    return Promotion(deployment.version, alias, Path(deployment.path), gateway.url,
                     previous.label if previous else None, answers, orphans)


def _at(step: str) -> str:
    """The step starting now; with $ESCALATE_PROMOTE_PAUSE_AT=<step> (test-only) say so and wait for a signal."""
    if os.environ.get(PAUSE_ENV) == step:
        print(f"promote: paused at {step} (pid {os.getpid()})", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)
    return step


def arm(root: Path, registry: Registry, deployment: Deployment, previous: Deployment | None,
        gateway: GatewayProcess, started: bool, serving: str | None) -> subprocess.Popen:
    """Write serving/promote.pending.json and start the guard that undoes it if this process dies
    before the commit: in its own session, so a kill of this process's group spares it."""
    write_json(root / SERVING_DIR / PENDING_FILE, {
        "promoter": os.getpid(), "deployment": deployment.path, "version": deployment.version,
        "previous": previous.path if previous else None, "gateway": asdict(gateway), "started_gateway": started,
        "registry": {"uri": registry.uri, "name": registry.name}, "serving": serving})
    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))  # this escalate, not another
    with (root / SERVING_DIR / GUARD_LOG).open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "escalate.serving.promote_recover", str(root)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
                                env={**os.environ, "PYTHONPATH": path})


def disarm(root: Path, guard: subprocess.Popen | None) -> None:
    """The promotion committed or undid itself: stop its guard (still waiting on the lock this
    process holds), then drop the pending file."""
    if guard is None:
        return
    guard.terminate()
    guard.wait()
    (root / SERVING_DIR / PENDING_FILE).unlink(missing_ok=True)


def _roll_back(exc: BaseException, root: Path, gateway: GatewayProcess | None, started: GatewayProcess | None,
               admin: str, previous: Deployment | None, switched_to: Deployment | None, timeout_s: float) -> None:
    """Put the gateway back as it was: stopped if this run started it (nothing served before, and a
    gateway with nothing to serve is only a process to forget); else on the previous deployment, or
    serving nothing (503s) when there was none, rather than a bundle whose servers are being stopped."""
    if started is not None:
        started.stop()
        gateway_process.forget(root, started)
        return
    if switched_to is None or gateway is None:
        return
    try:
        if previous is not None:
            switch(gateway.url, admin, previous, timeout_s)
        else:
            gateway_process.undeploy(gateway.url, admin)
    except Exception as back:  # say so: the operator must know the gateway is not as it was
        exc.add_note(f"putting the gateway at {gateway.url} back to {previous.label if previous else 'nothing'} "
                     f"failed too: {back}")


SHADOW_FILE = "shadow_comparison.json"  # under the version's run's registration/ artifacts
SHADOW_METRIC = "shadow."  # each comparison figure is the metric shadow.<figure> of the version's run


def shadow_start(registry: Registry, root: Path, ref: str, max_per_minute: int = 60,
                 timeout_s: float = 300.0) -> dict[str, Any]:
    """Load @ref (or version ref) into the running gateway as a challenger in shadow. It shares the
    champion's servers when its SLM is the same files (cascade.json's digests), so its SLM generations are
    the champion's; else its models get servers of their own, stopped by `shadow_stop`."""
    root = root.resolve()
    gateway, live = gateway_process.running(root), current(root)
    if gateway is None or live is None:
        raise PromotionFailed("a challenger scores a served deployment's traffic: run `escalate promote` first")
    deployment = export(registry, ref, root)
    slm = _slm_files(deployment)
    if live.endpoints and slm is not None and slm == _slm_files(live):
        deployment.endpoints, deployment.served_names = dict(live.endpoints), dict(live.served_names)
        deployment.top_logprobs, deployment.api_key_env = dict(live.top_logprobs), dict(live.api_key_env)
        deployment = deployment.save_to(Path(deployment.path).parent)
    else:
        deployment = launch(deployment, root, timeout_s)
    response = httpx.post(f"{gateway.url}/admin/challenger", timeout=timeout_s,
                          json={"deployment": deployment.path, "max_per_minute": max_per_minute},
                          headers={"Authorization": f"Bearer {gateway_process.admin_key(root)}"})
    if response.status_code != 200:
        retire(deployment)
        raise PromotionFailed(f"the gateway refused the challenger (HTTP {response.status_code}): {response.text[:500]}")
    replaced = _challenger(root)
    write_json(root / SERVING_DIR / CHALLENGER_FILE, {"deployment": deployment.path})
    if replaced is not None and replaced.path != deployment.path:
        retire(replaced)
    return response.json()


def shadow_status(root: Path) -> dict[str, Any]:
    """The challenger the gateway has loaded and its comparison so far."""
    root = root.resolve()
    gateway = gateway_process.running(root)
    status = gateway_process.status(gateway.url, gateway_process.admin_key(root)) if gateway else None
    if not status or not status.get("challenger"):
        raise PromotionFailed("no challenger is loaded in shadow: `escalate promote --shadow ALIAS` loads one")
    return status["challenger"]


def shadow_stop(root: Path) -> dict[str, Any] | None:
    """Unload the challenger (its final status; None when the gateway had none, or is not running) and stop
    the servers shadow_start gave it (none when it shared the champion's), also once the gateway is gone."""
    root = root.resolve()
    gateway, final = gateway_process.running(root), None
    if gateway is not None:
        response = httpx.delete(f"{gateway.url}/admin/challenger", timeout=30.0,
                                headers={"Authorization": f"Bearer {gateway_process.admin_key(root)}"})
        response.raise_for_status()
        final = response.json()["stopped"]
    retire(_challenger(root))
    (root / SERVING_DIR / CHALLENGER_FILE).unlink(missing_ok=True)
    return final


def _challenger(root: Path) -> Deployment | None:
    """The deployment shadow_start loaded last, if it is still there."""
    path = root / SERVING_DIR / CHALLENGER_FILE
    try:
        return Deployment.load(Path(json.loads(path.read_text())["deployment"]))
    except (OSError, ValueError, KeyError, BundleError):
        return None


def shadow_report(registry: Registry, challenger: dict[str, Any]) -> str:
    """Write a challenger's comparison (its /admin/status entry) to MLflow on its model version: each figure a
    metric shadow.<figure> of the version's run and logged model (step: requests compared, so reports made
    over time are a series), the whole entry as registration/shadow_comparison.json. Returns the version."""
    version = str(challenger["version"])
    if challenger["model"] != registry.name:
        raise RegistryError(f"the challenger is a version of {challenger['model']!r}, not {registry.name!r}")
    mv = registry.version(version)
    if mv is None or not mv.run_id:
        raise RegistryError(f"{registry.name} v{version} {'has no run' if mv else 'does not exist'}: "
                            "the comparison has nowhere to go")
    comparison, model_id = challenger["comparison"], _model_id(mv)
    registry.client.log_dict(mv.run_id, challenger, f"{REGISTRATION_DIR}/{SHADOW_FILE}")
    for key, value in comparison.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            registry.client.log_metric(mv.run_id, f"{SHADOW_METRIC}{key}", float(value), step=int(comparison["seen"]),
                                       model_id=model_id)
    return version


def _slm_files(deployment: Deployment) -> Any:
    """The SLM checkpoint's files (sizes and SHA-256) that the deployment's cascade.json lists."""
    spec = Path(deployment.artifacts()["cascade"])
    spec = spec / SPEC_FILE if spec.is_dir() else spec
    return json.loads(spec.read_text()).get("checkpoint_files", {}).get("slm")
