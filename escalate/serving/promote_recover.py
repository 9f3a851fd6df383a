"""The guard of a promotion killed before its commit: put the gateway, its servers and @serving back.

`promote` starts it (`python -m escalate.serving.promote_recover ROOT`) just before switching the
gateway, with serving/promote.pending.json saying what the promotion is about to change. It waits on
the promotion lock, which the OS frees only when the promotion's process ends, in any way. A
promotion that commits or undoes itself stops the guard first and removes the file, so the guard acts
only when the promotion died (SIGKILL, the OOM killer) with the file still there. Then, unless
serving/current.json already names the new deployment (the commit point: nothing to undo), it
switches the gateway back to the deployment still current (or serves nothing, or stops a gateway the
promotion had started), stops the new deployment's servers once the gateway has drained them, and
moves @serving back (compare-and-swap) if the record step had moved it. It logs to
serving/promote-guard.log. Still under the lock, so the next promotion waits for it.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from escalate.serving import gateway_process
from escalate.serving.deployment import SERVING_DIR, Deployment, current
from escalate.serving.gateway_process import GatewayProcess
from escalate.serving.promote import LOCK_FILE, PENDING_FILE, retire, switch
from escalate.serving.promote_guard import PromotionLock


def recover(root: Path) -> str | None:
    """Undo what serving/promote.pending.json says a dead promotion had started; None when there is none.
    Call it holding the promotion lock."""
    path = root / SERVING_DIR / PENDING_FILE
    if not path.is_file():
        return None
    pending = json.loads(path.read_text())
    new = Path(pending["deployment"]).resolve()
    live = current(root)
    if live is not None and Path(live.path).resolve() == new:
        path.unlink()
        return f"{live.label} had been committed; nothing to undo"
    done = []
    gateway, admin = GatewayProcess(**pending["gateway"]), gateway_process.admin_key(root)
    if pending["started_gateway"]:
        gateway.stop()
        gateway_process.forget(root, gateway)
        done.append("stopped the gateway it had started")
    else:
        serving = (gateway_process.status(gateway.url, admin) or {}).get("serving")
        if serving and Path(serving["deployment"]).resolve() == new:
            if live is not None:
                switch(gateway.url, admin, live)
                done.append(f"switched the gateway back to {live.label}")
            else:
                gateway_process.undeploy(gateway.url, admin)
                done.append("made the gateway serve nothing again")
    if new.is_file():
        deployment = Deployment.load(new)
        retire(deployment, None if pending["started_gateway"] else gateway.url, admin)
        done.append(f"stopped {deployment.label}'s servers")
    done.append(_put_back_serving(pending))
    path.unlink()
    return "; ".join(done)


def _put_back_serving(pending: dict) -> str:
    """@serving back where it was, if the dead promotion's record step had moved it."""
    from escalate.registry.aliases import SERVING, Registry  # MLflow: seconds to import, for a guard that rarely acts

    registry = Registry(pending["registry"]["uri"], pending["registry"]["name"])
    if registry.aliases().get(SERVING) != pending["version"]:
        return "@serving had not moved"
    registry.move_alias(SERVING, pending["serving"], expected=pending["version"])
    return f"moved @serving back to {pending['serving'] or '(unset)'}"


def main(argv: list[str] | None = None) -> int:
    root = Path((argv or sys.argv[1:])[0]).resolve()
    with PromotionLock(root / SERVING_DIR / LOCK_FILE, wait_s=None):  # free once the promotion's process ends
        done = recover(root)
    if done:
        print(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} a promotion died before its commit; {done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
