"""The zoo: tokenizer, model shape, and real pretraining steps that change the weights."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from escalate.cli import main
from escalate.config import (
    ArchConfig,
    ArithConfig,
    ConfigError,
    PretrainConfig,
    Profile,
    ZooConfig,
    ZooModelConfig,
    from_dict,
    load_profile,
)
from escalate.models import zoo
from escalate.stages.questions import QuestionsStage
from escalate.stages.zoo import ShippedZooError, ZooGateError, ZooStage, gate_failures, install, recipe, ship

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    pairs = zoo.corpus(ArithConfig(max_operand=9), 200, seed=1, exclude=set())
    return zoo.train_tokenizer((p + c for p, c in pairs), vocab_size=300)


def test_tokenizer_splits_digits_and_round_trips(tokenizer) -> None:
    text = "Question: Ann has 35 apples.\nAnswer: 35 + 7 = 42. The answer is 42."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(" 42", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if p.strip("Ġ")] == ["4", "2"]  # every digit its own token


def test_corpus_excludes_held_out_questions() -> None:
    first = zoo.corpus(ArithConfig(max_operand=9, max_steps=1), 50, seed=3, exclude=set())
    held_out = {p.removeprefix("Question: ").removesuffix("\nAnswer:") for p, _ in first[:10]}
    again = zoo.corpus(ArithConfig(max_operand=9, max_steps=1), 50, seed=3, exclude=held_out)
    assert not {p.removeprefix("Question: ").removesuffix("\nAnswer:") for p, _ in again} & held_out


def test_loss_covers_only_the_completion(tokenizer) -> None:
    batch = zoo.collate(zoo.encode([("Question: Ann has 3 cups.\nAnswer:", " The answer is 3.")], tokenizer),
                        tokenizer.pad_token_id)
    labelled = tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100])
    assert labelled.strip().startswith("The answer is 3.")


def test_pretrain_changes_weights_and_lowers_loss(tokenizer) -> None:
    model = zoo.build_model(ArchConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64), tokenizer, 0)
    before = [p.detach().clone() for p in model.parameters()]
    examples = zoo.encode(zoo.corpus(ArithConfig(max_operand=9), 64, 2, set()), tokenizer)
    losses = zoo.pretrain(model, examples, PretrainConfig(steps=15, batch_size=8, lr=3e-3, warmup_steps=2),
                          tokenizer.pad_token_id, seed=0)
    assert len(losses) == 15
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _tiny_zoo(ratio: float) -> ZooConfig:
    slm = ZooModelConfig(ArchConfig(64, 1, 1, 64, 64), PretrainConfig(steps=3, batch_size=4, warmup_steps=1))
    llm = ZooModelConfig(ArchConfig(128, 2, 2, 64, 256), PretrainConfig(steps=3, batch_size=4, warmup_steps=1))
    return ZooConfig(vocab_size=300, slm=slm, llm=llm, min_param_ratio=ratio)


def test_build_zoo_saves_hf_checkpoints(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = zoo.build_zoo(_tiny_zoo(2.0), ArithConfig(max_operand=9), tmp_path, seed=0, exclude=set())
    assert summary["param_ratio"] >= 2.0
    for role in ("slm", "llm"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / role)
        assert model.config.head_dim == 64  # vLLM's CPU kernels need it
        assert AutoTokenizer.from_pretrained(tmp_path / role).eos_token == "</s>"
        assert len(json.loads((tmp_path / role / "losses.json").read_text())) == 3


def test_build_zoo_rejects_an_llm_too_small(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_param_ratio"):
        zoo.build_zoo(_tiny_zoo(1000.0), ArithConfig(max_operand=9), tmp_path, seed=0, exclude=set())


def _scripted(scores: list[float], seen: list[dict]):
    """A calib score that replays `scores` and keeps a copy of the weights each one was given for."""
    def score(model) -> float:
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return scores[len(seen) - 1]
    return score


def _plateau_run(tokenizer, scores: list[float], every: int, patience: int | None, steps: int):
    model = zoo.build_model(ArchConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64), tokenizer, 0)
    examples = zoo.encode(zoo.corpus(ArithConfig(max_operand=9), 64, 2, set()), tokenizer)
    seen: list[dict] = []
    plateau = zoo.Plateau(_scripted(scores, seen), every, patience)
    losses = zoo.pretrain(model, examples, PretrainConfig(steps=steps, batch_size=4, warmup_steps=1),
                          tokenizer.pad_token_id, seed=0, plateau=plateau)
    return model, losses, plateau.restore(model, len(losses)), seen


def test_plateau_keeps_the_best_weights_and_stops_when_patience_runs_out(tokenizer) -> None:
    model, losses, record, seen = _plateau_run(tokenizer, [0.1, 0.5, 0.3, 0.2, 0.9], every=2, patience=2, steps=20)
    assert len(losses) == 8  # evaluations at 2, 4 (best), 6, 8: two without improvement, so it stops
    assert [p["step"] for p in record["curve"]] == [2, 4, 6, 8]
    assert [p["calib_accuracy"] for p in record["curve"]] == [0.1, 0.5, 0.3, 0.2]
    assert record["chosen_step"] == 4 and record["calib_accuracy"] == 0.5
    assert record["stopped"].startswith("patience")
    state = model.state_dict()
    assert all(torch.equal(state[k], seen[1][k]) for k in state)  # the weights graded 0.5, not the last ones
    assert not all(torch.equal(state[k], seen[3][k]) for k in state)
    assert record["curve"][0]["loss"] == pytest.approx(sum(losses[:2]) / 2)


def test_plateau_without_patience_runs_every_step_and_grades_the_last(tokenizer) -> None:
    _, losses, record, _ = _plateau_run(tokenizer, [0.2, 0.4, 0.4], every=4, patience=None, steps=10)
    assert len(losses) == 10
    assert [p["step"] for p in record["curve"]] == [4, 8, 10]  # the last step is always graded
    assert record["chosen_step"] == 10  # a tie goes to the later, longer-trained weights
    assert record["stopped"] == "steps: ran all 10 steps"


def test_greedy_answers_match_the_hf_backends_greedy_sample(tokenizer, tmp_path: Path) -> None:
    """The calib accuracy that picks the checkpoint reads answers exactly as the sample stage's sample 0 does."""
    from escalate.models.backends.base import SamplingParams
    from escalate.models.backends.hf import HFBackend

    model = zoo.build_model(ArchConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64), tokenizer, 0)
    model.save_pretrained(tmp_path)  # random weights: varied tokens (a few steps of training answer in spaces)
    tokenizer.save_pretrained(tmp_path)
    prompts = [p for p, _ in zoo.corpus(ArithConfig(max_operand=9), 6, 5, set())]
    ours = zoo.greedy_answers(model, tokenizer, prompts, max_new_tokens=12)
    params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)
    theirs = [g[0].text for g in HFBackend(str(tmp_path), batch_size=4).generate(prompts, params)]
    assert any(a.strip() for a in ours) and ours == theirs  # one batch of 6 against batches of 4


