"""The model registry's decisions: register every candidate, move aliases only behind passing gates.

Aliases, not stages (STYLE.md 6). Every candidate becomes a version of one registered model
(default `escalate-cascade`). What a reviewer reads in the MLflow UI is the version's Markdown
description: its verdict, a table of its gates (verdict, figure, limit, reason), its headline figures
and where its evaluation report is. Its tags are only what a search filters on (strategy, kind,
profile, models, git commit, `gates.passed`, `gates.failed`); the per-gate details and the lineage
(every DVC hash, the runs it came from) are two JSON artifacts on the version's run,
`registration/gates.json` and `registration/lineage.json`, and each gate's figure is a metric
(`gate.<name>`) of the run and its logged model, so the UI's compare view sets versions side by side.
Versions registered before this layout, or without a run, carry the old `gate.<name>` and lineage
tags, and are read from them.

`@challenger` moves to the newest candidate; `@champion` moves only when every gate passed, and the
version that takes it remembers the one it replaced (`escalate.previous_champion`), so `rollback` can
move it back and record who did it and why. A rejected version stays registered, its reasons
visible in the UI.

Everything is read and checked before any alias moves: an unreachable registry raises
RegistryUnavailable and moves nothing, and when one alias move fails the ones already made are put
back. `promote` refuses, naming the reason, a version that does not exist or failed its gates.

Alias moves are compare-and-swap. MLflow has none server-side, so each move is a read-check-write
under the registered model's lock (`registry_lock`, a FileLock beside a SQLite or file store, else in
the temp directory, keyed on the store's URI and the model's name): the aliases are read again, every
alias to move must still point where the caller expects (AliasConflict, naming the alias, the expected
and the actual version, and nothing changed, when it does not), then the version tags and aliases are
written and the aliases read back. A move and the tags that describe it (promote's, rollback's,
mark_serving's) are one commit: a failure part way restores the tags and aliases as they were. The
guarantee holds among escalate processes that share the store and see the same lock file (one host,
or a filesystem whose flock works across hosts); a writer outside escalate (the MLflow UI, another
client) is not held off, and is only detected when the read-back finds an alias elsewhere.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import pandas as pd
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from escalate.config import Profile, load_profile
from escalate.locks import Busy, FileLock
from escalate.registry.gates import ChampionPairs, GateResult, all_passed, pair_with_champion
from escalate.telemetry import disable_telemetry
from escalate.tracking import dvc_hashes, git_commit, resolve_uri

DEFAULT_NAME = "escalate-cascade"
CHAMPION, CHALLENGER, SERVING = "champion", "challenger", "serving"
GATE_PREFIX = "gate."
TAG_PASSED = "gates.passed"
TAG_FAILED = "gates.failed"
TAG_RUN = "escalate.run_id"
TAG_PREVIOUS = "escalate.previous_champion"
TAG_CONTENT = "escalate.content"  # BundleInfo.content: the bundle's content digest
NONE = "none"
# Where a version's details live on its run (beside the tags a search filters on).
REGISTRATION_DIR = "registration"
GATES_FILE, LINEAGE_FILE = "gates.json", "lineage.json"
FILTER_LINEAGE = ("git.commit", "escalate.profile")  # lineage keys also kept as version tags, for search
HEADLINE = {"accuracy": "accuracy", "normalized_cost": "normalized cost", "saving": "saving",
            "auroc": "AUROC", "ece": "ECE"}  # the figures a version's description leads with
LOCK_WAIT_S = 60.0  # how long a registry write waits for another escalate process's to finish
T = TypeVar("T")
P = ParamSpec("P")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says why and what did (not) change."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or read; nothing was changed."""


class AliasConflict(RegistryError):
    """An alias was not where the caller expected it: someone moved it meanwhile; nothing was changed."""


class PromotionRefused(RegistryError):
    """A version that does not exist or failed its gates cannot become @champion."""


