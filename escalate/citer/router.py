"""CITER's token router: an MLP on the SLM's last hidden state that gives P(LLM needed) for the next token.

It is trained on the token labels (escalate.citer.labels) with binary cross-entropy, early-stopped on
held-out questions, and saved as a directory (config.json + model.safetensors) so a serving process
loads it as data, without pipeline state.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from escalate.citer.config import CiterRouterConfig
from escalate.evaluation.metrics import auroc


class TokenRouter(nn.Module):
    """Standardised hidden state -> MLP -> the logit of P(LLM needed)."""

    def __init__(self, input_dim: int, hidden_sizes: list[int]) -> None:
        super().__init__()
        self.input_dim, self.hidden_sizes = input_dim, list(hidden_sizes)
        # Hidden states of a pretrained model have a few large dimensions; standardising keeps them from
        # dominating the first layer. Buffers, so the statistics travel with the weights.
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp((hidden - self.mean) / self.std).squeeze(-1)

    @torch.inference_mode()
    def predict(self, hidden: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
        """P(LLM needed) for each row of `hidden`."""
        x = torch.as_tensor(hidden, dtype=torch.float32)
        return np.concatenate([torch.sigmoid(self(x[i : i + batch_size])).numpy()
                               for i in range(0, len(x), batch_size)]) if len(x) else np.zeros(0)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"input_dim": self.input_dim, "hidden_sizes": self.hidden_sizes}))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TokenRouter:
        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        router = cls(config["input_dim"], config["hidden_sizes"])
        router.load_state_dict(load_file(str(path / "model.safetensors")))
        return router.eval()


class FixedRouter(nn.Module):
    """The router before any is trained: P(LLM needed) = 1/2 everywhere, so τ alone decides.

    τ = 0 sends every token to the LLM and τ = 1 none, which makes the token-level decoder an exact
    LLM-only or SLM-only greedy decoder (the references, and round 1's rollouts). It reads no weights.
    """

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.zeros(hidden.shape[0], device=hidden.device)


def _split_groups(groups: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of held-out rows: whole groups (questions), so no question is on both sides."""
    unique = sorted(set(groups.tolist()))
    random.Random(seed).shuffle(unique)
    held = set(unique[: max(1, round(val_fraction * len(unique)))])
    return np.array([g in held for g in groups.tolist()], dtype=bool)


def _loss(router: TokenRouter, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return float(nn.functional.binary_cross_entropy_with_logits(router(x), y))


def fit_router(hidden: np.ndarray, labels: np.ndarray, groups: np.ndarray, cfg: CiterRouterConfig,
               seed: int) -> tuple[TokenRouter, dict]:
    """Train a router on labelled positions (label 1: the LLM should write); returns it and a summary.

    The epoch with the lowest held-out loss is kept. The summary holds the per-epoch losses, the
    held-out AUROC of P(LLM needed) against the labels and the share of positive labels.
    """
    if len(hidden) != len(labels) or len(labels) != len(groups) or len(labels) == 0:
        raise ValueError(f"need as many hidden states, labels and groups, at least one: "
                         f"{len(hidden)}, {len(labels)}, {len(groups)}")
    torch.manual_seed(seed)
    held = _split_groups(np.asarray(groups), cfg.val_fraction, seed)
    x, y = torch.tensor(np.asarray(hidden, np.float32)), torch.tensor(np.asarray(labels, np.float32))
    x_train, y_train, x_val, y_val = x[~held], y[~held], x[held], y[held]
    if len(x_train) == 0:
        raise ValueError("every labelled position was held out; label more questions")
    router = TokenRouter(x.shape[1], cfg.hidden_sizes)
    router.mean.copy_(x_train.mean(0))
    router.std.copy_(x_train.std(0, correction=0).clamp_min(1e-6))
    opt = torch.optim.AdamW(router.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"train_losses": [], "val_losses": []}
    best = (float("inf"), 0, {k: v.clone() for k, v in router.state_dict().items()})
    for epoch in range(cfg.epochs):
        router.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(cfg.batch_size):
            loss = nn.functional.binary_cross_entropy_with_logits(router(x_train[batch]), y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        router.eval()
        history["train_losses"].append(_loss(router, x_train, y_train))
        history["val_losses"].append(_loss(router, x_val, y_val) if len(x_val) else history["train_losses"][-1])
        if history["val_losses"][-1] < best[0]:
            best = (history["val_losses"][-1], epoch, {k: v.clone() for k, v in router.state_dict().items()})
    router.load_state_dict(best[2])
    router.eval()
    val_scores = router.predict(x_val.numpy())
    summary = {
        "n_positions": len(labels), "n_val_positions": int(held.sum()), "positive_share": float(y.mean()),
        "best_epoch": best[1], "val_loss": best[0],
        # AUROC of P(LLM needed) against "the LLM should write" (auroc takes the positive class as given).
        "val_auroc": auroc(val_scores, y_val.numpy().astype(bool)) if len(x_val) else float("nan"),
        **history,
    }
    return router, summary
