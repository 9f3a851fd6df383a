"""The two processes of the promotion kill drill (tests/test_promote_kill.py), without models or vLLM.

    python -m tests.promote_drill gateway ROOT PORT   # the real gateway app; each deployment a stub engine
    python -m tests.promote_drill promote ROOT URI    # promote_alias for real, export and launch faked

The gateway is create_app with `open_engine` replaced by a stub that answers as "v<version>-slm", so a
client sees which deployment answered. The promotion exports a deployment.json without a bundle and
"launches" a sleeping process whose command line names the deployment directory, as a vLLM server's
does; everything else (lock, guard, switch over HTTP, smoke, record in the registry) is the real code.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

from escalate.registry.aliases import Registry
from escalate.serving import gateway, gateway_process, promote
from escalate.serving.deployment import SERVING_DIR, Deployment, new_deployment_dir
from escalate.serving.engine import Answer
from tests.gateway_requests import StubEngine, stub_result


class VersionStub(StubEngine):
    """Answers every question as the SLM of its deployment's version."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__()
        self.deployment = deployment

    def check(self) -> None:
        pass

    def answer(self, question: str, budget: Any = None) -> Answer:
        return Answer(stub_result(question), None, f"v{self.deployment.version}-slm")


def export(registry: Registry, alias: str, root: Path) -> Deployment:
    version = str(registry.resolve(alias).version)
    directory = new_deployment_dir(root, registry.name, version)
    return Deployment(registry.name, version, alias, ".").save_to(directory)


def launch(deployment: Deployment, root: Path, timeout_s: float) -> Deployment:
    directory = Path(deployment.path).parent
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(directory)],
                              start_new_session=True)
    while str(directory).encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes():
        time.sleep(0.01)  # until exec, as launch waits for a real server to be healthy
    deployment.pids["slm"] = server.pid
    return deployment.save_to(directory)


def main(command: str, root: str, arg: str) -> int:
    root_path = Path(root).resolve()
    if command == "gateway":
        gateway.open_engine = VersionStub
        settings = gateway.GatewaySettings(api_keys=(gateway_process.api_key(root_path),),
                                           admin_keys=(gateway_process.admin_key(root_path),),
                                           serving_dir=str(root_path / SERVING_DIR), traffic_dir=None)
        uvicorn.run(gateway.create_app(settings), host="127.0.0.1", port=int(arg), log_level="warning")
        return 0
    promote.export, promote.launch = export, launch
    print(promote.promote_alias(Registry(arg), root_path, timeout_s=60).summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