@dataclass(frozen=True)
class Registration:
    """What register() did: the new version, its verdict, and where @champion points now."""

    version: str
    passed: bool
    champion: str | None
    previous_champion: str | None
    failed: list[str] = field(default_factory=list)
    unchanged: bool = False  # the same bundle was registered before: this is that version, nothing new

    def summary(self, name: str = DEFAULT_NAME) -> str:
        if self.unchanged:
            return (f"{name} version {self.version}: unchanged (the same bundle, by content digest), not registered "
                    f"again; {'every gate passed' if self.passed else 'rejected by ' + ', '.join(self.failed)} then")
        if self.passed and self.champion == self.version:
            was = f" (was version {self.previous_champion})" if self.previous_champion else " (first champion)"
            return f"{name} version {self.version}: every gate passed; @champion -> {self.version}{was}"
        if self.passed:
            return f"{name} version {self.version}: every gate passed"
        return f"{name} version {self.version}: rejected by {', '.join(self.failed)}"


def who(by: str | None = None) -> str:
    """The person acting: a name given, else $USER, else the login name."""
    if by:
        return by
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gate_tags(results: Sequence[GateResult]) -> dict[str, str]:
    """One tag per gate plus the overall verdict and the names of the failed gates."""
    tags = {f"{GATE_PREFIX}{r.name}": r.tag_value() for r in results}
    tags[TAG_PASSED] = "true" if all_passed(results) else "false"
    tags[TAG_FAILED] = ",".join(r.name for r in results if not r.passed) or NONE
    return tags


def gates_from_tags(tags: Mapping[str, str]) -> list[GateResult]:
    """Gates of a version registered with one tag per gate (before gates.json, or without a run)."""
    return [GateResult.from_tag(key[len(GATE_PREFIX):], value) for key, value in sorted(tags.items())
            if key.startswith(GATE_PREFIX)]


def lineage_tags(root: Path | str, profile: str, run_id: str | None = None,
                 parent_run_id: str | None = None) -> dict[str, str]:
    """Git commit (and dirtiness), the profile's DVC data hashes and the runs a version came from."""
    tags = {**git_commit(Path(root)), **dvc_hashes(Path(root), profile), "escalate.profile": profile}
    if run_id:
        tags[TAG_RUN] = run_id
    if parent_run_id:
        tags["escalate.parent_run_id"] = parent_run_id
    return tags


def version_description(gates: Sequence[GateResult], figures: Mapping[str, float] | None = None,
                        report: str | None = None) -> str:
    """A version's Markdown description: the verdict, a table of its gates, its headline figures and its report."""
    failed = [g.name for g in gates if not g.passed]
    lines = ["**Every gate passed.**" if not failed else f"**Rejected** by {', '.join(failed)}.", "",
             "| gate | verdict | figure | limit | reason |", "|---|---|---|---|---|"]
    lines += [f"| {g.name} | {'pass' if g.passed else '**FAIL**'} | {_cell(g.figure)} | {_cell(g.limit)} | "
              f"{g.reason.replace('|', '/').replace(chr(10), ' ')} |" for g in gates]
    shown = [f"{label} {_cell(figures[key])}" for key, label in HEADLINE.items() if key in (figures or {})]
    if shown:
        lines += ["", "**Figures** (test split, at the threshold chosen on calib): " + " · ".join(shown)]
    if report:
        lines += ["", f"**Evaluation report:** {report}"]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(float(value)) else f"{float(value):.4g}"


