"""Profiles load into typed dataclasses, and every bad key or value fails at load time with a message
naming the file and the dotted key (STYLE.md 2, 12).

Bad profiles are the smoke profile with one thing broken, written into tmp_path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from escalate.config import ConfigError, Profile, from_dict, load_profile

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())


def write_profile(tmp_path: Path, edits: dict[str, Any], drop: tuple[str, ...] = ()) -> Path:
    """The smoke profile with `edits` (dotted key -> value) applied and `drop` keys removed."""
    raw = copy.deepcopy(SMOKE)
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    for dotted in drop:
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        del node[last]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    return str(info.value)


# --- the real profiles -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smoke", "tiny", "gpu"])
def test_every_shipped_profile_loads(name: str) -> None:
    profile = load_profile(name, root=ROOT)
    assert isinstance(profile, Profile)
    assert profile.name == name
    assert {"slm", "llm"} <= set(profile.models)
    assert profile.artifacts(ROOT) == ROOT / "artifacts" / name


def test_profile_values_come_from_the_file_not_the_defaults() -> None:
    smoke, tiny = load_profile("smoke", root=ROOT), load_profile("tiny", root=ROOT)
    assert (smoke.data.arith.n_train, smoke.data.arith.max_steps) == (40, 2)
    assert tiny.data.arith.n_train == 2000
    assert smoke.zoo is not None and smoke.zoo.llm.arch.hidden_size == 128
    assert smoke.zoo.llm.arch.num_heads == 2
    assert smoke.sampling.k == 2 and tiny.sampling.k == 4
    # YAML ints become floats where the field is a float
    assert smoke.cost.prices["llm"] == [1.0, 1.0] and all(isinstance(p, float) for p in smoke.cost.prices["llm"])


def test_sater_section_fills_its_typed_configs() -> None:
    from escalate.sater.config import SaterConfig, SaterDPOConfig

    smoke, gpu = load_profile("smoke", root=ROOT), load_profile("gpu", root=ROOT)
    assert isinstance(smoke.sater, SaterConfig) and isinstance(smoke.sater.dpo, SaterDPOConfig)
    assert (smoke.sater.k_train, smoke.sater.dpo.steps, smoke.sater.refusal.tau) == (4, 3, 0.5)
    assert smoke.sater.taus() == [0.5, 1.0]  # refusal.tau and the sweep's, ascending
    assert gpu.sater.dpo.lora.r == 16 and gpu.sater.refusal.lora is not None and smoke.sater.dpo.lora is None


@pytest.mark.parametrize(("key", "value", "named"), [
    ("sater.k_train", 1, "sater.k_train: must be in [2, 64]"),
    ("sater.refusal.tau", 0, "sater.refusal.tau: must be in (0, 1]"),
    ("sater.tau_sweep", [0.5, 1.5], "sater.tau_sweep: every τ must be in (0, 1]"),
    ("sater.dpo.beta", -1, "sater.dpo.beta: must be in (0, 10]"),
    ("sater.dpo.stpes", 3, "sater.dpo.stpes: unknown key (did you mean 'steps'?)"),
])
def test_bad_sater_values_name_their_key(tmp_path: Path, key: str, value: Any, named: str) -> None:
    assert named in load_error(write_profile(tmp_path, {key: value}))


def test_gpu_profile_validates_without_its_weights() -> None:
    gpu = load_profile(ROOT / "configs" / "gpu.yaml")
    assert gpu.zoo is None
    assert gpu.data.adapter == "gsm8k" and gpu.data.path == "data/gsm8k/test.jsonl"
    assert gpu.models["slm"].backend == "vllm" and gpu.models["slm"].dtype == "bfloat16"
    llm = gpu.models["llm"]
    assert llm.backend == "openai" and llm.endpoint == "http://127.0.0.1:8001/v1"
    assert llm.api_key_env == "ESCALATE_LLM_API_KEY"  # the variable's name, never a key
    assert gpu.evaluation.n_thresholds == 201
    assert gpu.data.split_fractions == {"train": 0.5, "calib": 0.25, "test": 0.25}


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="no such profile; known profiles: gpu, smoke, standin, tiny"):
        load_profile("nonexistent", root=ROOT)


# --- bad keys and types ------------------------------------------------------------------------


def test_unknown_key_names_file_dotted_key_and_suggests(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {"zoo.slm.arch.hiden_size": 64})
    msg = load_error(path)
    assert msg.startswith(f"{path}: zoo.slm.arch.hiden_size: unknown key")
    assert "did you mean 'hidden_size'?" in msg


def test_unknown_top_level_key(tmp_path: Path) -> None:
    msg = load_error(write_profile(tmp_path, {"sampleing": {"k": 2}}))
    assert "sampleing: unknown key (did you mean 'sampling'?)" in msg


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("sampling.k", "4", "expected int, got str '4'"),
        ("sampling.k", True, "expected int, got bool True"),
        ("zoo.slm.train.steps", 12.5, "expected int, got float"),
        ("sampling.temperature", "hot", "expected float, got str"),
        ("models.slm.chat_template", "yes", "expected bool, got str"),
        ("models.slm.backend", "tgi", "must be one of ['hf', 'vllm', 'openai'], got 'tgi'"),
        ("sampling.splits", "test", "expected a list, got str"),
        ("data.arith", [1, 2], "expected a mapping, got list"),
    ],
)
def test_wrong_type_names_file_and_key(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    path = write_profile(tmp_path, {key: value})
    msg = load_error(path)
    assert msg.startswith(f"{path}: {key}: ")
    assert expected in msg


def test_wrong_type_inside_a_list_names_the_element(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {"cost.prices.slm": [0.05, "free"]})
    assert load_error(path).startswith(f"{path}: cost.prices.slm[1]: expected float")


# --- out-of-range values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("zoo.slm.arch.hidden_size", 60, "must be num_heads * head_dim (1 * 64), got 60"),
        ("zoo.llm.arch.head_dim", 32, "must be 64 or 128"),
        ("sampling.k", 0, "must be in [1, 64], got 0"),
        ("sampling.splits", ["test", "dev"], "must be a non-empty subset"),
        ("data.split_fractions", {"train": 0.5, "calib": 0.2, "test": 0.2}, "must sum to 1, got 0.9"),
        ("data.split_fractions", {"train": 0.8, "dev": 0.2}, "unknown splits ['dev']"),
        ("evaluation.n_thresholds", 100, "must be >= 101"),
        ("evaluation.split", "dev", "must be one of"),
        ("data.arith.min_steps", 3, "min_steps <= max_steps"),
        ("data.arith.style_weights", {"terse": 1.0, "haiku": 1.0}, "unknown styles ['haiku']"),
        ("zoo.slm.train.warmup_steps", 12, "must be in [0, steps)"),
        ("models.llm.device", "tpu", "must be cpu, cuda, cuda:N or auto"),
        ("models.llm.endpoint", "localhost:8000", "must start with http:// or https://"),
        ("cost.prices.llm", [1.0], "expected [input, output] prices"),
        ("cost.kind", "tokens", "must be one of ['token_price', 'flops']"),  # the registry's name for it
    ],
)
def test_out_of_range_value_names_file_and_key(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    path = write_profile(tmp_path, {key: value})
    msg = load_error(path)
    # A value rejected inside a dict-valued field is reported under the field itself.
    field_key = "cost.prices" if key.startswith("cost.prices") else key
    assert msg.startswith(f"{path}: {field_key}: ")
    assert expected in msg


def test_missing_llm_names_the_models_key(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {}, drop=("models.llm",))
    msg = load_error(path)
    assert msg.startswith(f"{path}: models: ")
    assert "['llm']" in msg


def test_missing_both_models(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {}, drop=("models",))
    assert "must define ['llm', 'slm']" in load_error(path)


def test_openai_backend_needs_an_endpoint(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {"models.llm": {"name": "api", "source": "gpt", "backend": "openai"}})
    msg = load_error(path)
    assert msg.startswith(f"{path}: models.llm.endpoint: ")
    assert "needs an endpoint" in msg


def test_openai_backend_with_endpoint_loads(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {"models.llm": {"name": "api", "source": "gpt", "backend": "openai",
                                                   "endpoint": "https://api.example.com/v1"}})
    assert load_profile(path).models["llm"].endpoint == "https://api.example.com/v1"


def test_zoo_model_without_zoo_section(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {}, drop=("zoo",))
    msg = load_error(path)
    assert msg.startswith(f"{path}: zoo: ")


def test_token_prices_must_cover_every_model(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {"cost.prices": {"slm": [0.05, 0.05]}})
    msg = load_error(path)
    assert msg.startswith(f"{path}: cost: ") and "['llm']" in msg


def test_file_adapter_without_path(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {"data.adapter": "gsm8k"})
    assert load_error(path).startswith(f"{path}: data.path: adapter 'gsm8k' needs a path")


def test_missing_name_is_reported(tmp_path: Path) -> None:
    path = write_profile(tmp_path, {}, drop=("name",))
    msg = load_error(path)
    assert str(path) in msg and "'name'" in msg


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: smoke\nmodels: [unclosed\n")
    assert load_error(bad).startswith(f"{bad}: not valid YAML")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    assert load_error(listy) == f"{listy}: top level: expected a mapping, got list"


def test_from_dict_defaults_fill_omitted_sections() -> None:
    profile = from_dict(Profile, {"name": "x", "models": {"slm": {"source": "a/b"}, "llm": {"source": "c/d"}}})
    assert profile.sampling.k == 4 and profile.evaluation.n_thresholds == 101
    assert profile.data.split_fractions == {"train": 0.6, "calib": 0.2, "test": 0.2}


def test_each_profile_registers_under_its_own_model() -> None:
    """A smoke run is never gated against, nor takes @champion from, another profile's cascades."""
    from escalate.config import load_profile

    root = Path(__file__).resolve().parents[1]
    names = {p.stem: load_profile(p.stem, root).tracking.registered_model for p in (root / "configs").glob("*.yaml")}
    assert len(set(names.values())) == len(names), names
    assert names["tiny"] == "escalate-cascade"
