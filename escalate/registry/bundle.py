"""One candidate cascade as one MLflow pyfunc model: checkpoints, strategy, cost model, report.

A bundle holds everything its cascade needs, so a fresh process can answer questions with

    model = mlflow.pyfunc.load_model("models:/escalate-cascade@champion")
    model.predict(["Eva has 7 cups. ...", "Jon has 8 cards. ..."])  # or a DataFrame: question[, choices]

Its artifacts: `cascade.json` (kind, strategy, threshold, both models' settings, cost model,
sampling, seed), the router, the SLM checkpoint and, for a self-hosted LLM, the LLM's (an HTTP LLM
is its endpoint and model name in cascade.json; its key stays in the environment), the evaluation
report, and optionally `outcomes.parquet` (per-query test outcomes at the chosen threshold, which
the regression gate compares against the next candidate). The escalate package travels as code,
and pip requirements are pinned explicitly so MLflow does not infer them.

Every cascade kind (escalate.kinds: query-level, token-level) shares this one format; the bundle's
kind says how its router is staged, checked and loaded, and what cascade it builds. A query-level
bundle (`kind: query`) holds `router_state/` (data, never code) and builds an escalate.cascade.Cascade; a token-level one
(`kind: token`, CITER) holds `router/` and builds an escalate.citer.cascade.TokenLevelCascade. Both
answer with the same RESULT_FIELDS.

Format version 2 added `kind`. Version-1 files (written before token-level bundles) have none and
are read as query-level; an escalate that knows only version 1 refuses a version-2 file by its
version instead of misreading a token-level bundle as a query-level one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking._model_registry import utils as registry_utils  # the globals use_tracking_uri restores
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.types import ColSpec, Schema

import escalate
from escalate.cascade import RESULT_FIELDS, ROLES, Answerer
from escalate.config import ModelConfig, SamplingConfig
from escalate.evaluation.cost import COST_MODELS, CostModel
from escalate.kinds import KINDS, QUERY_LEVEL
from escalate.models.backends import is_self_hosted
from escalate.registry.files import SPEC_FILE, BundleError, check_files, manifest
from escalate.routers.base import Router
from escalate.telemetry import disable_telemetry

BUNDLE_NAME = "cascade"  # the logged model's name inside its run
OUTCOMES_FILE = "outcomes.parquet"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before `kind`, every bundle query-level
# What a serving process imports on the cascade's path (escalate itself travels as code_paths).
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy",
                "pandas", "pyyaml", "httpx", "tqdm", "scikit-learn")  # scikit-learn: query-level router state
EVAL_FILES = ("report.md", "metrics.json", "curves.json", "*.png")
# MLflow's "models from code": the bundle names this script instead of pickling a model object.
MODEL_SCRIPT = "cascade_model.py"
MODEL_CODE = '''"""The escalate cascade as an MLflow pyfunc (models from code); its artifacts say which cascade."""
import mlflow

from escalate.registry.bundle import CascadeModel

mlflow.models.set_model(CascadeModel())
'''
DEFAULT_EXAMPLE = "Eva has 7 cups. Then gives away 1. How many cups does Eva have now?"

# The input: a DataFrame with `question` (and optionally `choices`) columns, or a plain list of question
# strings. No MLflow column schema can admit both (a list becomes an unnamed column that a named schema
# rejects, and an unnamed one drops `choices`), so the signature declares outputs only, and
# CascadeModel.predict checks its input itself (questions_frame).
INPUT_DOC = "a list of question strings, or a DataFrame with a `question` and an optional `choices` column"


def _column_type(name: str) -> str:
    """MLflow column type of one Cascade.answer field."""
    if name == "escalated":
        return "boolean"
    if name.endswith("_tokens"):
        return "long"
    if name in ("confidence", "score", "threshold") or name.startswith(("cost", "latency")):
        return "double"
    return "string"


# parsed_answer is None where no answer could be read from the text.
OUTPUT_SCHEMA = Schema([ColSpec(_column_type(n), n, required=n != "parsed_answer") for n in RESULT_FIELDS])
SIGNATURE = ModelSignature(inputs=None, outputs=OUTPUT_SCHEMA)

_MLFLOW_GLOBALS = threading.RLock()


@dataclass
class CascadeSpec:
    """What cascade.json records: enough, with the checkpoints, to rebuild the cascade anywhere."""

    strategy: str  # query level: the router's registry name (escalate.routers.registry.ROUTERS); token level: "citer"
    threshold: float  # query level: escalate when score < threshold; token level: τ (the LLM writes when P > τ)
    slm: ModelConfig
    llm: ModelConfig
    cost: CostModel
    sampling: SamplingConfig
    seed: int = 0
    profile: str = ""
    router_kwargs: dict[str, Any] = field(default_factory=dict)
    kind: str = QUERY_LEVEL  # a key of escalate.kinds.KINDS

    def __post_init__(self) -> None:
        if math.isnan(float(self.threshold)):
            raise BundleError("threshold must be a number (±inf allowed), got NaN")
        if not is_self_hosted(self.llm.backend) and not self.llm.endpoint:
            raise BundleError(f"an LLM with backend {self.llm.backend!r} needs an endpoint in the bundle")
        if self.kind not in KINDS:
            raise BundleError(f"kind must be one of {tuple(KINDS)}, got {self.kind!r}")
        KINDS[self.kind].check(self)

    def to_dict(self) -> dict[str, Any]:
        kind = next((k for k, cls in COST_MODELS.items() if type(self.cost) is cls), None)
        if kind is None:
            raise BundleError(f"cost model {type(self.cost).__name__} is not in COST_MODELS; it cannot be bundled")
        return {
            "format_version": FORMAT_VERSION, "kind": self.kind, "strategy": self.strategy,
            "threshold": float(self.threshold),
            "models": {"slm": asdict(self.slm), "llm": asdict(self.llm)},
            "cost": {"kind": kind, **{f.name: _plain(getattr(self.cost, f.name)) for f in fields(self.cost)},
                     "describe": self.cost.describe()},
            "sampling": asdict(self.sampling), "seed": self.seed, "profile": self.profile,
            "router_kwargs": dict(self.router_kwargs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CascadeSpec:
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise BundleError(f"{SPEC_FILE}: format_version {version!r} is not one this escalate reads "
                              f"({', '.join(map(str, READABLE_VERSIONS))}); rebuild the bundle with this escalate")
        try:
            cost_fields = {k: v for k, v in data["cost"].items() if k not in ("kind", "describe")}
            if data["cost"]["kind"] == "token_price":
                cost_fields["prices"] = {role: tuple(p) for role, p in cost_fields["prices"].items()}
            return cls(
                strategy=data["strategy"], threshold=float(data["threshold"]),
                slm=ModelConfig(**data["models"]["slm"]), llm=ModelConfig(**data["models"]["llm"]),
                cost=COST_MODELS[data["cost"]["kind"]](**cost_fields),
                sampling=SamplingConfig(**data["sampling"]), seed=int(data.get("seed", 0)),
                profile=str(data.get("profile", "")), router_kwargs=dict(data.get("router_kwargs", {})),
                kind=QUERY_LEVEL if version == 1 else data["kind"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{SPEC_FILE} is incomplete or invalid: {type(exc).__name__}: {exc}") from None

    def params(self) -> dict[str, str]:
        """Flat `key -> value` strings for the logged model's params (what `registry diff` compares)."""
        flat: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), sub)
            else:
                flat[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)

        walk("", {k: v for k, v in self.to_dict().items() if k != "format_version"})
        return {k: v[:6000] for k, v in flat.items()}