def test_accuracy_grades_each_answer_by_its_questions_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = ["3 + 1 = 4. The answer is 4.", "The answer is 5.", "The answer is B.", "I think A"]
    monkeypatch.setattr(zoo, "greedy_answers", lambda model, tok, prompts, n: answers[: len(prompts)])
    items = [("q1", "4", "numeric"), ("q2", "6", "numeric"), ("q3", "B", "choice"), ("q4", "B", "choice")]
    assert zoo.accuracy(None, None, items, 8) == 0.5


@pytest.mark.parametrize(("data", "message"), [
    ({"slm": {"train": {"patience": 2}}}, "zoo.slm.train.patience: needs eval_every > 0"),
    ({"llm": {"train": {"eval_every": -1}}}, "zoo.llm.train.eval_every: must be >= 0"),
    ({"slm_accuracy": [0.6, 0.4]}, r"zoo.slm_accuracy: must be \[low, high\]"),
    ({"slm_accuracy": [0.1]}, r"zoo.slm_accuracy: must be \[low, high\]"),
    ({"llm_min_accuracy": 1.5}, r"zoo.llm_min_accuracy: must be in \[0, 1\]"),
])
def test_zoo_config_rejects_bad_evaluation_and_gate_settings(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(ZooConfig, data, where="zoo")


def _summary(slm: float | None, llm: float | None) -> dict:
    return {"models": {"slm": {"calib_accuracy": slm}, "llm": {"calib_accuracy": llm}}}


def test_gate_names_the_figure_the_band_and_the_fix() -> None:
    cfg = ZooConfig(slm_accuracy=[0.45, 0.65], llm_min_accuracy=0.88)
    assert gate_failures(cfg, _summary(0.5, 0.9)) == []
    assert gate_failures(ZooConfig(), _summary(0.0, 0.0)) == []  # no band: nothing to miss
    low, high = gate_failures(cfg, _summary(0.23, 0.537)), gate_failures(cfg, _summary(0.8, 0.95))
    assert len(low) == 2 and len(high) == 1
    assert "SLM's calib accuracy 0.230 is below zoo.slm_accuracy [0.45, 0.65]" in low[0]
    assert "zoo.slm.train.steps" in low[0] and "enlarge zoo.slm.arch" in low[0]
    assert "LLM's calib accuracy 0.537 is below zoo.llm_min_accuracy 0.88" in low[1]
    assert "zoo.llm.train.steps" in low[1] and "enlarge zoo.llm.arch" in low[1]
    assert "0.800 is above zoo.slm_accuracy [0.45, 0.65]" in high[0] and "shrink zoo.slm.arch" in high[0]
    assert "no calib accuracy" in gate_failures(cfg, _summary(None, 0.9))[0]


def _with_zoo(profile: Profile, **changes: object) -> Profile:
    assert profile.zoo is not None
    return dataclasses.replace(profile, zoo=dataclasses.replace(profile.zoo, **changes))


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Profile, Path]:
    """A smoke project with its questions and a trained zoo, built once."""
    root = tmp_path_factory.mktemp("zoo_project")
    shutil.copytree(ROOT / "configs", root / "configs")
    profile = load_profile("smoke", root)
    QuestionsStage().build(profile, root)
    ZooStage().build(profile, root)
    return profile, root


