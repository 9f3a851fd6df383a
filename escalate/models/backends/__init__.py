"""Generation backends by name: adding one is one module and one line here.

`make_backend` builds the backend a profile's model names; heavy imports stay inside each backend,
so choosing `openai` never imports torch's generation stack and `vllm` is imported only when used.
"""

from __future__ import annotations

from pathlib import Path

from escalate.config import ModelConfig
from escalate.models.backends.base import BackendError, Generation, GenerationBackend, SamplingParams


def _hf(cfg: ModelConfig, path: str, batch_size: int) -> GenerationBackend:
    from escalate.models.backends.hf import HFBackend

    return HFBackend(path, dtype=cfg.dtype, device=cfg.device, batch_size=batch_size, chat_template=cfg.chat_template)


def _vllm(cfg: ModelConfig, path: str, batch_size: int) -> GenerationBackend:
    from escalate.models.backends.vllm_offline import VLLMBackend

    return VLLMBackend(path, dtype=cfg.dtype)


def _openai(cfg: ModelConfig, path: str, batch_size: int) -> GenerationBackend:
    from escalate.models.backends.openai_http import OpenAIBackend

    return OpenAIBackend(cfg.endpoint or "", model=cfg.name, api_key_env=cfg.api_key_env, top_logprobs=cfg.top_logprobs)


BACKENDS = {"hf": _hf, "vllm": _vllm, "openai": _openai}


def model_path(cfg: ModelConfig, role: str, zoo_dir: Path) -> str:
    """Where a model's weights are: the zoo checkpoint for source 'zoo', else the path or hub id."""
    return str(zoo_dir / role) if cfg.source == "zoo" else cfg.source


def make_backend(cfg: ModelConfig, role: str, zoo_dir: Path, batch_size: int = 64) -> GenerationBackend:
    if cfg.backend not in BACKENDS:
        raise BackendError(f"unknown backend {cfg.backend!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[cfg.backend](cfg, model_path(cfg, role, zoo_dir), batch_size)


__all__ = ["BACKENDS", "BackendError", "Generation", "GenerationBackend", "SamplingParams", "make_backend", "model_path"]