def _plain(value: Any) -> Any:
    """Frozen cost-model fields (tuples inside dicts) as JSON-ready lists and dicts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def build_cascade(spec: CascadeSpec, checkpoints: Mapping[str, str], router: Any = None,
                  overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Answerer:
    """The cascade a spec describes, as its kind builds it; `checkpoints` maps role -> local checkpoint dir.

    Query level: a Cascade over generation backends, with `router` the fitted Router (default:
    make_router(spec.strategy)). Token level: a TokenLevelCascade decoding both models in this
    process, with `router` the loaded TokenRouter (read_bundle's). `overrides` replaces ModelConfig
    fields per role at load time, e.g. {"slm": {"device": "cuda"}}, so one bundle runs on a laptop
    CPU and a GPU server.
    """
    return KINDS[spec.kind].build(spec, checkpoints, router, overrides or {})


def read_bundle(artifacts: Mapping[str, str]) -> tuple[CascadeSpec, Any, dict[str, str]]:
    """A bundle's spec, router and checkpoint dirs from its artifact paths (key -> local path).

    The router is the fitted Router (query level) or the loaded TokenRouter (token level). Checks
    every bundled checkpoint and router file against the sizes and SHA-256 digests cascade.json lists
    before it is read, so an incomplete upload or export, or a file altered since registration, fails
    here, naming the file.
    """
    missing = [key for key in ("cascade", "router") if key not in artifacts]
    if missing:
        raise BundleError(f"bundle lacks artifacts {missing}")
    spec_path, router_path = Path(artifacts["cascade"]), Path(artifacts["router"])
    for path in (spec_path, router_path):
        if not path.exists():
            raise BundleError(f"bundle artifact {path.name} is missing at {path}")
    try:
        raw = json.loads(spec_path.read_text())
    except ValueError as exc:
        raise BundleError(f"bundle artifact {spec_path} unreadable: {type(exc).__name__}: {exc}") from None
    spec = CascadeSpec.from_dict(raw)
    checkpoints = {role: artifacts[role] for role in ROLES if role in artifacts}
    router = KINDS[spec.kind].load_router(router_path, raw, checkpoints)
    for role in ROLES:
        if is_self_hosted(getattr(spec, role).backend) and role not in checkpoints:
            raise BundleError(f"bundle lacks the {role} checkpoint")
    listed = raw.get("checkpoint_files", {})
    unlisted = sorted(set(checkpoints) - set(listed))
    if unlisted:  # every bundled file is hash-checked: a checkpoint the spec does not list cannot be
        raise BundleError(f"{SPEC_FILE} lists no files for the {', '.join(unlisted)} checkpoint, so they cannot be "
                          "checked; re-register the candidate")
    for role, files in listed.items():
        if role not in checkpoints:
            raise BundleError(f"bundle lacks the {role} checkpoint its {SPEC_FILE} lists")
        check_files(Path(checkpoints[role]), files, role)
    return spec, router, checkpoints


def questions_frame(model_input: Any) -> pd.DataFrame:
    """The questions to answer as a DataFrame with a `question` column (and maybe `choices`): from a
    DataFrame, a dict of columns, a list of records, or a list / Series / array of question strings."""
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, str):
        frame = pd.DataFrame({"question": [model_input]})
    elif isinstance(model_input, Mapping):
        scalar = all(isinstance(v, str) or not hasattr(v, "__len__") for v in model_input.values())
        frame = pd.DataFrame([model_input] if scalar else dict(model_input))
    else:
        items = list(model_input)
        frame = (pd.DataFrame(items) if items and all(isinstance(i, Mapping) for i in items)
                 else pd.DataFrame({"question": items}))
    if "question" not in frame.columns:
        raise BundleError(f"input needs {INPUT_DOC}; got columns {list(frame.columns)}")
    return frame


class CascadeModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: load_context builds the Cascade from the artifacts, predict answers questions."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        disable_telemetry()
        self.spec, router, checkpoints = read_bundle(context.artifacts)
        self.cascade = build_cascade(self.spec, checkpoints, router, (context.model_config or {}).get("overrides"))

    # A DataFrame hint: MLflow 3 derives no schema from it, so the bundle's explicit signature applies.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = questions_frame(model_input)
        choices = frame["choices"].tolist() if "choices" in frame.columns else None
        results = self.cascade.answer([str(q) for q in frame["question"]], choices)
        return pd.DataFrame(results, columns=list(RESULT_FIELDS))


@dataclass(frozen=True)
class BundleInfo:
    """Where a logged bundle lives and what it is: pass model_uri to the gates and the registry."""

    model_uri: str  # models:/m-<id>
    model_id: str
    run_id: str
    spec: CascadeSpec
    content: str = ""  # content_digest: the same bundle registers once (Registry.register)

    def tags(self) -> dict[str, str]:
        """Model-version tags that say which cascade this is (the registry adds gates and lineage)."""
        return {"escalate.strategy": self.spec.strategy, "escalate.kind": self.spec.kind,
                "escalate.content": self.content,
                "escalate.threshold": f"{self.spec.threshold:.6g}",
                "escalate.profile": self.spec.profile, "escalate.model_id": self.model_id,
                "escalate.llm": self.spec.llm.name, "escalate.slm": self.spec.slm.name}


def pip_requirements() -> list[str]:
    """Pins of what the serving side imports, from this environment (local versions such as +cpu dropped)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version.split('+')[0]}")
    return pins


