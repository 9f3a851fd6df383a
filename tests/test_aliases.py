"""Aliases against a real SQLite MLflow registry: gates decide @champion, rollback and promote obey them;
alias moves are compare-and-swap under the registry's lock, and a move commits with its tags or not at all."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from escalate.registry import cli
from escalate.registry.aliases import (
    CHALLENGER,
    CHAMPION,
    SERVING,
    AliasConflict,
    PromotionRefused,
    Registration,
    Registry,
    RegistryError,
    RegistryUnavailable,
    lineage_tags,
    registry_lock,
)
from escalate.registry.gates import GateResult

ROOT = Path(__file__).resolve().parents[1]
PASS = [GateResult("accuracy", True, 0.85, 0.81, "accuracy 0.85 ≥ LLM-only 0.83 − δ 0.02"),
        GateResult("cost_saving", True, 0.4, 0.1, "cost saving 0.4 ≥ minimum 0.1")]
FAIL = [GateResult("accuracy", False, 0.70, 0.81, "accuracy 0.70 < LLM-only 0.83 − δ 0.02"),
        GateResult("cost_saving", True, 0.6, 0.1, "cost saving 0.6 ≥ minimum 0.1")]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One SQLite store for this module (migrations cost seconds), artifacts beside it; each test uses its own
    model name."""
    path = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{path}/mlflow.db"
    MlflowClient(tracking_uri=uri).create_experiment("registry", artifact_location=(path / "artifacts").as_uri())
    return uri, path


def add(registry: Registry, store: tuple[str, Path], name: str, accuracy: float, gates: list[GateResult],
        **kwargs: object) -> Registration:
    source, run = candidate(store, name, accuracy)
    return registry.register(source, gates, run_id=run, **kwargs)


def candidate(store: tuple[str, Path], name: str, accuracy: float) -> tuple[str, str]:
    """A run with a param and a metric, and a stand-in model directory as the version's source."""
    uri, path = store
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.get_experiment_by_name("registry").experiment_id, run_name=name).info.run_id
    client.log_param(run, "threshold", str(accuracy / 2))
    client.log_metric(run, "accuracy", accuracy)
    source = path / "models" / run
    source.mkdir(parents=True)
    return str(source), run


def test_gates_decide_champion_and_rollback_restores_the_previous(store: tuple[str, Path]) -> None:
    registry = Registry(store[0], "story")
    first = add(registry, store, "v1", 0.85, PASS, tags={"escalate.strategy": "p_true_token"})
    assert first.passed and first.previous_champion is None
    assert registry.aliases() == {CHAMPION: "1", CHALLENGER: "1"}

    worse = add(registry, store, "v2", 0.70, FAIL, tags={"escalate.strategy": "entropy"})
    assert not worse.passed and worse.failed == ["accuracy"] and worse.champion == "1"
    assert registry.aliases() == {CHAMPION: "1", CHALLENGER: "2"}  # rejected, still registered and challenger
    v2 = registry.show(2)
    assert v2["tags"]["gates.passed"] == "false" and v2["tags"]["gates.failed"] == "accuracy"
    assert [(g.name, g.passed) for g in v2["gates"]] == [("accuracy", False), ("cost_saving", True)]
    assert "accuracy 0.70 < LLM-only" in v2["description"] and v2["metrics"]["accuracy"] == 0.70

    better = add(registry, store, "v3", 0.90, PASS)
    assert better.passed and better.previous_champion == "1"
    assert str(registry.champion().version) == "3" and str(registry.challenger().version) == "3"
    assert registry.show(3)["tags"]["escalate.previous_champion"] == "1"

    assert registry.rollback(reason="latency doubled", by="alice") == ("3", "1")
    assert str(registry.champion().version) == "1"
    demoted, restored = registry.show(3)["tags"], registry.show(1)["tags"]
    assert demoted["escalate.rolled_back_by"] == "alice"
    assert demoted["escalate.rolled_back_reason"] == "latency doubled"
    assert restored["escalate.restored_from"] == "3"
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(reason="again")  # version 1 was the first champion

    rows = registry.list_versions()
    assert [(r["version"], r["gates"], r["aliases"]) for r in rows] == [
        ("1", "pass", "champion"), ("2", "fail", ""), ("3", "pass", "challenger")]
    diff = registry.diff(1, 2)
    assert diff["metrics"]["accuracy"] == (0.85, 0.70) and diff["params"]["threshold"] == ("0.425", "0.35")
    assert diff["tags"]["gates.passed"] == ("true", "false")


