"""Typed profiles: a YAML file fills these dataclasses, and a bad key or value fails at load time.

Every section is a dataclass whose `__post_init__` rejects out-of-range values; `load_profile`
rejects unknown keys and wrong types. Errors name the file and the dotted key, e.g.
`configs/tiny.yaml: zoo.slm.arch.hidden_size: must be num_heads * head_dim (64 * 1), got 60`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# The checks live in the leaf escalate.checks, which the method configs import too; ConfigError stays importable here.
from escalate.checks import Bad as _Bad
from escalate.checks import ConfigError
from escalate.checks import check as _check
from escalate.citer.config import CiterConfig
from escalate.corea.config import CoreaConfig
from escalate.data.schema import SPLITS
from escalate.models.backends import is_self_hosted
from escalate.routers.registry import ROUTERS
from escalate.sater.config import SaterConfig


@dataclass
class ArithConfig:
    """The built-in generator: sizes of each split and the difficulty knobs."""

    n_train: int = field(default=3000, metadata={
        "help": "questions in the train split (SATER, COREA and CITER train on them); fewer: faster training stages"})
    n_calib: int = field(default=400, metadata={
        "help": "questions in the calib split, where routers are fitted and thresholds chosen"})
    n_test: int = field(default=400, metadata={
        "help": "questions in the held-out test split every reported figure and gate comes from"})
    min_steps: int = field(default=1, metadata={
        "help": "fewest arithmetic steps in a question (its difficulty); raise it to drop the easy ones"})
    max_steps: int = field(default=4, metadata={
        "help": "most arithmetic steps in a question, up to 12; more widens the SLM-LLM accuracy gap"})
    max_operand: int = field(default=20, metadata={
        "help": "largest operand drawn (results stay within 10x it); larger numbers make every step harder"})
    style_weights: dict[str, float] = field(default_factory=lambda: {"terse": 1.0, "steps": 2.0, "padded": 1.0},
                                            metadata={
        "help": "relative frequency of each solution style (terse, steps, padded) in the zoo's pretraining "
                "corpus: it sets how long and varied the models' answers are"})

    def __post_init__(self) -> None:
        for key in ("n_train", "n_calib", "n_test"):
            _check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _check(1 <= self.min_steps <= self.max_steps, "min_steps", "must satisfy 1 <= min_steps <= max_steps")
        _check(self.max_steps <= 12, "max_steps", f"must be <= 12, got {self.max_steps}")
        _check(2 <= self.max_operand <= 10_000, "max_operand", f"must be in [2, 10000], got {self.max_operand}")
        bad = set(self.style_weights) - {"terse", "steps", "padded"}
        _check(not bad, "style_weights", f"unknown styles {sorted(bad)}; known: terse, steps, padded")
        _check(all(w >= 0 for w in self.style_weights.values()) and sum(self.style_weights.values()) > 0,
               "style_weights", "weights must be >= 0 and not all 0")


@dataclass
class DataConfig:
    """Where questions come from: an adapter name and its settings."""

    adapter: str = field(default="arith", metadata={
        "help": "dataset adapter: arith (built-in generator), gsm8k, table or choice (read `path`)"})
    arith: ArithConfig = field(default_factory=ArithConfig, metadata={
        "help": "the built-in generator's split sizes and difficulty (adapter arith; the zoo's corpus always)"})
    path: str | None = field(default=None, metadata={
        "help": "a JSONL, CSV or Parquet file the file adapters read, relative to --root; null for arith"})
    task: str | None = field(default=None, metadata={
        "help": "task name written in the questions' `task` column for file datasets; null: the adapter's name"})
    columns: dict[str, str] = field(default_factory=dict, metadata={
        "help": "our column -> the file's column, for files whose question/answer/choices columns are named "
                "otherwise"})
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "calib": 0.2, "test": 0.2},
                                              metadata={
        "help": "share of a file's rows hashed into each split when the file has no `split` column; sums to 1"})
    limit: int | None = field(default=None, metadata={
        "help": "keep only a file's first N rows, for quick runs on a large dataset; null: every row"})
    max_question_chars: int = field(default=4000, metadata={
        "help": "longest question (in characters) the questions table accepts; longer rows fail validation"})

    def __post_init__(self) -> None:
        _check(self.adapter == "arith" or self.path is not None, "path", f"adapter {self.adapter!r} needs a path")
        bad = set(self.split_fractions) - set(SPLITS)
        _check(not bad, "split_fractions", f"unknown splits {sorted(bad)}; known: {', '.join(SPLITS)}")
        total = sum(self.split_fractions.values())
        _check(abs(total - 1.0) < 1e-6, "split_fractions", f"must sum to 1, got {total:g}")
        _check(self.limit is None or self.limit >= 1, "limit", f"must be >= 1, got {self.limit}")


@dataclass
class ArchConfig:
    """A Llama architecture. head_dim 64 because vLLM's CPU attention kernels need it."""

    hidden_size: int = field(default=64, metadata={
        "help": "width of the residual stream; must equal num_heads * head_dim"})
    num_layers: int = field(default=2, metadata={
        "help": "transformer blocks; more layers: a stronger but slower model"})
    num_heads: int = field(default=1, metadata={
        "help": "attention heads (also the key/value heads); hidden_size grows with them, head_dim being fixed"})
    head_dim: int = field(default=64, metadata={
        "help": "width of each attention head: 64 or 128, the only sizes vLLM's CPU attention kernels run"})
    intermediate_size: int = field(default=256, metadata={
        "help": "width of the MLP in each block; the cheapest way to grow or shrink the parameter count"})
    max_position_embeddings: int = field(default=256, metadata={
        "help": "longest sequence (prompt + answer) in tokens the model can attend over"})

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            _check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _check(self.head_dim in (64, 128), "head_dim", f"must be 64 or 128 (vLLM CPU kernels), got {self.head_dim}")
        _check(self.hidden_size == self.num_heads * self.head_dim, "hidden_size",
               f"must be num_heads * head_dim ({self.num_heads} * {self.head_dim}), got {self.hidden_size}")


