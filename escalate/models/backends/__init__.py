"""Generation backends by name: adding one is one module and one line here.

`make_backend` builds the backend a profile's model names; heavy imports stay inside each backend,
so choosing `openai` never imports torch's generation stack and `vllm` is imported only when used.
Each entry also says whether its backend is self-hosted, so the registry, serving and config can ask
by name (`is_self_hosted`) without importing the backend: this module stays cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from escalate.models.backends.base import BackendError, Generation, GenerationBackend, ModelSettings, SamplingParams


def _hf(cfg: ModelSettings, path: str, batch_size: int) -> GenerationBackend:
    from escalate.models.backends.hf import HFBackend  # torch and transformers: only when this backend is built

    return HFBackend(path, dtype=cfg.dtype, device=cfg.device, batch_size=batch_size, chat_template=cfg.chat_template)


def _vllm(cfg: ModelSettings, path: str, batch_size: int) -> GenerationBackend:
    from escalate.models.backends.vllm_offline import VLLMBackend  # vllm: optional, only where it is installed

    return VLLMBackend(path, dtype=cfg.dtype)


def _openai(cfg: ModelSettings, path: str, batch_size: int) -> GenerationBackend:
    from escalate.models.backends.openai_http import OpenAIBackend  # its HTTP client: only when this backend is built

    return OpenAIBackend(cfg.endpoint or "", model=cfg.name, api_key_env=cfg.api_key_env, top_logprobs=cfg.top_logprobs)


@dataclass(frozen=True)
class Backend:
    """One backend by name: how to build it, and what the rest of escalate must know without building it."""

    build: Callable[[ModelSettings, str, int], GenerationBackend]
    # Self-hosted: its weights are files we hold, so a bundle carries them, promote serves them with vLLM
    # and a token-level cascade steps them in process. Otherwise it is an endpoint, reached by URL only.
    self_hosted: bool = True


BACKENDS = {"hf": Backend(_hf), "vllm": Backend(_vllm), "openai": Backend(_openai, self_hosted=False)}


def is_self_hosted(backend: str) -> bool:
    """Whether a model on this backend is ours to bundle and serve; one that is not needs an endpoint.
    A name no backend has counts as self-hosted: make_backend is what refuses it, when the model is built."""
    entry = BACKENDS.get(backend)
    return entry is None or entry.self_hosted


def model_path(cfg: ModelSettings, role: str, zoo_dir: Path) -> str:
    """Where a model's weights are: the zoo checkpoint for source 'zoo', else the path or hub id."""
    return str(zoo_dir / role) if cfg.source == "zoo" else cfg.source


def make_backend(cfg: ModelSettings, role: str, zoo_dir: Path, batch_size: int = 64) -> GenerationBackend:
    if cfg.backend not in BACKENDS:
        raise BackendError(f"unknown backend {cfg.backend!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[cfg.backend].build(cfg, model_path(cfg, role, zoo_dir), batch_size)


__all__ = ["BACKENDS", "Backend", "BackendError", "Generation", "GenerationBackend", "ModelSettings", "SamplingParams",
           "is_self_hosted", "make_backend", "model_path"]