def test_promote_refuses_failed_and_missing_versions(store: tuple[str, Path]) -> None:
    registry = Registry(store[0], "promote")
    add(registry, store, "p1", 0.85, PASS)
    add(registry, store, "p2", 0.70, FAIL)
    with pytest.raises(PromotionRefused, match=r"version 2: it failed its gates \(accuracy: accuracy 0.70"):
        registry.promote(2)
    with pytest.raises(PromotionRefused, match="version 7: it does not exist"):
        registry.promote(7)
    assert str(registry.champion().version) == "1"
    add(registry, store, "p3", 0.88, PASS)
    registry.rollback(by="bob")  # back to 1
    result = registry.promote(3, by="carol", reason="fixed the gateway")
    assert result.version == "3" and result.previous_champion == "1" and str(registry.champion().version) == "3"
    tags = registry.show(3)["tags"]
    assert tags["escalate.promoted_by"] == "carol" and tags["escalate.previous_champion"] == "1"


def test_unreachable_registry_raises_clearly_and_moves_nothing(store: tuple[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(RegistryUnavailable, match="could not"):
        Registry(f"sqlite:///{blocker}/mlflow.db", "x").register("/nowhere", PASS)

    registry = Registry(store[0], "partial")
    add(registry, store, "q1", 0.85, PASS)

    class FailsOnChampion(MlflowClient):
        def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
            if alias == CHAMPION and version != "1":
                raise ConnectionError("registry went away")
            super().set_registered_model_alias(name, alias, version)

    flaky = Registry(store[0], "partial", client=FailsOnChampion(tracking_uri=store[0], registry_uri=store[0]))
    with pytest.raises(RegistryError, match="restored @challenger"):
        add(flaky, store, "q2", 0.9, PASS)
    assert registry.aliases() == {CHAMPION: "1", CHALLENGER: "1"}  # neither alias moved


def test_register_without_gates_is_refused(store: tuple[str, Path]) -> None:
    with pytest.raises(RegistryError, match="gate results"):
        Registry(store[0], "nogates").register("/nowhere", [])


def test_lineage_tags_name_the_commit_and_profile() -> None:
    tags = lineage_tags(ROOT, "smoke", run_id="r1", parent_run_id="p1")
    assert tags["git.commit"] != "" and tags["escalate.run_id"] == "r1" and tags["escalate.profile"] == "smoke"


def test_cli_lists_shows_refuses_and_rolls_back(store: tuple[str, Path], capsys: pytest.CaptureFixture) -> None:
    registry = Registry(store[0], "cli")
    add(registry, store, "c1", 0.85, PASS)
    add(registry, store, "c2", 0.70, FAIL)
    add(registry, store, "c3", 0.90, PASS)
    base = ["--tracking-uri", store[0], "--name", "cli"]
    assert cli.main(["list", *base]) == 0
    out = capsys.readouterr().out
    assert "@champion: 3" in out and "accuracy" in out
    assert cli.main(["show", "2", *base]) == 0
    assert "FAIL" in capsys.readouterr().out
    assert cli.main(["promote", "2", *base]) == 2
    assert "failed its gates" in capsys.readouterr().err
    assert cli.main(["rollback", "--reason", "smoke query failed", "--by", "dave", *base]) == 0
    assert "-> version 1" in capsys.readouterr().out
    assert registry.show(3)["tags"]["escalate.rolled_back_by"] == "dave"
    assert cli.main(["diff", "1", "3", *base, "--json"]) == 0
    assert '"metrics"' in capsys.readouterr().out


def test_the_same_bundle_registers_once(store: tuple[str, Path]) -> None:
    """A rerun with nothing changed (same content digest) gives back the version it made, with its own verdicts."""
    registry = Registry(store[0], "rerun")
    first = add(registry, store, "v1", 0.85, PASS, tags={"escalate.content": "same"})
    again = add(registry, store, "v1-again", 0.85, FAIL, tags={"escalate.content": "same"})
    assert again.unchanged and again.version == first.version and again.passed and again.champion == first.version
    assert "unchanged" in again.summary() and len(registry.list_versions()) == 1
    other = add(registry, store, "v2", 0.86, PASS, tags={"escalate.content": "new"})
    assert not other.unchanged and other.version != first.version and len(registry.list_versions()) == 2


def test_a_move_from_a_stale_read_is_refused_and_changes_nothing(store: tuple[str, Path]) -> None:
    registry, other = Registry(store[0], "cas"), Registry(store[0], "cas")
    add(registry, store, "s1", 0.85, PASS)
    add(registry, store, "s2", 0.90, PASS)
    add(registry, store, "s3", 0.70, FAIL)
    seen = registry.aliases()[CHAMPION]
    assert seen == "2"
    other.rollback(reason="a concurrent operator")  # @champion: 2 -> 1 behind our back
    with pytest.raises(AliasConflict, match=r"@champion was expected at version 2 but is at version 1 .*"
                                            r"nothing was changed"):
        registry.move_alias(CHAMPION, "3", expected=seen, tags={"escalate.note": "stale"})
    assert registry.aliases() == {CHAMPION: "1", CHALLENGER: "3"}
    assert "escalate.note" not in registry.show(3)["tags"]

    registry.mark_serving(1, {"escalate.serving.at": "t1"}, expected=None)
    with pytest.raises(AliasConflict, match=r"@serving was expected at version \(unset\) but is at version 1"):
        other.mark_serving(2, {"escalate.serving.at": "t2"}, expected=None)  # it read @serving before the first
    assert registry.aliases()[SERVING] == "1" and "escalate.serving.at" not in registry.show(2)["tags"]
    registry.move_alias(SERVING, 2, expected="1")  # the expected version: it moves
    assert registry.aliases()[SERVING] == "2"


def test_moves_wait_for_the_registry_lock_of_another_writer(store: tuple[str, Path]) -> None:
    registry = Registry(store[0], "locked")
    add(registry, store, "l1", 0.85, PASS)
    add(registry, store, "l2", 0.90, PASS)
    lock = registry_lock(store[0], "locked")
    assert lock.path.parent == store[1]  # beside the SQLite database: every process using the store sees it
    errors: list[BaseException] = []

    def move() -> None:
        try:
            registry.move_alias(SERVING, "2", expected=None)
        except BaseException as exc:
            errors.append(exc)

    with lock:  # another escalate process in the middle of its read-check-write
        mover = threading.Thread(target=move)
        mover.start()
        time.sleep(0.5)
        assert mover.is_alive() and SERVING not in registry.aliases()  # waits, writes nothing
    mover.join(30)
    assert not errors and registry.aliases()[SERVING] == "2"

    with registry._locked():  # this object's own write, in this thread: another thread sharing it waits too
        mover = threading.Thread(target=lambda: registry.move_alias(SERVING, "1", expected="2"))
        mover.start()
        time.sleep(0.5)
        assert mover.is_alive() and registry.aliases()[SERVING] == "2"
    mover.join(30)
    assert registry.aliases()[SERVING] == "1"


class FailsOn(MlflowClient):
    """A client whose write of one alias, or one tag, raises: a failure between two writes of a commit."""

    def __init__(self, uri: str, alias: str | None = None, tag: str | None = None) -> None:
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self.alias, self.tag = alias, tag

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        if alias == self.alias:
            raise ConnectionError("registry went away")
        super().set_registered_model_alias(name, alias, version)

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        if key == self.tag:
            raise ConnectionError("registry went away")
        super().set_model_version_tag(name, version, key, value)


@pytest.mark.parametrize("fail", [{"alias": SERVING}, {"tag": "escalate.serving.gateway"}])
def test_serving_tags_and_the_serving_alias_move_together_or_not_at_all(store: tuple[str, Path],
                                                                        fail: dict[str, str]) -> None:
    name = f"serving-{next(iter(fail))}"
    registry = Registry(store[0], name)
    add(registry, store, "d1", 0.85, PASS)
    add(registry, store, "d2", 0.90, PASS)
    registry.mark_serving(1, {"escalate.serving.at": "t1", "escalate.serving.by": "alice"}, expected=None)
    registry.client.set_model_version_tag(name, "2", "escalate.serving.at", "an older deployment of version 2")
    before_aliases, before_tags = registry.aliases(), registry.show(2)["tags"]

    flaky = Registry(store[0], name, client=FailsOn(store[0], **fail))
    with pytest.raises(RegistryError, match=r"moving aliases failed \(restored version 2's tags\)"):
        flaky.mark_serving(2, {"escalate.serving.at": "t2", "escalate.serving.by": "bob",
                               "escalate.serving.gateway": "http://127.0.0.1:8000/v1"}, expected="1")
    assert registry.aliases() == before_aliases and before_aliases[SERVING] == "1"
    assert registry.show(2)["tags"] == before_tags  # the older value back, the new keys gone

    registry.mark_serving(2, {"escalate.serving.at": "t2"}, expected="1")  # the same commit, working: both land
    assert registry.aliases()[SERVING] == "2" and registry.show(2)["tags"]["escalate.serving.at"] == "t2"


def test_a_failed_promote_leaves_no_promotion_tags(store: tuple[str, Path]) -> None:
    registry = Registry(store[0], "promote-tags")
    add(registry, store, "t1", 0.85, PASS)
    add(registry, store, "t2", 0.70, PASS, may_take_champion=False)
    flaky = Registry(store[0], "promote-tags", client=FailsOn(store[0], alias=CHAMPION))
    with pytest.raises(RegistryError, match="promote version 2: moving aliases failed"):
        flaky.promote(2, by="erin")
    assert registry.aliases()[CHAMPION] == "1" and "escalate.promoted_by" not in registry.show(2)["tags"]


def test_a_move_overwritten_outside_the_lock_is_detected_on_read_back(store: tuple[str, Path]) -> None:
    registry = Registry(store[0], "readback")
    add(registry, store, "r1", 0.85, PASS)
    add(registry, store, "r2", 0.90, PASS)

    class Racing(MlflowClient):  # e.g. the MLflow UI moving @serving right after our write
        def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
            super().set_registered_model_alias(name, alias, version)
            MlflowClient(tracking_uri=store[0]).set_registered_model_alias(name, alias, "1")

    racing = Registry(store[0], "readback", client=Racing(tracking_uri=store[0], registry_uri=store[0]))
    with pytest.raises(AliasConflict, match=r"read back, @serving is at version 1 .*outside escalate's registry lock"):
        racing.move_alias(SERVING, "2", expected=None)


def test_a_version_names_itself_once_in_its_logged_models_tag(store: tuple[str, Path]) -> None:
    """The UI lists a run's "Registered models" from its models' mlflow.modelVersions tags: register writes it
    (a database store does not), and leaves alone the entry an MLflow server already wrote (version as an int)."""
    uri, _ = store
    client = MlflowClient(tracking_uri=uri)
    registry = Registry(uri, "linked")
    experiment = client.get_experiment_by_name("registry").experiment_id
    for version, preset in (("1", [{"name": "linked", "version": 1}]), ("2", None)):
        source, run = candidate(store, f"v{version}", 0.85)
        model = client.create_logged_model(experiment, source_run_id=run,
                                           tags={"mlflow.modelVersions": json.dumps(preset)} if preset else None)
        registration = registry.register(source, PASS, run_id=run, model_id=model.model_id)
        assert registration.version == version
        expected = preset or [{"name": "linked", "version": version}]
        assert json.loads(client.get_logged_model(model.model_id).tags["mlflow.modelVersions"]) == expected
