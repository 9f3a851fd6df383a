"""Telemetry off everywhere: escalate runs on machines that must not phone home."""

from __future__ import annotations

import os

QUIET = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def disable_telemetry() -> None:
    """Set every opt-out this stack knows, without overriding what the user set."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
