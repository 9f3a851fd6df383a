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
from escalate.sater.config import SaterConfig


@dataclass
class ArithConfig:
    """The built-in generator: sizes of each split and the difficulty knobs."""

    n_train: int = 3000
    n_calib: int = 400
    n_test: int = 400
    min_steps: int = 1
    max_steps: int = 4
    max_operand: int = 20
    # How often each solution style appears in the zoo's pretraining corpus.
    style_weights: dict[str, float] = field(default_factory=lambda: {"terse": 1.0, "steps": 2.0, "padded": 1.0})

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

    adapter: str = "arith"  # arith | gsm8k | table | choice
    arith: ArithConfig = field(default_factory=ArithConfig)
    path: str | None = None  # a JSONL / CSV / Parquet file for the file adapters
    task: str | None = None  # task name recorded for file datasets (defaults to the adapter name)
    columns: dict[str, str] = field(default_factory=dict)  # our column -> the file's column
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "calib": 0.2, "test": 0.2})
    limit: int | None = None  # keep only the first N rows of a file (quick runs)

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

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 1
    head_dim: int = 64
    intermediate_size: int = 256
    max_position_embeddings: int = 256

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            _check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _check(self.head_dim in (64, 128), "head_dim", f"must be 64 or 128 (vLLM CPU kernels), got {self.head_dim}")
        _check(self.hidden_size == self.num_heads * self.head_dim, "hidden_size",
               f"must be num_heads * head_dim ({self.num_heads} * {self.head_dim}), got {self.hidden_size}")


