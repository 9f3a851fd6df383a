"""SATER's two training stages run real steps on a tiny Llama, and move it the way each stage means to:
stage I towards the short correct answer, stage II to refuse where its target refused and not elsewhere."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from escalate.config import ConfigError, from_dict
from escalate.sater.config import SaterDPOConfig, SaterRefusalConfig
from escalate.sater.dpo import train_dpo
from escalate.sater.preferences import REFUSAL_COMPLETION
from escalate.sater.refusal_sft import add_refusal_token, train_refusal
from escalate.train.config import LoopConfig
from escalate.train.loop import train_on_completions
from tests.checkpoints import weights_changed
from tests.likelihood import completion_logprob, greedy

PROMPTS = [f"Question: Ann has {n} cups. Then buys 2. How many cups does Ann have now?\nAnswer:" for n in range(4)]
HELD_OUT = [f"Question: Ann has {n} cups. Then buys 2. How many cups does Ann have now?\nAnswer:" for n in range(4, 8)]


def short(n: int) -> str:
    return f" The answer is {n + 2}."


def worked(n: int) -> str:
    return f" Ann starts with {n} cups. Then buys 2, so {n} + 2 = {n + 3}. The answer is {n + 3}."


def margins(model: Path) -> list[float]:
    """log p(short correct) − log p(longer worked, wrong) on every prompt, trained on (0-3) and held out (4-7)."""
    chosen = completion_logprob(model, [(p, short(n)) for n, p in enumerate(PROMPTS + HELD_OUT)])
    rejected = completion_logprob(model, [(p, worked(n)) for n, p in enumerate(PROMPTS + HELD_OUT)])
    return [c - r for c, r in zip(chosen, rejected)]


def test_dpo_trains_real_steps_and_changes_the_weights(base_model: Path, tmp_path: Path) -> None:
    prefs = pd.DataFrame({
        "id": [f"q{i}" for i in range(4)], "prompt": PROMPTS,
        "chosen": [short(n) for n in range(4)], "rejected": [worked(n) for n in range(4)],
    })
    cfg = SaterDPOConfig(learning_rate=1e-3, steps=3, batch_size=2, max_length=128, beta=0.1)
    summary = train_dpo(base_model, prefs, cfg, tmp_path / "dpo")
    assert summary["steps"] == 3 and len(summary["losses"]) == 3
    assert summary["losses"][0] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
    assert weights_changed(base_model, tmp_path / "dpo")
    assert json.loads((tmp_path / "dpo" / "tokenizer_config.json").read_text())["eos_token"] == "</s>"
    # the mechanism: the short correct answer gains on the long one, on the trained prompts and on held-out ones
    # (about +12 nats here, summed over the completion's tokens)
    gains = [a - b for a, b in zip(margins(tmp_path / "dpo"), margins(base_model))]
    assert min(gains) > 5, gains


def test_dpo_with_an_nll_anchor_on_chosen_trains_and_weighs_both_losses(base_model: Path, tmp_path: Path) -> None:
    prefs = pd.DataFrame({"id": ["q0", "q1"], "prompt": PROMPTS[:2],
                          "chosen": [" The answer is 2.", " The answer is 3."],
                          "rejected": [" 0 + 2 = 3. The answer is 3.", " 1 + 2 = 4. The answer is 4."]})
    cfg = SaterDPOConfig(learning_rate=1e-3, steps=2, batch_size=2, max_length=128, beta=0.1, sft_weight=0.5)
    assert cfg.loss() == {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}
    assert SaterDPOConfig().loss() == {"loss_type": ["sigmoid"], "loss_weights": [1.0]}
    summary = train_dpo(base_model, prefs, cfg, tmp_path / "rpo")
    # at step 1 policy == reference: DPO's log 2 plus half the chosen responses' mean NLL, which is positive
    assert summary["losses"][0] > math.log(2) + 0.1
    assert weights_changed(base_model, tmp_path / "rpo")
    # the anchor's mechanism: plain DPO may raise the margin by making both responses less likely; the NLL term
    # raises the chosen response itself, so it ends more likely than before training and than plain DPO leaves it
    plain = train_dpo(base_model, prefs, replace(cfg, sft_weight=0.0), tmp_path / "plain")
    assert plain["losses"][0] == pytest.approx(math.log(2), abs=1e-3)
    pairs = list(zip(prefs["prompt"], prefs["chosen"]))
    base, anchored, unanchored = (completion_logprob(m, pairs) for m in (base_model, tmp_path / "rpo", tmp_path / "plain"))
    assert all(a > b + 0.3 and a > u + 0.3 for a, b, u in zip(anchored, base, unanchored)), (anchored, base, unanchored)


def test_stage_one_turns_a_verbose_slm_s_greedy_answers_short(base_model: Path, tmp_path: Path) -> None:
    """SATER's premise on a small fixture: an SLM fine-tuned until its greedy answers are the long worked style
    is trained by stage I (DPO + the NLL anchor, as the tiny profile sets it) on short-over-worked pairs; its
    greedy answers become the short style, on held-out prompts too (mostly 48 tokens, the cap, to 9 here)."""
    verbose = tmp_path / "verbose"
    sft = pd.DataFrame({"prompt": PROMPTS, "completion": [worked(n) for n in range(4)]})
    train_on_completions(base_model, sft, LoopConfig(learning_rate=1e-2, steps=100, batch_size=4, max_length=128),
                         verbose)
    prefs = pd.DataFrame({"id": [f"q{i}" for i in range(4)], "prompt": PROMPTS,
                          "chosen": [short(n) for n in range(4)], "rejected": [worked(n) for n in range(4)]})
    cfg = SaterDPOConfig(learning_rate=1e-3, steps=20, batch_size=4, max_length=128, beta=0.1, sft_weight=1.0)
    train_dpo(verbose, prefs, cfg, tmp_path / "dpo")
    tokenizer = AutoTokenizer.from_pretrained(verbose)
    replies = {m: greedy(m, PROMPTS + HELD_OUT, 48) for m in (verbose, tmp_path / "dpo")}
    before, after = ([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in replies[m]]
                     for m in (verbose, tmp_path / "dpo"))
    assert min(before) > 15, before  # the worked style: past "Ann starts with n cups. Then buys 2"
    assert all(a <= 0.6 * b for a, b in zip(after, before)), (before, after)
    assert all(t.startswith(" The answer is") for t in replies[tmp_path / "dpo"]), replies


def test_refusal_sft_trains_real_steps_and_changes_the_weights(base_model: Path, tmp_path: Path) -> None:
    table = pd.DataFrame({
        "id": [f"q{i}" for i in range(4)], "prompt": PROMPTS,
        "completion": [REFUSAL_COMPLETION, " The answer is 3.", REFUSAL_COMPLETION, " The answer is 5."],
        "p_correct": [0.0, 1.0, 0.25, 0.75],
    })
    cfg = SaterRefusalConfig(learning_rate=1e-3, steps=3, batch_size=2, max_length=128)
    summary = train_refusal(base_model, table, cfg, tmp_path / "sft")
    assert summary["steps"] == 3 and all(math.isfinite(x) for x in summary["losses"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layer = "model.layers.0.mlp.up_proj.weight"  # not the embedding, which the added token resized
    before, after = (AutoModelForCausalLM.from_pretrained(d).state_dict()[layer] for d in (base_model, tmp_path / "sft"))
    assert not torch.equal(before, after)

    trained = AutoTokenizer.from_pretrained(tmp_path / "sft")
    assert len(trained(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]) == 1  # refusal_token on by default
    kept = train_refusal(base_model, table, SaterRefusalConfig(learning_rate=1e-3, steps=3, batch_size=2,
                                                               max_length=128, refusal_token=False), tmp_path / "plain")
    assert kept["steps"] == 3 and weights_changed(base_model, tmp_path / "plain")


def one_step(n: int) -> str:
    return f"Question: Ann has {n} cups. How many cups does Ann have?\nAnswer:"


def three_steps(n: int) -> str:
    return (f"Question: Ann has {n} cups. Then gets 3 more. Then gives away 2. Then the pile grows 2 times. "
            f"How many cups does Ann have now?\nAnswer:")


def test_refusal_sft_refuses_where_its_targets_refused_and_answers_elsewhere(base_model: Path, tmp_path: Path) -> None:
    """Targets refuse the hard (three-step) questions, as p̂ < τ would, and answer the easy ones: the refusal
    becomes the greedy reply to hard questions, held-out ones too, and stays far less likely on easy ones."""
    trained, held = [1, 3, 5, 7], [2, 4, 6, 8]
    table = pd.DataFrame({
        "id": [f"q{i}" for i in range(8)],
        "prompt": [three_steps(n) for n in trained] + [one_step(n) for n in trained],
        "completion": [REFUSAL_COMPLETION] * 4 + [f" The answer is {n}." for n in trained],
        "p_correct": [0.0] * 4 + [1.0] * 4,
    })
    cfg = SaterRefusalConfig(learning_rate=1e-2, steps=60, batch_size=4, max_length=128)
    train_refusal(base_model, table, cfg, tmp_path / "sft")
    start = add_refusal_token(base_model, tmp_path / "start")  # the same one-token refusal, untrained

    def refusal(model: Path, prompt: Callable[[int], str]) -> list[float]:
        return completion_logprob(model, [(prompt(n), REFUSAL_COMPLETION) for n in trained + held])

    hard, easy = refusal(tmp_path / "sft", three_steps), refusal(tmp_path / "sft", one_step)
    # one token out of ~300 before training (log p ≈ −5.7); here about −0.1 on hard and −2.9 on easy questions
    assert all(before < -5 for before in refusal(start, three_steps) + refusal(start, one_step))
    assert min(hard) > math.log(0.5), hard
    assert max(easy) < min(hard) - 1.5, (easy, hard)
    replies = greedy(tmp_path / "sft", [three_steps(n) for n in held] + [one_step(n) for n in held], 4)
    assert [r.strip() == REFUSAL_COMPLETION.strip() for r in replies] == [True] * 4 + [False] * 4, replies


def test_the_refusal_becomes_one_token_whose_embedding_starts_at_its_pieces_mean(base_model: Path,
                                                                               tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = AutoTokenizer.from_pretrained(base_model)
    pieces = before(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1  # the zoo's arithmetic BPE spells it out
    out = add_refusal_token(base_model, tmp_path / "one")
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]
    assert ids == [len(before)] and tokenizer.decode(ids) == REFUSAL_COMPLETION
    assert model.get_input_embeddings().num_embeddings == len(before) + 1
    other = "Answer: 12"
    assert tokenizer(other, add_special_tokens=False)["input_ids"] == before(other, add_special_tokens=False)["input_ids"]
    old = AutoModelForCausalLM.from_pretrained(base_model).get_input_embeddings().weight
    new = model.get_input_embeddings().weight
    assert torch.allclose(new[-1], old[pieces].mean(0)) and torch.equal(new[:-1], old)
    assert model.get_output_embeddings().weight.data_ptr() == new.data_ptr()  # still tied
    assert add_refusal_token(out, tmp_path / "again") and len(AutoTokenizer.from_pretrained(tmp_path / "again")) == len(tokenizer)


def test_an_untied_padded_vocabulary_keeps_its_size_and_starts_both_rows_at_the_pieces(base_model: Path,
                                                                                       tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    padded = len(tokenizer) + 8  # room beyond the tokenizer, as Qwen's embedding matrices have
    LlamaForCausalLM(LlamaConfig(vocab_size=padded, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=1, head_dim=64, tie_word_embeddings=False)).save_pretrained(
        tmp_path / "untied")
    tokenizer.save_pretrained(tmp_path / "untied")
    pieces = tokenizer(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]
    old = AutoModelForCausalLM.from_pretrained(tmp_path / "untied")
    model = AutoModelForCausalLM.from_pretrained(add_refusal_token(tmp_path / "untied", tmp_path / "out"))
    new_id = len(tokenizer)
    assert model.get_input_embeddings().num_embeddings == padded
    for get in (lambda m: m.get_input_embeddings().weight, lambda m: m.get_output_embeddings().weight):
        assert torch.allclose(get(model)[new_id], get(old)[pieces].mean(0))


@pytest.mark.parametrize(("cls", "data", "key"), [
    (SaterDPOConfig, {"beta": 0}, "beta"),
    (SaterDPOConfig, {"sft_weight": -1}, "sft_weight"),
    (SaterDPOConfig, {"steps": 0}, "steps"),
    (SaterDPOConfig, {"steps": 5, "warmup_steps": 5}, "warmup_steps"),
    (SaterRefusalConfig, {"tau": 0}, "tau"),
    (SaterRefusalConfig, {"max_length": 4}, "max_length"),
    (SaterRefusalConfig, {"learning_rate": 2.0}, "learning_rate"),
])
def test_bad_values_fail_at_load_naming_the_key(cls: type, data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"sater\.{key}: must"):
        from_dict(cls, data, source="p.yaml", where="sater")


def test_fields_carry_help_text() -> None:
    from dataclasses import fields

    for cls in (SaterDPOConfig, SaterRefusalConfig):
        assert all(f.metadata.get("help") for f in fields(cls))