@pytest.mark.slow
def test_smoke_zoo_records_its_calib_curve_and_chosen_step(smoke_zoo) -> None:
    profile, root = smoke_zoo
    summary = json.loads((profile.artifacts(root) / "zoo" / "zoo.json").read_text())
    assert summary["calib_questions"] == profile.data.arith.n_calib and summary["gate"]["passed"]
    for role in ("slm", "llm"):
        m = summary["models"][role]
        assert [p["step"] for p in m["curve"]] == [4, 8, 12]
        assert m["chosen_step"] in (4, 8, 12) and 0 <= m["calib_accuracy"] <= 1
        assert m["calib_accuracy"] == max(p["calib_accuracy"] for p in m["curve"])
        assert m["stopped"]
    metrics = ZooStage().log(profile, root)["metrics"]
    assert "zoo.slm.calib_accuracy" in metrics and "zoo.llm.chosen_step" in metrics


@pytest.mark.slow
def test_a_shipped_zoo_is_copied_not_trained(smoke_zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile, root = smoke_zoo
    built = profile.artifacts(root) / "zoo"
    shipped = ship(built, tmp_path / "zoo" / "smoke")
    assert set(shipped["files"]) >= {"slm/model.safetensors", "slm/tokenizer.json", "llm/model.safetensors"}

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a shipped zoo must not be trained")

    monkeypatch.setattr(zoo, "build_zoo", no_training)
    other = tmp_path / "fresh_clone"  # no questions table, no training: the shipped files are all it needs
    out = ZooStage().build(_with_zoo(profile, shipped=str(tmp_path / "zoo" / "smoke")), other)
    for name in shipped["files"]:
        assert (out / name).read_bytes() == (built / name).read_bytes()
    assert json.loads((out / "manifest.json").read_text()) == json.loads((built / "manifest.json").read_text())
    summary = json.loads((out / "zoo.json").read_text())
    assert summary["shipped_from"] == str(tmp_path / "zoo" / "smoke") and summary["gate"]["passed"]


@pytest.mark.slow
def test_a_tampered_or_foreign_shipped_zoo_is_refused(smoke_zoo, tmp_path: Path) -> None:
    profile, root = smoke_zoo
    dest = tmp_path / "shipped"
    ship(profile.artifacts(root) / "zoo", dest)
    weights = dest / "llm" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ShippedZooError, match=r"llm/model.safetensors missing or changed since shipping"):
        ZooStage().build(_with_zoo(profile, shipped=str(dest)), tmp_path / "a")
    weights.write_bytes(original)
    (dest / "slm" / "tokenizer.json").unlink()
    with pytest.raises(ShippedZooError, match=r"slm/tokenizer.json missing"):
        ZooStage().build(_with_zoo(profile, shipped=str(dest)), tmp_path / "b")

    ship(profile.artifacts(root) / "zoo", dest)  # whole again
    assert profile.zoo is not None
    longer = dataclasses.replace(profile.zoo.slm, train=dataclasses.replace(profile.zoo.slm.train, steps=13))
    with pytest.raises(ShippedZooError, match=r"another recipe \(zoo.slm.train.steps differ\)"):
        ZooStage().build(_with_zoo(profile, shipped=str(dest), slm=longer), tmp_path / "c")