def local_checkpoint(cfg: ModelConfig, role: str, zoo_dir: Path | str) -> Path | None:
    """The directory to bundle for a self-hosted model, or None for an HTTP model.

    Zoo models live in zoo_dir/role; a hub id is bundled from the local Hugging Face cache (no
    download happens here). A self-hosted model that cannot be found locally is an error: a bundle
    that silently points at the hub would not load where the hub is unreachable.
    """
    if not is_self_hosted(cfg.backend):
        return None
    if cfg.source == "zoo":
        path = Path(zoo_dir) / role
    elif Path(cfg.source).is_dir():
        path = Path(cfg.source)
    else:
        try:
            from huggingface_hub import snapshot_download  # only for a hub id: the zoo and local paths never need it

            path = Path(snapshot_download(cfg.source, local_files_only=True))
        except Exception as exc:
            raise BundleError(f"{role} checkpoint {cfg.source!r} is neither a directory nor in the local "
                              f"Hugging Face cache ({type(exc).__name__}); download it first") from exc
    if not (path / "config.json").is_file():
        raise BundleError(f"{role} checkpoint {path} has no config.json; build it (escalate zoo build) first")
    return path


@contextmanager
def use_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's global tracking and registry URIs at one store for a block, then restore them.

    escalate addresses runs through MlflowClient, but mlflow.pyfunc.log_model logs to the global
    tracking URI, and the registry resolves a `models:/m-<id>` source through it too; so the globals
    are set here only, under a lock, and put back afterwards exactly as they were: unset stays unset.
    (mlflow.set_*_uri also exports MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, and restoring through
    them would pin every later MlflowClient of this process to the store they happened to resolve to.)
    """
    with _MLFLOW_GLOBALS:
        saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        saved_env = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            yield
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri = saved
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@contextmanager
def keep_sys_path() -> Iterator[None]:
    """Undo the bundle's code path that loading a pyfunc prepends to sys.path (MLflow validates the
    input example by loading the bundle in this process), so this process keeps importing its own escalate."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def log_bundle(spec: CascadeSpec, *, tracking_uri: str, run_id: str, checkpoints: Mapping[str, Path | str],
               router: Router | Path | None = None, eval_dir: Path | str | None = None,
               outcomes: pd.DataFrame | None = None, metrics: Mapping[str, float] | None = None,
               example_questions: list[str] | None = None) -> BundleInfo:
    """Log one candidate cascade as a pyfunc model in run `run_id` and return where it is.

    checkpoints: role -> local checkpoint dir for each self-hosted model (see local_checkpoint).
    router: query level, the fitted router (default: make_router(spec.strategy, **spec.router_kwargs));
    token level, the token router's saved directory (TokenRouter.save), required.
    eval_dir: the evaluation directory; its report, metrics, curves and plots go in the bundle.
    outcomes: per-query test outcomes at the threshold (gates.per_query_outcomes), for the next
    regression gate. metrics: the candidate's figures, logged to the run and the logged model.
    Give each candidate its own run: the run is ended (FINISHED) when the bundle is logged.
    """
    disable_telemetry()
    router = KINDS[spec.kind].bundle_router(spec, router)
    missing = [r for r in ROLES if r not in checkpoints and is_self_hosted(getattr(spec, r).backend)]
    if missing:
        raise BundleError(f"self-hosted models {missing} need a checkpoint directory in the bundle")
    with tempfile.TemporaryDirectory(prefix="escalate-bundle-") as tmp:
        stage = Path(tmp)
        artifacts = _stage_artifacts(stage, spec, checkpoints, router, eval_dir, outcomes)
        code = stage / "code" / "escalate"
        shutil.copytree(Path(escalate.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        content = content_digest(stage)
        example = pd.DataFrame({"question": example_questions or [DEFAULT_EXAMPLE]})
        (stage / MODEL_SCRIPT).write_text(MODEL_CODE)
        active = mlflow.active_run() is not None
        with use_tracking_uri(tracking_uri), keep_sys_path(), mlflow.start_run(run_id=run_id, nested=active):
            info = mlflow.pyfunc.log_model(
                name=BUNDLE_NAME, python_model=str(stage / MODEL_SCRIPT), artifacts=artifacts, code_paths=[str(code)],
                signature=SIGNATURE, input_example=example, pip_requirements=pip_requirements(),
                params=spec.params(), tags={"escalate.strategy": spec.strategy, "escalate.kind": spec.kind},
                metadata={"input": INPUT_DOC},
            )
    if metrics:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                client.log_metric(run_id, key, float(value), model_id=info.model_id)
    return BundleInfo(model_uri=f"models:/{info.model_id}", model_id=info.model_id, run_id=run_id, spec=spec,
                      content=content)


def content_digest(stage: Path) -> str:
    """SHA-256 of what makes a bundle behave as it does: cascade.json (the spec with every router and
    checkpoint file's digest) and the escalate code it carries. A rerun with nothing changed gives the
    same digest, so the registry does not register the same candidate twice; new code or data does not."""
    digest = hashlib.sha256((stage / SPEC_FILE).read_bytes())
    for path in sorted((stage / "code").rglob("*.py")):
        digest.update(path.relative_to(stage).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _checkpoint_artifact(path: Path, role: str, stage: Path, names: set[str]) -> Path:
    """The checkpoint dir as MLflow should copy it, without copying the weights twice where avoidable.

    MLflow stores a directory artifact under its basename and refuses symlinks that leave it (the
    Hugging Face cache is made of them). A plain directory with a free name goes as it is; otherwise
    it is laid out under the role's name with hard links (a copy across filesystems).
    """
    path = path.resolve()
    has_links = any(p.is_symlink() for p in path.rglob("*"))
    if (path.name == role or path.name not in names) and not has_links:
        names.add(path.name)
        return path
    target = stage / role
    shutil.copytree(path, target, copy_function=_link_or_copy)
    return target


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        shutil.copy2(src, dst)


def _stage_artifacts(stage: Path, spec: CascadeSpec, checkpoints: Mapping[str, Path | str], router: Router | Path,
                     eval_dir: Path | str | None, outcomes: pd.DataFrame | None) -> dict[str, str]:
    """Lay the artifacts out under fixed names (MLflow names them by basename), linking the checkpoints."""
    for role, path in checkpoints.items():
        if not (Path(path) / "config.json").is_file():
            raise BundleError(f"{role} checkpoint {path} has no config.json")
    files: dict[str, Any] = {"checkpoint_files": {role: manifest(Path(path)) for role, path in sorted(checkpoints.items())}}
    router_path, router_files = KINDS[spec.kind].stage_router(router, stage)
    (stage / SPEC_FILE).write_text(json.dumps({**spec.to_dict(), **files, **router_files}, indent=2))
    artifacts = {"router": str(router_path), "cascade": str(stage / SPEC_FILE)}
    # basenames MLflow will store artifacts under
    names = {SPEC_FILE, *(kind.router_artifact for kind in KINDS.values()), "eval", OUTCOMES_FILE, *ROLES}
    for role, path in sorted(checkpoints.items()):
        if role not in ROLES:
            raise BundleError(f"unknown checkpoint role {role!r}; known: {', '.join(ROLES)}")
        artifacts[role] = str(_checkpoint_artifact(Path(path), role, stage, names))
    if eval_dir is not None:
        report = stage / "eval"
        report.mkdir()
        for pattern in EVAL_FILES:
            for file in Path(eval_dir).glob(pattern):
                shutil.copy2(file, report / file.name)
        if not (report / "report.md").is_file():
            raise BundleError(f"{eval_dir} has no report.md; run `escalate evaluate` first")
        artifacts["eval"] = str(report)
    if outcomes is not None:
        outcomes.to_parquet(stage / OUTCOMES_FILE, index=False)
        artifacts["outcomes"] = str(stage / OUTCOMES_FILE)
    return artifacts