@dataclass
class PretrainConfig:
    """The pretraining loop of one zoo model."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(0 < self.lr < 1, "lr", f"must be in (0, 1), got {self.lr}")
        _check(0 <= self.warmup_steps < self.steps, "warmup_steps", "must be in [0, steps)")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class ZooModelConfig:
    arch: ArchConfig = field(default_factory=ArchConfig)
    train: PretrainConfig = field(default_factory=PretrainConfig)


@dataclass
class ZooConfig:
    """The embedded models: a tokenizer and two Llama models pretrained here on `arith` text."""

    vocab_size: int = 400
    slm: ZooModelConfig = field(default_factory=ZooModelConfig)
    llm: ZooModelConfig = field(default_factory=ZooModelConfig)
    min_param_ratio: float = 8.0  # the LLM must have at least this many times the SLM's parameters

    def __post_init__(self) -> None:
        _check(64 <= self.vocab_size <= 65_536, "vocab_size", f"must be in [64, 65536], got {self.vocab_size}")
        _check(self.min_param_ratio >= 1, "min_param_ratio", f"must be >= 1, got {self.min_param_ratio}")


@dataclass
class ModelConfig:
    """One model of the cascade and how to reach it."""

    name: str = "model"
    source: str = "zoo"  # "zoo" (built by `escalate zoo build`), a local checkpoint path, or a hub id
    backend: Literal["hf", "vllm", "openai"] = "hf"
    endpoint: str | None = None  # base URL of an OpenAI-compatible server (backend openai)
    api_key_env: str | None = None  # name of the environment variable holding the key; never the key
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = "cpu"  # cpu | cuda | auto
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template (instruct models)
    n_params: int | None = None  # parameter count for the FLOPs cost model when it cannot be read
    # Alternatives per token an HTTP backend asks for; entropy is computed over them, so it equals the
    # in-process (full-vocabulary) entropy only when this covers the vocabulary (the zoo's 400 tokens do).
    top_logprobs: int = 5

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "name", "must not be empty")
        _check(self.backend != "openai" or bool(self.endpoint), "endpoint", "backend 'openai' needs an endpoint URL")
        _check(self.endpoint is None or self.endpoint.startswith(("http://", "https://")), "endpoint",
               f"must start with http:// or https://, got {self.endpoint!r}")
        _check(self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:"), "device",
               f"must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        _check(self.n_params is None or self.n_params > 0, "n_params", f"must be > 0, got {self.n_params}")
        _check(1 <= self.top_logprobs <= 1_000_000, "top_logprobs", f"must be >= 1, got {self.top_logprobs}")


@dataclass
class SamplingConfig:
    """K generations per question per model: sample 0 greedy, the rest at `temperature`."""

    k: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 96
    batch_size: int = 64
    splits: list[str] = field(default_factory=lambda: ["calib", "test"])

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

    kind: Literal["tokens", "flops"] = "tokens"
    # role -> [input price, output price] per token; the default LLM:SLM ratio is 20:1
    prices: dict[str, list[float]] = field(default_factory=lambda: {"slm": [0.05, 0.05], "llm": [1.0, 1.0]})

    def __post_init__(self) -> None:
        for role, pair in self.prices.items():
            _check(len(pair) == 2 and all(p >= 0 for p in pair), "prices",
                   f"{role}: expected [input, output] prices >= 0, got {pair}")


@dataclass
class EvaluationConfig:
    """The held-out evaluation: which split, the iso-accuracy margin, the sweep resolution and the
    targets of the threshold policies reported beside the objective (escalate/evaluation/thresholds.py)."""

    split: str = "test"
    delta: float = 0.02  # "comparable accuracy": within delta of LLM-only
    n_thresholds: int = 101
    seed: int = 0  # for the random router
    # Routers to evaluate (and register as candidates); empty means every registered router.
    strategies: list[str] = field(default_factory=list)
    budget: float = 0.5  # the budget policy: LLM call rate <= budget
    error_cost: float = 10.0  # the cost-optimal policy: one wrong answer costs this many LLM calls
    risk_epsilon: float = 0.05  # the risk-controlled policy: accuracy loss vs LLM-only <= epsilon ...
    risk_alpha: float = 0.1  # ... with probability >= 1 - alpha over the calib draw

    def __post_init__(self) -> None:
        from escalate.routers import ROUTERS

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
    """The limits gates apply; a profile's `gates:` section fills this."""

    delta: float = 0.02  # accuracy may be at most this far below LLM-only
    min_saving: float = 0.10  # smallest cost saving 1 − C to be worth deploying
    max_ece: float = 0.15  # largest ECE of a probability-like score
    regression_margin: float = 0.02  # the bootstrap lower bound of (candidate − champion) must exceed −margin
    bootstrap_samples: int = 2000  # paired bootstrap resamples
    seed: int = 0  # the bootstrap's seed
    load_timeout_s: float = 600.0  # the fresh-process load-and-answer gate's time limit

    def __post_init__(self) -> None:
        _check(0 <= self.delta < 1, "delta", f"must be in [0, 1), got {self.delta}")
        _check(-1 <= self.min_saving < 1, "min_saving", f"must be in [-1, 1), got {self.min_saving}")
        _check(0 < self.max_ece <= 1, "max_ece", f"must be in (0, 1], got {self.max_ece}")
        _check(0 <= self.regression_margin < 1, "regression_margin",
               f"must be in [0, 1), got {self.regression_margin}")
        _check(100 <= self.bootstrap_samples <= 1_000_000, "bootstrap_samples",
               f"must be in [100, 1000000], got {self.bootstrap_samples}")
        _check(self.load_timeout_s > 0, "load_timeout_s", f"must be > 0, got {self.load_timeout_s}")


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "escalate"

    def __post_init__(self) -> None:
        _check(bool(self.experiment.strip()), "experiment", "must not be empty")


@dataclass
class Profile:
    """A whole run's configuration; `models` must name an `slm` and an `llm`."""

    name: str
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    zoo: ZooConfig | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    gates: GateLimits = field(default_factory=GateLimits)
    sater: SaterConfig | None = None  # SATER training (`escalate sater train`); None: the profile has none
    corea: CoreaConfig | None = None  # COREA training (`escalate corea train`); None: the profile has none
    citer: CiterConfig | None = None  # CITER token-level routing (`escalate citer train`); None: the profile has none

    def __post_init__(self) -> None:
        missing = {"slm", "llm"} - set(self.models)
        _check(not missing, "models", f"must define {sorted(missing)} (roles slm and llm)")
        uses_zoo = any(m.source == "zoo" for m in self.models.values())
        _check(not uses_zoo or self.zoo is not None, "zoo", "a model has source 'zoo' but the profile has no zoo section")
        if self.cost.kind == "tokens":
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
    hints = typing.get_type_hints(cls)
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
