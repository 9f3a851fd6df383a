"""infra/ agrees with the code: commands parse with escalate's CLI, vLLM is started the way
VllmServer starts it, ports, probes and paths line up with the gateway and `escalate export`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from escalate.cli import build_parser
from escalate.serving.gateway import API_KEY_ENV, GatewaySettings, create_app
from escalate.serving.vllm_server import VllmServer

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "infra/docker-compose.yml").read_text())["services"]
K8S = [doc for doc in yaml.safe_load_all((ROOT / "infra/k8s/serving.yaml").read_text()) if doc]
ROUTES = {route.path for route in create_app(GatewaySettings(api_keys=("k",))).routes}
# Flags VllmServer passes that serving depends on (token ids for exact counts, fp32 as evaluated).
REQUIRED_VLLM_FLAGS = [a for a in VllmServer(Path("m"), "n", 1, Path("p"), Path("l")).command()
                       if a in ("--return-tokens-as-token-ids", "--dtype", "float32")]


def k8s(kind: str, name: str) -> dict:
    return next(d for d in K8S if d["kind"] == kind and d["metadata"]["name"] == name)


def container(name: str) -> dict:
    return k8s("Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("role", ["slm", "llm"])
def test_vllm_is_started_as_the_code_starts_it(role: str) -> None:
    for args in (COMPOSE[f"vllm-{role}"]["command"], container(f"vllm-{role}")["args"]):
        assert all(f in args for f in REQUIRED_VLLM_FLAGS)
        assert flag(args, "--served-model-name") == role  # what `escalate export` writes into deployment.json
        assert flag(args, "--model") == f"/bundles/current/bundle/artifacts/{role}"  # export's layout
        assert flag(args, "--port") == "8000"
    env = {e["name"]: e["value"] for e in container(f"vllm-{role}")["env"]}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    service = k8s("Service", f"vllm-{role}")["spec"]["ports"][0]
    assert service["port"] == 8000 and service["targetPort"] == "http"
    assert container(f"vllm-{role}")["ports"][0] == {"containerPort": 8000, "name": "http"}


def test_gateway_command_parses_and_probes_exist() -> None:
    for command in (COMPOSE["gateway"]["command"], container("escalate-gateway")["command"]):
        assert command[0] == "escalate"
        args = build_parser().parse_args(command[1:])
        assert (args.group, args.port, args.host) == ("serve", 8000, "0.0.0.0")
        assert str(args.deployment) == "/bundles/current/deployment.json"
    gateway = container("escalate-gateway")
    assert {gateway["readinessProbe"]["httpGet"]["path"], gateway["livenessProbe"]["httpGet"]["path"]} <= ROUTES
    assert k8s("Service", "escalate-gateway")["metadata"]["annotations"]["prometheus.io/path"] in ROUTES
    assert [e["name"] for e in gateway["env"]][0] == API_KEY_ENV
    assert API_KEY_ENV in COMPOSE["gateway"]["environment"]


def test_serving_image_pins_the_vllm_the_makefile_installs() -> None:
    dockerfile = (ROOT / "infra/Dockerfile.serve").read_text()
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"ARG VLLM_PACKAGE=(\S+)", dockerfile).group(1)
    assert f"VLLM_PACKAGE ?= {pinned}" in makefile
    assert "torch==2.13.0" in dockerfile and "serve-constraints.txt" in dockerfile
    assert "uninstall -y torchvision torchaudio torchcodec" in dockerfile


def test_export_instructions_match_the_cli() -> None:
    for text in ((ROOT / "infra/k8s/serving.yaml").read_text(), (ROOT / "infra/docker-compose.yml").read_text()):
        block = re.search(r"escalate export .*?\n#.*?\n", text, re.S).group(0)
        words = block.replace("\\", " ").replace("#", " ").split()
        args = build_parser().parse_args(words[1:])
        assert (args.group, args.alias) == ("export", "champion")
        assert args.endpoint == ["slm=http://vllm-slm:8000", "llm=http://vllm-llm:8000"]