def _not_found(exc: Exception) -> bool:
    return isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def _under_lock(method: Callable[Concatenate[Registry, P], T]) -> Callable[Concatenate[Registry, P], T]:
    """A Registry write that reads, checks and moves holding registry_lock, so two never interleave."""
    @functools.wraps(method)
    def locked(self: Registry, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._locked():
            return method(self, *args, **kwargs)
    return locked


def registry_lock(uri: str, name: str) -> FileLock:
    """The lock escalate's writes to registered model `name` in store `uri` take: beside a SQLite
    database or inside a file store (processes sharing the store share it), else in the temp directory."""
    digest = hashlib.sha256(f"{uri}\0{name}".encode()).hexdigest()[:16]
    local = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else \
        uri.removeprefix("file://") if uri.startswith("file://") or "://" not in uri else None
    if local and local != ":memory:":
        place = Path(local).parent if uri.startswith("sqlite:") else Path(local)
    else:
        place = Path(tempfile.gettempdir()) / "escalate-registry-locks"
    return FileLock(place / f".escalate-registry-{digest}.lock", f"registry write to {name}", wait_s=LOCK_WAIT_S)


def profile_registry(profile: Profile | str, root: Path | str, tracking_uri: str | None = None,
                     name: str | None = None) -> Registry:
    """The registry a profile registers into: its tracking URI (or `tracking_uri`) and its own registered
    model (tracking.registered_model, or `name`), so profiles never share champions or gates."""
    cfg = load_profile(profile, root) if isinstance(profile, str) else profile
    return Registry(resolve_uri(tracking_uri, root, cfg), name or cfg.tracking.registered_model)


class Registry:
    """One registered model in one MLflow registry, addressed through MlflowClient and aliases."""

    def __init__(self, tracking_uri: str, name: str = DEFAULT_NAME, client: MlflowClient | None = None) -> None:
        disable_telemetry()
        self.uri, self.name = tracking_uri, name
        self._lock_owner: int | None = None  # the thread holding registry_lock through this object (writes nest)
        try:
            self.client = client or MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        except Exception as exc:
            raise self._unavailable("connect", exc) from exc

    # ---- reads -------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise RegistryUnavailable unless the registry answers a read."""
        self._read("reach the registry", lambda: self.client.search_registered_models(max_results=1))

    def model_uri(self, alias: str = CHAMPION) -> str:
        return f"models:/{self.name}@{alias}"

    def aliases(self) -> dict[str, str]:
        """alias -> version of the registered model ({} before the first registration)."""
        model = self._read("read the registered model", self._registered_model)
        return {alias: str(version) for alias, version in model.aliases.items()} if model is not None else {}

    def champion(self) -> ModelVersion | None:
        return self._by_alias(CHAMPION)

    def challenger(self) -> ModelVersion | None:
        return self._by_alias(CHALLENGER)

    def version(self, version: str | int) -> ModelVersion | None:
        """The model version, or None when it does not exist."""
        def get() -> ModelVersion | None:
            try:
                return self.client.get_model_version(self.name, str(version))
            except MlflowException as exc:
                if _not_found(exc):
                    return None
                raise
        return self._read(f"read version {version}", get)

    def list_versions(self) -> list[dict[str, Any]]:
        """Every version, oldest first: aliases, gate verdict, failed gates, strategy, run, creation time."""
        versions = self._read("list versions", lambda: list(
            self.client.search_model_versions(f"name='{self.name}'", max_results=10_000)))
        by_version: dict[str, list[str]] = {}
        for alias, version in self.aliases().items():
            by_version.setdefault(str(version), []).append(alias)
        rows = []
        for mv in sorted(versions, key=lambda v: int(v.version)):
            tags = mv.tags or {}
            rows.append({
                "version": str(mv.version), "aliases": ",".join(sorted(by_version.get(str(mv.version), []))) or "",
                "gates": {"true": "pass", "false": "fail"}.get(tags.get(TAG_PASSED, ""), "-"),
                "failed": tags.get(TAG_FAILED, "-") if tags.get(TAG_FAILED) != NONE else "",
                "strategy": tags.get("escalate.strategy", "-"), "threshold": tags.get("escalate.threshold", "-"),
                "run_id": mv.run_id or tags.get(TAG_RUN, "-"), "created": _time(mv.creation_timestamp),
            })
        return rows

    def show(self, version: str | int) -> dict[str, Any]:
        """One version in full: aliases, gates, tags, lineage, and the params and metrics of its model and run."""
        mv = self._require(version)
        aliases = sorted(a for a, v in self.aliases().items() if str(v) == str(mv.version))
        params, metrics = self._params_metrics(mv)
        tags = dict(mv.tags or {})
        return {
            "name": self.name, "version": str(mv.version), "aliases": aliases, "source": mv.source,
            "run_id": mv.run_id, "model_id": _model_id(mv), "created": _time(mv.creation_timestamp),
            "description": mv.description or "", "gates": self.gates(mv),
            "tags": {k: v for k, v in sorted(tags.items()) if not k.startswith(GATE_PREFIX)},
            "lineage": self.lineage(mv), "params": params, "metrics": metrics,
        }

    def diff(self, a: str | int, b: str | int) -> dict[str, dict[str, tuple[Any, Any]]]:
        """Params, metrics, tags and lineage whose values differ between versions a and b: key -> (a's, b's)."""
        left, right = self.show(a), self.show(b)
        out: dict[str, dict[str, tuple[Any, Any]]] = {}
        for section in ("params", "metrics", "tags", "lineage"):
            keys = sorted(set(left[section]) | set(right[section]))
            out[section] = {k: (left[section].get(k), right[section].get(k)) for k in keys
                            if left[section].get(k) != right[section].get(k)}
        return out

    def gates(self, mv: ModelVersion) -> list[GateResult]:
        """A version's gate results: its run's gates.json, else (registered before it, or without a run) its tags."""
        stored = self._run_json(mv, GATES_FILE)
        if stored is None:
            return gates_from_tags(mv.tags or {})
        return [GateResult(**g) for g in stored["gates"]]

    def lineage(self, mv: ModelVersion) -> dict[str, str]:
        """Where a version came from: git commit, profile, every DVC hash, its runs (lineage.json over its tags)."""
        tags = mv.tags or {}
        old = {k: v for k, v in tags.items() if k.startswith(("git.", "dvc.")) or k in (
            "escalate.profile", TAG_RUN, "escalate.parent_run_id")}
        return {**old, **(self._run_json(mv, LINEAGE_FILE) or {})}

    def champion_outcomes(self) -> pd.DataFrame | None:
        """The champion bundle's per-query test outcomes (outcomes.parquet), or None without a champion or file."""
        champion = self.champion()
        return None if champion is None else self._stored_outcomes(champion)

    def champion_pairs(self, candidate: pd.DataFrame) -> ChampionPairs:
        """The regression gate's pairs: the candidate's per_query_outcomes against the champion's stored ones.

        Bookkeeping, not inference: the champion's outcomes are read from its bundle, the champion is
        never run here; gates.pair_with_champion says what the gate does when they are not comparable.
        """
        champion = self.champion()
        if champion is None:
            return ChampionPairs()
        return pair_with_champion(candidate, self._stored_outcomes(champion),
                                  f"{self.name}@{CHAMPION} (version {champion.version})")

    # ---- writes ------------------------------------------------------------------------------
    @_under_lock
    def register(self, model_uri: str, gates: Sequence[GateResult], *, run_id: str | None = None,
                 model_id: str | None = None, tags: Mapping[str, str] | None = None,
                 lineage: Mapping[str, str] | None = None, figures: Mapping[str, float] | None = None,
                 report: str | None = None, description: str | None = None,
                 may_take_champion: bool = True) -> Registration:
        """Register a candidate with its gate results; move @challenger to it, @champion only if all gates passed.

        may_take_champion=False registers a candidate the run's objective did not pick: it keeps its
        gate results (and can be promoted by hand later) but @champion stays where it is.

        tags: what a search filters on (BundleInfo.tags()). lineage: lineage_tags(); with a run it goes to
        the run's lineage.json (its git commit and profile also to tags), the gates to its gates.json and
        their figures to its metrics; without one, both are version tags. figures (headline figures) and
        report (the evaluation report's path inside the logged model) feed the Markdown description, unless
        `description` is given. Nothing moves unless the registry was read
        first; a failed alias move puts back the moves already made.
        """
        from escalate.registry.bundle import use_tracking_uri  # bundle loads MLflow's pyfunc machinery

        if not gates:
            raise RegistryError("register() needs the candidate's gate results; a version without gates "
                                "could never be promoted")
        self.check()
        self._ensure_model()
        before = self.aliases()
        champion = before.get(CHAMPION)
        same = self._same_content((tags or {}).get(TAG_CONTENT))
        if same is not None:  # a rerun with nothing changed: the version it made stands, with its own verdicts
            verdicts = self.gates(same)
            return Registration(version=str(same.version), passed=all_passed(verdicts),
                                champion=str(champion) if champion else None,
                                previous_champion=str(champion) if champion else None,
                                failed=[g.name for g in verdicts if not g.passed], unchanged=True)
        passed = all_passed(gates)
        takes_champion = passed and may_take_champion
        failed = [g.name for g in gates if not g.passed]
        lineage = dict(lineage or {})
        if run_id:
            lineage.setdefault(TAG_RUN, run_id)
            self._write("record the gates and lineage on the run (no version created)",
                        lambda: self._record(run_id, model_id, gates, lineage))
            kept = {k: lineage[k] for k in FILTER_LINEAGE if k in lineage}
        else:  # nowhere else to keep them
            kept = {**lineage, **gate_tags(gates)}
        verdict = {k: v for k, v in gate_tags(gates).items() if not k.startswith(GATE_PREFIX)}
        version_tags = {**{k: str(v)[:5000] for k, v in {**kept, **(tags or {})}.items()}, **verdict}
        if takes_champion:
            version_tags[TAG_PREVIOUS] = str(champion) if champion else NONE
        summary = description or version_description(gates, figures, self._report_link(run_id, model_id, report))

        def create() -> ModelVersion:
            with use_tracking_uri(self.uri):  # a models:/m-<id> source is resolved through the global URI
                return self.client.create_model_version(self.name, source=model_uri, run_id=run_id,
                                                        tags=version_tags, description=summary[:5000],
                                                        model_id=model_id)
        mv = self._write("create the model version (no alias moved)", create)
        if model_id:
            self._write(f"link version {mv.version} to its logged model {model_id} (the version exists; no alias "
                        "moved)", lambda: self._link_model(model_id, str(mv.version)))
        moves = {CHALLENGER: mv.version, **({CHAMPION: mv.version} if takes_champion else {})}
        self._move(moves, before, f"register version {mv.version}")
        return Registration(version=str(mv.version), passed=passed,
                            champion=str(mv.version) if takes_champion else (str(champion) if champion else None),
                            previous_champion=str(champion) if champion else None, failed=failed)

    @_under_lock
    def promote(self, version: str | int, by: str | None = None, reason: str | None = None) -> Registration:
        """Move @champion to `version` by hand; refused for a missing version or one that failed its gates."""
        self.check()
        mv = self.version(version)
        if mv is None:
            known = [r["version"] for r in self.list_versions()]
            raise PromotionRefused(f"cannot promote {self.name} version {version}: it does not exist "
                                   f"(versions: {', '.join(known) or 'none'})")
        tags = mv.tags or {}
        if tags.get(TAG_PASSED) != "true":
            gates = [g for g in self.gates(mv) if not g.passed]
            why = "; ".join(f"{g.name}: {g.reason}" for g in gates) or "it has no gate results"
            raise PromotionRefused(f"cannot promote {self.name} version {mv.version}: it failed its gates ({why})")
        before = self.aliases()
        current = before.get(CHAMPION)
        if current is not None and str(current) == str(mv.version):
            return Registration(str(mv.version), True, str(mv.version), str(current))
        self._move({CHAMPION: mv.version}, before, f"promote version {mv.version}", tags={mv.version: {
            TAG_PREVIOUS: str(current) if current else NONE, "escalate.promoted_by": who(by),
            "escalate.promoted_at": _now(), "escalate.promote_reason": reason or "manual promotion"}})
        return Registration(str(mv.version), True, str(mv.version), str(current) if current else None)

    @_under_lock
    def rollback(self, reason: str | None = None, by: str | None = None) -> tuple[str, str]:
        """Move @champion back to the champion it replaced; tag both versions with who, when and why.

        Returns (from_version, to_version).
        """
        self.check()
        before = self.aliases()
        current = before.get(CHAMPION)
        if current is None:
            raise RegistryError(f"{self.name} has no @champion to roll back")
        mv = self.version(current)
        previous = (mv.tags or {}).get(TAG_PREVIOUS, NONE) if mv is not None else NONE
        if previous == NONE:
            raise RegistryError(f"{self.name} version {current} has no previous champion recorded; "
                                "promote the version you want with `escalate registry promote VERSION`")
        if self.version(previous) is None:
            raise RegistryError(f"{self.name} version {current}'s previous champion, version {previous}, no longer "
                                "exists; promote a version explicitly")
        actor, when, why = who(by), _now(), reason or "no reason given"
        self._move({CHAMPION: str(previous)}, before, f"roll back to version {previous}", tags={
            current: {"escalate.rolled_back_by": actor, "escalate.rolled_back_at": when,
                      "escalate.rolled_back_reason": why, "escalate.rolled_back_to": str(previous)},
            previous: {"escalate.restored_by": actor, "escalate.restored_at": when,
                       "escalate.restored_reason": why, "escalate.restored_from": str(current)}})
        return str(current), str(previous)

    def resolve(self, alias: str) -> ModelVersion:
        """The version behind @alias; RegistryError naming the aliases that exist when it is unset."""
        mv = self._by_alias(alias)
        if mv is None:
            known = ", ".join(f"@{a} -> v{v}" for a, v in sorted(self.aliases().items())) or "none"
            raise RegistryError(f"{self.name} has no @{alias} (aliases: {known})")
        return mv

    def move_alias(self, alias: str, version: str | int | None, expected: str | None,
                   tags: Mapping[str, str] | None = None) -> None:
        """Compare-and-swap: point @alias at `version` (None: unset it; `tags` go on `version`) only if
        @alias points at `expected` now (None: unset); AliasConflict, nothing changed, when it does not."""
        self.check()
        self._move({alias: None if version is None else str(version)},
                   {alias: expected} if expected is not None else {},
                   f"move @{alias} to version {version}" if version is not None else f"unset @{alias}",
                   tags={version: tags} if tags and version is not None else None)

    def mark_serving(self, version: str | int, tags: Mapping[str, str], *, expected: str | None) -> None:
        """Record a deployment on the version (tags) and move @serving to it, together or not at all;
        `expected`: the version @serving must still point at (None: unset), read when the promotion began."""
        self.move_alias(SERVING, version, expected, tags)

    # ---- helpers -----------------------------------------------------------------------------
    def _registered_model(self) -> Any:
        try:
            return self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if _not_found(exc):
                return None
            raise

    def _same_content(self, content: str | None) -> ModelVersion | None:
        """The version registered from a bundle with this content digest, if any."""
        if not content:
            return None
        found = self._read("look for a version with the same content", lambda: self.client.search_model_versions(
            f"name = '{self.name}' and tags.`{TAG_CONTENT}` = '{content}'"))
        return min(found, key=lambda mv: int(mv.version)) if found else None

    def _ensure_model(self) -> None:
        if self._read("read the registered model", self._registered_model) is None:
            description = ("Cascades of an SLM and an LLM, gated by escalate: each version's description tabulates "
                           "its gates; its run holds registration/gates.json and lineage.json.")
            self._write("create the registered model",
                        lambda: self.client.create_registered_model(self.name, description=description))

    def _by_alias(self, alias: str) -> ModelVersion | None:
        if alias not in self.aliases():
            return None
        return self._read(f"read @{alias}", lambda: self.client.get_model_version_by_alias(self.name, alias))

    def _require(self, version: str | int) -> ModelVersion:
        mv = self.version(version)
        if mv is None:
            raise RegistryError(f"{self.name} has no version {version}")
        return mv

    def _stored_outcomes(self, mv: ModelVersion) -> pd.DataFrame | None:
        """A version's bundled outcomes.parquet, or None when its bundle has none."""
        from escalate.registry.bundle import OUTCOMES_FILE  # bundle loads MLflow's pyfunc machinery

        def download() -> pd.DataFrame | None:
            root = self.client.get_model_version_download_uri(self.name, mv.version)
            with tempfile.TemporaryDirectory(prefix="escalate-outcomes-") as tmp:
                try:
                    path = download_artifacts(artifact_uri=f"{root}/artifacts/{OUTCOMES_FILE}",
                                              dst_path=tmp, tracking_uri=self.uri)
                except (MlflowException, OSError):
                    return None
                return pd.read_parquet(path)
        return self._read(f"download version {mv.version}'s {OUTCOMES_FILE}", download)

    def _record(self, run_id: str, model_id: str | None, gates: Sequence[GateResult],
                lineage: Mapping[str, str]) -> None:
        """A version's details on its run: gates.json, lineage.json, and each gate's figure as a metric
        (of the run and its logged model, which the UI compares across versions)."""
        self.client.log_dict(run_id, {"passed": all_passed(gates), "gates": [g.to_dict() for g in gates]},
                             f"{REGISTRATION_DIR}/{GATES_FILE}")
        self.client.log_dict(run_id, dict(lineage), f"{REGISTRATION_DIR}/{LINEAGE_FILE}")
        figures = {f"{GATE_PREFIX}{g.name}": g.figure for g in gates}
        figures[TAG_PASSED] = 1.0 if all_passed(gates) else 0.0
        for key, value in figures.items():
            if value is not None and math.isfinite(float(value)):
                self.client.log_metric(run_id, key, float(value), model_id=model_id)

    def _link_model(self, model_id: str, version: str) -> None:
        """Name the version in its logged model's `mlflow.modelVersions` tag, as MLflow's server and
        `mlflow.register_model` do but a client writing to a database store does not: the UI lists a run's
        "Registered models" from this tag of the models the run logged or output (the retrain run's, its
        candidates'), besides the versions whose run_id is the run."""
        model = self.client.get_logged_model(model_id)
        linked = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        if not any((e.get("name"), str(e.get("version"))) == (self.name, version) for e in linked):  # a server's: int
            entry = {"name": self.name, "version": version}
            self.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*linked, entry])})

    def _report_link(self, run_id: str | None, model_id: str | None, report: str | None) -> str | None:
        """Markdown for the report: a link to the logged model's Artifacts tab in the UI, and its models:/ path."""
        if not report:
            return None
        if not (run_id and model_id):
            return f"`{report}`"
        experiment = self._read("read the version's run", lambda: self.client.get_run(run_id)).info.experiment_id
        return (f"[{report}](#/experiments/{experiment}/models/{model_id}/artifacts) "
                f"(`models:/{model_id}/{report}`)")

    def _run_json(self, mv: ModelVersion, name: str) -> Any:
        """A JSON file from the version's run's registration/ artifacts, or None (no run, or no such file)."""
        if not mv.run_id:
            return None

        def download() -> Any:
            with tempfile.TemporaryDirectory(prefix="escalate-registration-") as tmp:
                try:
                    path = download_artifacts(run_id=mv.run_id, artifact_path=f"{REGISTRATION_DIR}/{name}",
                                              dst_path=tmp, tracking_uri=self.uri)
                except (MlflowException, OSError):
                    return None
                return json.loads(Path(path).read_text())
        return self._read(f"download version {mv.version}'s {name}", download)

    def _tag(self, version: str | int, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, str(value)[:5000])

    def _params_metrics(self, mv: ModelVersion) -> tuple[dict[str, Any], dict[str, Any]]:
        params: dict[str, Any] = {}
        metrics: dict[str, Any] = {}
        if mv.run_id:
            run = self._read("read the version's run", lambda: self.client.get_run(mv.run_id))
            params.update(run.data.params)
            metrics.update(run.data.metrics)
        model_id = _model_id(mv)
        if model_id:
            try:
                logged = self.client.get_logged_model(model_id)
            except MlflowException:
                logged = None
            if logged is not None:
                params.update(logged.params or {})
                metrics.update({m.key: m.value for m in (logged.metrics or [])})
        return params, metrics

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold registry_lock for a write; re-entrant in the thread holding it (promote's move nests in
        promote), while another thread, even sharing this object, waits for it like another process."""
        if self._lock_owner == threading.get_ident():
            yield
            return
        lock = registry_lock(self.uri, self.name)
        try:
            lock.__enter__()
        except Busy as exc:
            raise RegistryError(f"MLflow registry at {self.uri}: waited {LOCK_WAIT_S:.0f} s to write to {self.name} "
                                f"and gave up (nothing was changed): {exc}") from None
        except OSError as exc:
            raise RegistryError(f"MLflow registry at {self.uri}: cannot take the registry lock {lock.path} "
                                f"(nothing was changed): {exc}; make its directory writable") from exc
        self._lock_owner = threading.get_ident()
        try:
            yield
        finally:
            self._lock_owner = None
            lock.__exit__()

    def _move(self, moves: Mapping[str, str | None], before: Mapping[str, str], what: str,
              tags: Mapping[str | int, Mapping[str, str]] | None = None) -> None:
        """Compare-and-swap: under the registry's lock, check every alias in `moves` still points where
        `before` says (absent: unset), then set `tags` (version -> tags) and the aliases (None: unset), and read them
        back. All or none: on a failure, tags and aliases already written go back to what they were."""
        with self._locked():
            now = self.aliases()
            for alias in moves:
                if now.get(alias) != before.get(alias):
                    raise AliasConflict(
                        f"{self.name}: {what} refused: @{alias} was expected at version {before.get(alias) or '(unset)'} "
                        f"but is at version {now.get(alias) or '(unset)'} (moved meanwhile by another process); "
                        "nothing was changed; read the aliases again and retry if the move still stands")
            old_tags = {str(v): self._read(f"read version {v}'s tags", lambda v=v, t=t: self._tag_values(v, t))
                        for v, t in (tags or {}).items()}
            done: list[str] = []
            tagged: list[str] = []
            try:
                for version, values in (tags or {}).items():
                    tagged.append(str(version))
                    self._tag(version, values)
                for alias, version in moves.items():
                    if version is None:
                        self.client.delete_registered_model_alias(self.name, alias)
                    else:
                        self.client.set_registered_model_alias(self.name, alias, str(version))
                    done.append(alias)
            except Exception as exc:
                state = self._undo(done, before, {v: old_tags[v] for v in tagged})
                raise RegistryError(f"MLflow registry at {self.uri}: {what}: moving aliases failed ({state}): "
                                    f"{type(exc).__name__}: {str(exc)[:500]}") from exc
            after = self.aliases()
            elsewhere = {alias: after.get(alias) for alias, version in moves.items()
                         if after.get(alias) != (None if version is None else str(version))}
            if elsewhere:
                raise AliasConflict(f"{self.name}: {what}: read back, " + ", ".join(
                    f"@{a} is at version {v or '(unset)'}" for a, v in elsewhere.items()) +
                    " — a writer outside escalate's registry lock moved it meanwhile; left as found")

    def _tag_values(self, version: str | int, tags: Mapping[str, str]) -> dict[str, str | None]:
        """The current values of `tags`' keys on a version (None: not set), to restore on a failed commit."""
        have = self._require(version).tags or {}
        return {key: have.get(key) for key in tags}

    def _undo(self, done: Sequence[str], before: Mapping[str, str],
              old_tags: Mapping[str, Mapping[str, str | None]]) -> str:
        """Put back the aliases in `done` and the tags in `old_tags`; say what was restored and what not."""
        restored, lost = [], []
        for alias in reversed(done):
            try:
                if alias in before:
                    self.client.set_registered_model_alias(self.name, alias, str(before[alias]))
                else:
                    self.client.delete_registered_model_alias(self.name, alias)
                restored.append(f"@{alias}")
            except Exception:
                lost.append(f"@{alias} (was {before.get(alias)})")
        for version, values in old_tags.items():
            try:
                for key, value in values.items():
                    if value is None:
                        self.client.delete_model_version_tag(self.name, version, key)
                    else:
                        self.client.set_model_version_tag(self.name, version, key, value)
                restored.append(f"version {version}'s tags")
            except Exception:
                lost.append(f"version {version}'s tags {sorted(values)}")
        state = f"restored {', '.join(restored)}" if restored else "no alias had moved"
        return state + (f"; could NOT restore {', '.join(lost)}" if lost else "")

    def _read(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RegistryError:
            raise
        except Exception as exc:
            raise self._unavailable(f"{what} (nothing was changed)", exc) from exc

    def _write(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"MLflow registry at {self.uri}: could not {what}: "
                                f"{type(exc).__name__}: {str(exc)[:500]}") from exc

    def _unavailable(self, what: str, exc: Exception) -> RegistryUnavailable:
        hint = (" (an HTTP registry retries for minutes by default; MLFLOW_HTTP_REQUEST_MAX_RETRIES and "
                "MLFLOW_HTTP_REQUEST_TIMEOUT shorten that)" if self.uri.startswith("http") else "")
        return RegistryUnavailable(f"MLflow registry at {self.uri}: could not {what}: "
                                   f"{type(exc).__name__}: {str(exc)[:500]}{hint}")


def _model_id(mv: ModelVersion) -> str | None:
    """The logged model behind a version: its model_id, else its `models:/m-<id>` source (SQLite drops the field)."""
    model_id = getattr(mv, "model_id", None) or (mv.tags or {}).get("escalate.model_id")
    if not model_id and (mv.source or "").startswith("models:/m-"):
        model_id = mv.source.removeprefix("models:/").split("/")[0]
    return model_id or None


def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"