@dataclass
class PretrainConfig:
    """The pretraining loop of one zoo model."""

    steps: int = field(default=1000, metadata={
        "help": "optimizer steps; the corpus holds steps * batch_size fresh examples, so more steps: more data"})
    batch_size: int = field(default=32, metadata={"help": "examples per optimizer step"})
    lr: float = field(default=3e-3, metadata={
        "help": "peak AdamW learning rate (linear warm-up, then cosine decay); lower it if the loss diverges"})
    warmup_steps: int = field(default=50, metadata={
        "help": "steps of linear learning-rate warm-up; must be below steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    eval_every: int = field(default=0, metadata={
        "help": "grade greedy answers on the calib sample every this many steps and keep the best-scoring "
                "weights, so two CPUs keep the same plateau rather than whatever their last step gave; 0: "
                "graded once, after the last step"})
    patience: int | None = field(default=None, metadata={
        "help": "stop after this many evaluations without a better calib accuracy (needs eval_every); "
                "null: run every step"})

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(0 < self.lr < 1, "lr", f"must be in (0, 1), got {self.lr}")
        _check(0 <= self.warmup_steps < self.steps, "warmup_steps", "must be in [0, steps)")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.eval_every >= 0, "eval_every", f"must be >= 0, got {self.eval_every}")
        _check(self.patience is None or self.patience >= 1, "patience", f"must be >= 1, got {self.patience}")
        _check(self.patience is None or self.eval_every > 0, "patience", "needs eval_every > 0 (evaluations to count)")


@dataclass
class ZooModelConfig:
    """One zoo model: its architecture and its pretraining."""

    arch: ArchConfig = field(default_factory=ArchConfig, metadata={"help": "the model's Llama architecture"})
    train: PretrainConfig = field(default_factory=PretrainConfig, metadata={"help": "the model's pretraining loop"})


