"""Promote a registry alias to serving: export, start vLLM, switch the gateway, smoke-test, record.

A bundle whose kind needs no model servers (escalate.kinds: token-level, CITER) starts no vLLM
server: the gateway decodes it in its own process (serving.engine.InProcessEngine), so `launch` has
nothing to start and `export` takes no endpoints.

Each step is a plain function (the Prefect flow `promote` makes a task of each); `promote` chains
them. Nothing user-visible changes until the last step: on any failure, the servers this run
started are stopped, the gateway is switched back (or was never switched), the registry aliases
stay where they were, and PromotionFailed says which step failed and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from escalate.kinds import KINDS
from escalate.registry.aliases import SERVING, Registry, who
from escalate.registry.bundle import BundleError, read_bundle
from escalate.serving import gateway_process
from escalate.serving.deployment import (
    Deployment,
    bundle_artifacts,
    current,
    export_bundle,
    mark_current,
    new_deployment_dir,
)
from escalate.serving.vllm_server import VllmServer, free_port, serve_python, stop_group, wait_gone

SMOKE_QUESTIONS = ("Eva has 7 cups. Then gives away 1. How many cups does Eva have now?",
                   "Tom has 12 apples. Then buys 9 more. Then gives away 4. How many apples does Tom have now?")
# Ask for every alternative when the vocabulary is this small, so served entropy equals evaluated entropy.
FULL_VOCAB_LOGPROBS_UP_TO = 4096
DEFAULT_TOP_LOGPROBS = 20


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

    def summary(self) -> str:
        lines = [f"serving {self.deployment.parent.name} (from @{self.alias}) behind {self.gateway}/v1; "
                 f"previous: {self.previous or 'none'}"]
        for a in self.answers:
            e = a["escalate"]
            lines.append(f"  {a['question'][:60]!r} -> {a['answer']!r} by {e['model']} ({e['served_by']}), "
                         f"confidence {e['confidence']:.3f}, cost {e['cost']['total']:.2f}")
        return "\n".join(lines)


def top_logprobs(checkpoint: Path) -> int:
    vocab = int(json.loads((checkpoint / "config.json").read_text()).get("vocab_size", 0))
    return vocab if 0 < vocab <= FULL_VOCAB_LOGPROBS_UP_TO else DEFAULT_TOP_LOGPROBS


def export(registry: Registry, alias: str, root: Path, directory: Path | None = None,
           endpoints: dict[str, str] | None = None) -> Deployment:
    """Resolve @alias and export its bundle to a deployment directory (default: a fresh one under
    serving/). `endpoints` names servers started elsewhere (Kubernetes, compose): then a query-level
    bundle needs one for each self-hosted model, and a token-level one, decoded in the gateway's
    process, takes none. None: `launch` starts the servers (none for a token-level bundle)."""
    mv = registry.resolve(alias)
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


def retire(deployment: Deployment | None) -> None:
    """Stop the servers a deployment started (after the gateway no longer uses them)."""
    if deployment is None:
        return
    for pid in deployment.pids.values():
        if stop_group(int(pid)):
            wait_gone(int(pid))


def promote_alias(registry: Registry, root: Path, alias: str = "champion", timeout_s: float = 300.0,
            by: str | None = None) -> Promotion:
    """The whole promotion; PromotionFailed (with everything undone) when any step fails."""
    root = root.resolve()
    previous = current(root)
    step, deployment, switched = "export", None, False
    gateway = gateway_process.running(root)
    try:
        deployment = export(registry, alias, root)
        step = "launch"
        deployment = launch(deployment, root, timeout_s)
        step = "gateway"
        gateway = gateway or gateway_process.start(root)
        key = gateway_process.api_key(root)
        step = "switch"
        switch(gateway.url, gateway_process.admin_key(root), deployment, timeout_s)
        switched = True
        step = "smoke"
        answers = smoke(gateway.url, key, deployment.model_name)
        step = "record"
        registry.mark_serving(deployment.version, {
            "escalate.serving.at": deployment.created_at, "escalate.serving.by": who(by),
            "escalate.serving.gateway": f"{gateway.url}/v1",
            "escalate.serving.endpoints": json.dumps(deployment.endpoints),
            "escalate.serving.deployment": deployment.path})
    except BaseException as exc:
        if switched and previous is not None and gateway is not None:
            try:
                switch(gateway.url, gateway_process.admin_key(root), previous, timeout_s)
            except Exception as back:  # say so: the operator must know the gateway is not on the previous bundle
                exc.add_note(f"switching the gateway back to {previous.label} failed too: {back}")
        retire(deployment)
        if isinstance(exc, KeyboardInterrupt):
            raise
        label = f"@{alias}" + (f" (v{deployment.version})" if deployment else "")
        state = (f"the gateway still serves {previous.label}" if previous else "nothing is serving yet")
        raise PromotionFailed(f"promoting {label} failed at step '{step}': {exc}\n{state}; @{SERVING} was not "
                              "moved; the servers this run started were stopped") from exc
    mark_current(root, Path(deployment.path).parent)
    if previous is not None and previous.path != deployment.path:
        retire(previous)
    return Promotion(deployment.version, alias, Path(deployment.path), gateway.url,
                     previous.label if previous else None, answers)

