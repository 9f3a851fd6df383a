"""Routers by name: adding one is one module and one line here (RouteLLM's ROUTER_CLS shape).

Apart from the package's __init__ so that a router module elsewhere (a method package's) can import
escalate.routers.base without running this registry, which imports it.
"""

from __future__ import annotations

from escalate.corea.routers.confidence import CoreaConfidenceRouter
from escalate.routers.base import Router
from escalate.routers.embedding_features import EmbeddingFeaturesRouter
from escalate.routers.embedding_knn import EmbeddingKNNRouter
from escalate.routers.embedding_lr import EmbeddingLRRouter
from escalate.routers.embedding_mlp import EmbeddingMLPRouter
from escalate.routers.entropy import EntropyRouter
from escalate.routers.joint_pik_pt import JointPIKPTRouter
from escalate.routers.logprob import MeanLogprobRouter, MinLogprobRouter
from escalate.routers.matrix_factorization import MatrixFactorizationRouter
from escalate.routers.pik_probe import PIKProbeRouter
from escalate.routers.prompt_length import PromptLengthRouter
from escalate.routers.random_router import RandomRouter
from escalate.routers.self_consistency import SelfConsistencyRouter
from escalate.routers.token_prob import TokenProbRouter
from escalate.sater.routers.pregen import SaterPregenRouter
from escalate.sater.routers.refusal import SaterRefusalRouter
from escalate.sater.routers.vote import SaterVoteRouter

ROUTERS: dict[str, type[Router]] = {
    "p_true_token": TokenProbRouter,
    "mean_logprob": MeanLogprobRouter,
    "min_logprob": MinLogprobRouter,
    "entropy": EntropyRouter,
    "self_consistency": SelfConsistencyRouter,
    "random": RandomRouter,
    "sater_refusal": SaterRefusalRouter,
    "sater_vote": SaterVoteRouter,
    "sater_pregen": SaterPregenRouter,
    "prompt_length": PromptLengthRouter,
    "embedding_lr": EmbeddingLRRouter,
    "embedding_knn": EmbeddingKNNRouter,
    "embedding_mlp": EmbeddingMLPRouter,
    "embedding_features": EmbeddingFeaturesRouter,
    "matrix_factorization": MatrixFactorizationRouter,
    "corea_confidence": CoreaConfidenceRouter,
    "pik_probe": PIKProbeRouter,
    "joint_pik_pt": JointPIKPTRouter,
}


def make_router(name: str, **kwargs: object) -> Router:
    if name not in ROUTERS:
        raise KeyError(f"unknown router {name!r}; known: {', '.join(ROUTERS)}")
    return ROUTERS[name](**kwargs)