@dataclass
class ZooConfig:
    """The embedded models: a tokenizer and two Llama models pretrained here on `arith` text."""

    vocab_size: int = field(default=400, metadata={
        "help": "tokens of the BPE tokenizer trained on the corpus (digits are single tokens); shared by both models"})
    slm: ZooModelConfig = field(default_factory=ZooModelConfig, metadata={"help": "the small model"})
    llm: ZooModelConfig = field(default_factory=ZooModelConfig, metadata={"help": "the large model"})
    min_param_ratio: float = field(default=8.0, metadata={
        "help": "the build fails unless the LLM has at least this many times the SLM's parameters, so the "
                "cascade has a real cost gap to exploit"})
    eval_questions: int | None = field(default=None, metadata={
        "help": "calib questions (the split's first N) each evaluation grades; fewer: cheaper evaluations, a "
                "noisier choice of checkpoint; null: the whole calib split"})
    eval_max_new_tokens: int = field(default=96, metadata={
        "help": "longest greedy answer in tokens an evaluation generates; fit it to the solutions' length"})
    slm_accuracy: list[float] | None = field(default=None, metadata={
        "help": "[low, high]: the build fails unless the SLM's calib accuracy lies in this band, so every machine "
                "ships a zoo with the cascade's gap; null: no band"})
    llm_min_accuracy: float | None = field(default=None, metadata={
        "help": "the build fails unless the LLM's calib accuracy reaches this; null: no floor"})
    shipped: str | None = field(default=None, metadata={
        "help": "a directory (relative to --root) written by `escalate zoo ship`: the stage copies its "
                "checkpoints, each file checked against the SHA-256 in its zoo.json, instead of training; "
                "null: train here"})

    def __post_init__(self) -> None:
        _check(64 <= self.vocab_size <= 65_536, "vocab_size", f"must be in [64, 65536], got {self.vocab_size}")
        _check(self.min_param_ratio >= 1, "min_param_ratio", f"must be >= 1, got {self.min_param_ratio}")
        _check(self.eval_questions is None or self.eval_questions >= 1, "eval_questions",
               f"must be >= 1, got {self.eval_questions}")
        _check(self.eval_max_new_tokens >= 1, "eval_max_new_tokens", f"must be >= 1, got {self.eval_max_new_tokens}")
        band = self.slm_accuracy
        _check(band is None or (len(band) == 2 and 0 <= band[0] <= band[1] <= 1), "slm_accuracy",
               f"must be [low, high] with 0 <= low <= high <= 1, got {band}")
        _check(self.llm_min_accuracy is None or 0 <= self.llm_min_accuracy <= 1, "llm_min_accuracy",
               f"must be in [0, 1], got {self.llm_min_accuracy}")


