"""Router state as data and the bundle's SHA-256 manifest: nothing a bundle holds is run as code, and a file
changed after registration is refused, named.

Every registered router is fitted on the P(IK) toy task (its checkpoint routers on a real random Llama
checkpoint), saved, loaded with pickle forbidden, and must score exactly as before.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from escalate.citer.evaluate import load_query_level
from escalate.config import ModelConfig, SamplingConfig
from escalate.evaluation.cost import TokenPriceCost
from escalate.evaluation.run import required_args
from escalate.registry.bundle import BundleError, CascadeSpec, _stage_artifacts, read_bundle
from escalate.registry.files import check_files, manifest
from escalate.routers.registry import ROUTERS, make_router
from escalate.routers.state import ARRAYS_FILE, STATE_FILE, RouterStateError, load_router, save_router
from tests.test_pik_probe import checkpoint, inputs  # noqa: F401 (checkpoint is a fixture)


def forbid_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle was called")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


@pytest.mark.parametrize("name", list(ROUTERS))
def test_every_router_round_trips_as_data_and_scores_alike(name: str, checkpoint: str, tmp_path: Path,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calib, _ = inputs(60, 5, "calib")
    test, _ = inputs(20, 6, "test")
    router = make_router(name, **dict.fromkeys(required_args(name), checkpoint)).fit(calib)
    saved = save_router(router, tmp_path / name)
    assert sorted(p.name for p in saved.iterdir()) == [ARRAYS_FILE, STATE_FILE]
    forbid_pickle(monkeypatch)
    loaded = load_router(saved)
    assert type(loaded) is type(router)
    np.testing.assert_array_equal(loaded.score(test), router.score(test))
    pd.testing.assert_frame_equal(loaded.slm_answers(test), router.slm_answers(test))
    reads, loaded_reads = router.slm_reads(test), loaded.slm_reads(test)
    assert (reads is None and loaded_reads is None) or np.array_equal(reads, loaded_reads)


def test_an_object_array_is_refused_without_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = save_router(make_router("random", seed=4), tmp_path / "random")
    np.savez(saved / ARRAYS_FILE, a0=np.array([{"payload": 1}], dtype=object))  # what only pickle could read
    forbid_pickle(monkeypatch)
    with pytest.raises(RouterStateError, match=r"unreadable: ValueError: .*allow_pickle=False"):
        load_router(saved)
    (saved / ARRAYS_FILE).write_bytes(pickle.dumps({"not": "an npz"}))
    with pytest.raises(RouterStateError, match="unreadable"):
        load_router(saved)
    np.savez(saved / ARRAYS_FILE, a0=np.arange(3))
    (saved / ARRAYS_FILE).write_bytes((saved / ARRAYS_FILE).read_bytes()[:-30])  # a zip cut short
    with pytest.raises(RouterStateError, match="unreadable: BadZipFile"):
        load_router(saved)


def test_a_state_may_name_only_the_listed_classes(tmp_path: Path) -> None:
    saved = save_router(make_router("random", seed=4), tmp_path / "random")
    state = json.loads((saved / STATE_FILE).read_text())
    assert state == {"format_version": 1, "router": "random", "state": {"object": "RandomRouter",
                                                                        "attrs": {"seed": 4}}}
    for node, message in [({"object": "Popen", "attrs": {}}, "unexpected node"),
                          ({"object": "EntropyRouter", "attrs": {}}, "says router 'random' but holds a EntropyRouter"),
                          ({"array": "a9"}, "array 'a9' is not in arrays.npz")]:
        (saved / STATE_FILE).write_text(json.dumps({**state, "state": node}))
        with pytest.raises(RouterStateError, match=message):
            load_router(saved)
    router = make_router("random")
    router.extra = object()  # state that is not data is refused when saved, named
    with pytest.raises(RouterStateError, match=r"random\.extra holds a builtins\.object"):
        save_router(router, tmp_path / "refused")


def fake_checkpoint(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    return path


def flip(path: Path, at: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_bundle_is_refused_naming_the_file(tmp_path: Path) -> None:
    spec = CascadeSpec("prompt_length", 0.5, ModelConfig(name="s"), ModelConfig(name="l"),
                       TokenPriceCost({"slm": (0.05, 0.1), "llm": (1.0, 2.0)}), SamplingConfig(k=1))
    calib, _ = inputs(30, 7, "calib")
    stage = tmp_path / "stage"
    stage.mkdir()
    checkpoints = {role: fake_checkpoint(tmp_path / role) for role in ("slm", "llm")}
    artifacts = _stage_artifacts(stage, spec, checkpoints, make_router("prompt_length").fit(calib), None, None)
    listed = json.loads((stage / "cascade.json").read_text())
    assert set(listed["router_files"]) == {ARRAYS_FILE, STATE_FILE}
    weights = listed["checkpoint_files"]["slm"]["model.safetensors"]
    assert weights["size"] == 2048 and len(weights["sha256"]) == 64
    assert read_bundle(artifacts)[1].name == "prompt_length"

    router_dir = Path(artifacts["router"])
    for victim, role in [(router_dir / ARRAYS_FILE, "router"), (router_dir / STATE_FILE, "router"),
                         (Path(artifacts["slm"]) / "model.safetensors", "slm")]:
        flip(victim)
        with pytest.raises(BundleError, match=rf"bundled {role} checkpoint .* altered {victim.name} \(SHA-256 differs"):
            read_bundle(artifacts)
        flip(victim)  # back as registered
    read_bundle(artifacts)
    (Path(artifacts["llm"]) / "extra.py").write_text("print('hello')")
    with pytest.raises(BundleError, match=r"bundled llm checkpoint .* unexpected extra\.py"):
        read_bundle(artifacts)


def test_check_files_names_every_problem_and_refuses_sizes_only_manifests(tmp_path: Path) -> None:
    directory = fake_checkpoint(tmp_path / "ckpt")
    expected = manifest(directory)
    check_files(directory, expected, "slm")
    (directory / "model.safetensors").write_bytes(b"short")
    (directory / "config.json").unlink()
    (directory / "sub").mkdir()
    (directory / "sub" / "new.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"missing config\.json; unexpected sub/new\.bin; "
                                          r"wrong size model\.safetensors \(5 of 2048 bytes\)$"):
        check_files(directory, expected, "slm")
    with pytest.raises(BundleError, match="without SHA-256 digests .* re-register the candidate"):
        check_files(directory, {"config.json": 2}, "slm")


def test_citer_reads_the_evaluate_stages_router_states(tmp_path: Path) -> None:
    for name in ("entropy", "random", "p_true_token"):
        save_router(make_router(name), tmp_path / "eval" / "routers" / name)
    samples = pd.DataFrame({"id": ["a"]})
    routers, read = load_query_level(tmp_path / "eval", tmp_path / "no-sater.parquet", samples)
    assert {n: r.name for n, r in routers.items()} == {"entropy": "entropy", "p_true_token": "p_true_token"}
    assert read is samples  # no SATER samples to add