@pytest.mark.slow
def test_the_gate_fails_a_zoo_outside_its_band_and_it_cannot_be_shipped(smoke_zoo, tmp_path: Path) -> None:
    profile, root = smoke_zoo
    dest = tmp_path / "shipped"
    ship(profile.artifacts(root) / "zoo", dest)
    banded = _with_zoo(profile, shipped=str(dest), slm_accuracy=[0.9, 1.0])
    with pytest.raises(ZooGateError, match=r"zoo gate \(smoke\): the SLM's calib accuracy .* below zoo.slm_accuracy"):
        ZooStage().build(banded, tmp_path / "a")
    failed = banded.artifacts(tmp_path / "a") / "zoo"
    assert not json.loads((failed / "zoo.json").read_text())["gate"]["passed"]
    with pytest.raises(ZooGateError, match="failed its gate"):
        ship(failed, tmp_path / "again")


@pytest.mark.slow
def test_zoo_ship_command(smoke_zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    _, root = smoke_zoo
    monkeypatch.chdir(root)  # the command changes into --root; the test's working directory comes back after
    assert main(["zoo", "ship", "--profile", "smoke", "--root", str(root), "--to", str(tmp_path / "z")]) == 0
    assert "commit it and set zoo.shipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "z" / "zoo.json").read_text())["files"]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    assert main(["zoo", "ship", "--profile", "smoke", "--root", str(root), "--to", str(tmp_path / "junk")]) == 2
    assert "not a shipped zoo" in capsys.readouterr().err


def test_the_shipped_tiny_zoo_is_intact_built_from_tiny_s_recipe_and_inside_its_band(tmp_path: Path) -> None:
    """What `make demo` starts from: every file matches its SHA-256, the recipe is tiny.yaml's (a changed zoo
    setting without a rebuild fails here, naming the setting), and the shipped models pass tiny's own gate."""
    profile = load_profile("tiny", root=ROOT)
    assert profile.zoo is not None and profile.zoo.shipped == "zoo/tiny"
    summary = install(ROOT / profile.zoo.shipped, tmp_path, recipe(profile))
    assert gate_failures(profile.zoo, summary) == []
    from transformers import AutoModelForCausalLM  # seconds to import, as in test_build_zoo_saves_hf_checkpoints

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "slm")
    assert sum(p.numel() for p in loaded.parameters()) == summary["models"]["slm"]["n_params"]