@dataclass
class ModelConfig:
    """One model of the cascade and how to reach it."""

    name: str = field(default="model", metadata={
        "help": "the model's name in samples, reports and manifests; the `model` an openai backend requests"})
    source: str = field(default="zoo", metadata={
        "help": "where the weights are: zoo (built by `escalate zoo build`), a local checkpoint path or a hub id"})
    backend: Literal["hf", "vllm", "openai"] = field(default="hf", metadata={
        "help": "how it generates: hf (in process), vllm (offline vllm.LLM) or openai (an HTTP endpoint)"})
    endpoint: str | None = field(default=None, metadata={
        "help": "base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8001/v1 (backend openai only)"})
    api_key_env: str | None = field(default=None, metadata={
        "help": "name of the environment variable holding the endpoint's API key; never the key itself"})
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(default="float32", metadata={
        "help": "weight dtype for hf and vllm; bfloat16 halves memory on GPUs, CPUs want float32"})
    device: str = field(default="cpu", metadata={"help": "where the hf backend runs: cpu, cuda, cuda:N or auto"})
    chat_template: bool = field(default=False, metadata={
        "help": "wrap prompts in the tokenizer's chat template (instruct models; hf backend)"})
    n_params: int | None = field(default=None, metadata={
        "help": "parameter count for the FLOPs cost model when it cannot be read from the weights (external models)"})
    top_logprobs: int = field(default=5, metadata={
        "help": "alternatives per token the openai (HTTP) backend asks for; entropy is computed over them, so it "
                "matches the in-process entropy only when this covers the vocabulary (the zoo's 400 tokens do)"})

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "name", "must not be empty")
        _check(is_self_hosted(self.backend) or bool(self.endpoint), "endpoint", f"backend {self.backend!r} needs an endpoint URL")
        _check(self.endpoint is None or self.endpoint.startswith(("http://", "https://")), "endpoint",
               f"must start with http:// or https://, got {self.endpoint!r}")
        _check(self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:"), "device",
               f"must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        _check(self.n_params is None or self.n_params > 0, "n_params", f"must be > 0, got {self.n_params}")
        _check(1 <= self.top_logprobs <= 1_000_000, "top_logprobs", f"must be >= 1, got {self.top_logprobs}")


@dataclass
class SamplingConfig:
    """K generations per question per model: sample 0 greedy, the rest at `temperature`."""

    k: int = field(default=4, metadata={
        "help": "generations per question per model (1 greedy + k-1 sampled); self-consistency votes over them"})
    temperature: float = field(default=0.8, metadata={
        "help": "sampling temperature of generations 1..k-1; higher: more diverse samples"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass of generations 1..k-1 (1: off)"})
    max_new_tokens: int = field(default=96, metadata={
        "help": "longest answer in tokens; answers cut here are usually wrong, so fit it to the task's solutions"})
    batch_size: int = field(default=64, metadata={
        "help": "prompts per generation batch (hf backend); lower it if memory runs out"})
    splits: list[str] = field(default_factory=lambda: ["calib", "test"], metadata={
        "help": "splits the sample stage generates for (routers fit on calib, evaluation reads test)"})

    def __post_init__(self) -> None:
        _check(1 <= self.k <= 64, "k", f"must be in [1, 64], got {self.k}")
        _check(0 < self.temperature <= 2, "temperature", f"must be in (0, 2], got {self.temperature}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(1 <= self.max_new_tokens <= 4096, "max_new_tokens", f"must be in [1, 4096], got {self.max_new_tokens}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        bad = set(self.splits) - set(SPLITS)
        _check(not bad and bool(self.splits), "splits", f"must be a non-empty subset of {list(SPLITS)}, got {self.splits}")


@dataclass
class CostConfig:
    """How a query's cost is priced (METRICS.md): per-token prices or FLOPs."""

    kind: Literal["token_price", "flops"] = field(default="token_price", metadata={
        "help": "token_price: per-token prices below (the name bundles and registry params use too); "
                "flops: 2 * parameters * tokens (needs each model's n_params)"})
    prices: dict[str, list[float]] = field(default_factory=lambda: {"slm": [0.05, 0.05], "llm": [1.0, 1.0]},
                                           metadata={
        "help": "role -> [input, output] price per token (kind token_price); only ratios matter, default LLM:SLM 20:1"})

    def __post_init__(self) -> None:
        for role, pair in self.prices.items():
            _check(len(pair) == 2 and all(p >= 0 for p in pair), "prices",
                   f"{role}: expected [input, output] prices >= 0, got {pair}")


@dataclass
class EvaluationConfig:
    """The held-out evaluation: which split, the iso-accuracy margin, the sweep resolution and the
    targets of the threshold policies reported beside the objective (escalate/evaluation/thresholds.py)."""

    split: str = field(default="test", metadata={"help": "held-out split every reported figure comes from"})
    delta: float = field(default=0.02, metadata={
        "help": "\"comparable accuracy\": within delta (a fraction, 0.02 = 2 points) of LLM-only; the objective, "
                "the accuracy policy, the iso-accuracy saving and the accuracy gate use it"})
    n_thresholds: int = field(default=101, metadata={
        "help": "threshold points swept per strategy (quantiles of its score, both ends included); at least 101"})
    seed: int = field(default=0, metadata={
        "help": "seed of the evaluation's own randomness: the random router, router fitting, the constructed "
                "calibration mix"})
    strategies: list[str] = field(default_factory=list, metadata={
        "help": "routers to evaluate and register as candidates, by registry name; empty: every registered router"})
    budget: float = field(default=0.5, metadata={
        "help": "the budget policy's target: LLM call rate <= budget (a fraction of queries)"})
    error_cost: float = field(default=10.0, metadata={
        "help": "the cost-optimal policy's price of one wrong answer, in LLM calls"})
    risk_epsilon: float = field(default=0.05, metadata={
        "help": "the risk-controlled policy: accuracy loss vs LLM-only <= epsilon ..."})
    risk_alpha: float = field(default=0.1, metadata={
        "help": "... with probability >= 1 - alpha over the calib draw"})

    def __post_init__(self) -> None:
        unknown = set(self.strategies) - set(ROUTERS)
        _check(not unknown, "strategies", f"unknown routers {sorted(unknown)}; known: {', '.join(ROUTERS)}")
        _check(self.split in SPLITS, "split", f"must be one of {list(SPLITS)}, got {self.split!r}")
        _check(0 <= self.delta < 1, "delta", f"must be in [0, 1), got {self.delta}")
        _check(self.n_thresholds >= 101, "n_thresholds", f"must be >= 101 (METRICS.md), got {self.n_thresholds}")
        _check(0 <= self.budget <= 1, "budget", f"must be in [0, 1], got {self.budget}")
        _check(self.error_cost >= 0, "error_cost", f"must be >= 0, got {self.error_cost}")
        _check(0 < self.risk_epsilon < 1, "risk_epsilon", f"must be in (0, 1), got {self.risk_epsilon}")
        _check(0 < self.risk_alpha < 1, "risk_alpha", f"must be in (0, 1), got {self.risk_alpha}")


@dataclass
class GateLimits:
    """The limits gates apply; a profile's `gates:` section fills this (the accuracy gate's δ is evaluation.delta)."""

    delta: float | None = field(default=None, metadata={
        "help": "removed: the accuracy gate uses evaluation.delta; kept only to tell a profile that still sets it"})
    min_saving: float = field(default=0.10, metadata={
        "help": "the cost gate: the smallest cost saving 1 − C worth deploying (a fraction of LLM-only's cost)"})
    max_ece: float = field(default=0.15, metadata={
        "help": "the calibration gate: largest ECE (10 bins) of a score meant as P(SLM correct); others skip it"})
    regression_margin: float = field(default=0.02, metadata={
        "help": "the regression gate: the paired-bootstrap lower bound of (candidate − champion) accuracy must "
                "exceed −margin; smaller: stricter against the champion"})
    bootstrap_samples: int = field(default=2000, metadata={
        "help": "paired bootstrap resamples of the regression gate; more: a steadier bound, slower"})
    seed: int = field(default=0, metadata={"help": "the bootstrap's seed"})
    load_timeout_s: float = field(default=600.0, metadata={
        "help": "seconds the load gate allows a fresh process to load the bundle and answer"})

    def __post_init__(self) -> None:
        _check(self.delta is None, "delta", "was removed: set evaluation.delta, the one accuracy slack vs LLM-only "
               "(the objective on calib and the accuracy gate on test)")
        _check(-1 <= self.min_saving < 1, "min_saving", f"must be in [-1, 1), got {self.min_saving}")
        _check(0 < self.max_ece <= 1, "max_ece", f"must be in (0, 1], got {self.max_ece}")
        _check(0 <= self.regression_margin < 1, "regression_margin",
               f"must be in [0, 1), got {self.regression_margin}")
        _check(100 <= self.bootstrap_samples <= 1_000_000, "bootstrap_samples",
               f"must be in [100, 1000000], got {self.bootstrap_samples}")
        _check(self.load_timeout_s > 0, "load_timeout_s", f"must be > 0, got {self.load_timeout_s}")


@dataclass
class TrackingConfig:
    """Where runs and registered cascades are recorded."""

    uri: str = field(default="sqlite:///mlruns/mlflow.db", metadata={
        "help": "MLflow tracking and registry URI (relative sqlite paths are under --root); a server for a team"})
    experiment: str = field(default="escalate", metadata={"help": "MLflow experiment the runs are filed under"})
    registered_model: str = field(default="escalate-cascade", metadata={
        "help": "the registered model this profile's candidates become versions of; one per profile, so a smoke "
                "run is never gated against, nor takes @champion from, another profile's cascades"})

    def __post_init__(self) -> None:
        _check(bool(self.experiment.strip()), "experiment", "must not be empty")
        _check(bool(self.registered_model.strip()) and "/" not in self.registered_model and
               ":" not in self.registered_model, "registered_model", f"must be a non-empty name without '/' or ':', "
               f"got {self.registered_model!r}")


@dataclass
class Profile:
    """A whole run's configuration; `models` must name an `slm` and an `llm`."""

    name: str = field(metadata={"help": "the profile's name; its artifacts go under artifacts/<name>/"})
    seed: int = field(default=0, metadata={"help": "seeds the questions, their splits, the zoo's pretraining and sampling"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "where the questions come from"})
    models: dict[str, ModelConfig] = field(default_factory=dict, metadata={
        "help": "the cascade's models by role: slm and llm"})
    zoo: ZooConfig | None = field(default=None, metadata={
        "help": "the embedded models to pretrain (needed when a model has source zoo); null: none"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={
        "help": "the sample stage's generations"})
    cost: CostConfig = field(default_factory=CostConfig, metadata={"help": "how a query's cost is priced"})
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig, metadata={
        "help": "the held-out evaluation and its threshold policies"})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": "the MLflow store"})
    gates: GateLimits = field(default_factory=GateLimits, metadata={
        "help": "the limits a candidate cascade must pass before it can become @champion"})
    sater: SaterConfig | None = field(default=None, metadata={
        "help": "SATER training (`escalate sater train`); null: the profile has none"})
    corea: CoreaConfig | None = field(default=None, metadata={
        "help": "COREA training (`escalate corea train`); null: the profile has none"})
    citer: CiterConfig | None = field(default=None, metadata={
        "help": "CITER token-level routing (`escalate citer train`); null: the profile has none"})

    def __post_init__(self) -> None:
        missing = {"slm", "llm"} - set(self.models)
        _check(not missing, "models", f"must define {sorted(missing)} (roles slm and llm)")
        uses_zoo = any(m.source == "zoo" for m in self.models.values())
        _check(not uses_zoo or self.zoo is not None, "zoo", "a model has source 'zoo' but the profile has no zoo section")
        if self.cost.kind == "token_price":
            missing_prices = set(self.models) - set(self.cost.prices)
            _check(not missing_prices, "cost", f"prices missing for models {sorted(missing_prices)}")

    def artifacts(self, root: Path | str = ".") -> Path:
        """The directory every stage of this profile writes under."""
        return Path(root) / "artifacts" / self.name


def load_profile(name_or_path: str | Path, root: Path | str = ".") -> Profile:
    """Load `configs/<name>.yaml` (or a path) into a validated Profile; raises ConfigError."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(root) / "configs" / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (Path(root) / "configs").glob("*.yaml"))
        raise ConfigError(f"{path}: no such profile; known profiles: {', '.join(known) or 'none'}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return from_dict(Profile, raw, source=str(path))


def from_dict(cls: type, data: Any, source: str = "<dict>", where: str = "") -> Any:
    """Build dataclass `cls` from plain data, checking keys, types and values recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: {_join(where, key)}: unknown key{hint}; known keys: {', '.join(names)}")
    kwargs = {key: _coerce(hints[key], value, source, _join(where, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except _Bad as exc:
        raise ConfigError(f"{source}: {_join(where, exc.key)}: {exc}") from None
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{source}: {where or 'top level'}: {exc}") from None


def field_types(cls: type) -> dict[str, Any]:
    """Each field's resolved type hint (the method sections' types are imported above)."""
    return typing.get_type_hints(cls)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _coerce(hint: Any, value: Any, source: str, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _coerce(options[0], value, source, where)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {where}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _coerce(args[1], v, source, f"{where}.{k}") for k, v in value.items()}
    return _scalar(hint, value, source, where)


def _scalar(hint: Any, value: Any, source: str, where: str) -> Any:
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint)
    if ok is None:
        raise ConfigError(f"{source}: {where}: unsupported type {hint}")
    if not ok:
        raise ConfigError(f"{source}: {where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return float(value) if hint is float else value
