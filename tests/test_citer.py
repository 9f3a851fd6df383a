"""CITER's pieces on hand-made models: token labels, the τ edges, KV-cache catch-up, costs, the router."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from escalate.citer.config import CiterRouterConfig
from escalate.citer.decode import ModelCost, TokenLevelDecoder, threshold_logit
from escalate.citer.labels import label, reference_solutions, teacher_force
from escalate.citer.router import FixedRouter, TokenRouter, fit_router
from escalate.config import ArithConfig
from escalate.data.graders import grade_numeric
from escalate.data.validation import ensure_valid
from escalate.evaluation.cost import BytesMovedCost
from escalate.evaluation.metrics import auroc
from escalate.models import zoo

WORDS = ["Question", ":", "Ann", "has", "cups", ".", "How", "many", "?", "Answer", "The", "answer", "is",
         "4", "5", "7", "+", "2", "="]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace-and-punctuation words, one token each: tokens a test can name."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


class Bigram(torch.nn.Module):
    """A hand-made language model: the next token is a fixed function of the previous one (else eos).

    It needs no KV cache (the previous token is always among the new ones), so the token-level decoder
    drives it exactly as it drives a transformer. Its hidden state is the previous token, one-hot.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, nexts: dict[str, str]) -> None:
        super().__init__()
        vocab = len(tokenizer)
        self.config = LlamaConfig(vocab_size=vocab, hidden_size=vocab, num_hidden_layers=1, num_attention_heads=1,
                                  head_dim=4)
        table = torch.full((vocab, vocab), -10.0)
        table[:, tokenizer.eos_token_id] = 0.0
        for prev, nxt in nexts.items():
            table[tokenizer.convert_tokens_to_ids(prev), tokenizer.convert_tokens_to_ids(nxt)] = 10.0
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False, logits_to_keep: int = 0,
                **_: object) -> SimpleNamespace:
        logits = self.table[input_ids][:, -logits_to_keep:]
        hidden = torch.nn.functional.one_hot(input_ids, self.config.vocab_size).float()
        return SimpleNamespace(logits=logits, hidden_states=(hidden,))


COMMON = {":": "5", "5": ".", "7": ".", "4": ".", ".": "The", "The": "answer", "answer": "is"}
# The SLM thinks every answer is 7; the LLM knows question 1's is 5 and starts question 2's with a 4.
SLM_NEXT = {**COMMON, "is": "7"}
LLM_NEXT = {**COMMON, ":": "4", "is": "5"}
QUESTIONS = pd.DataFrame({
    "id": ["q1", "q2"], "question": ["Ann has cups. How many?"] * 2, "answer": ["5", "7"],
    "meta": ['{"steps": "5. The answer is 5."}', '{"steps": "7. The answer is 7."}'],
})


@pytest.fixture(scope="module")
def bigrams() -> tuple[Bigram, Bigram, PreTrainedTokenizerFast]:
    tokenizer = word_tokenizer()
    return Bigram(tokenizer, SLM_NEXT), Bigram(tokenizer, LLM_NEXT), tokenizer


def grade(answers: dict[str, str]):
    return lambda qid, text: grade_numeric(text, answers[qid])


def test_labels_on_a_hand_made_pair(bigrams) -> None:
    slm, llm, tokenizer = bigrams
    positions = teacher_force(slm, llm, tokenizer, QUESTIONS, reference_solutions(QUESTIONS, "steps"))
    # Each reference is "N . The answer is N ." + eos: 8 positions, one hidden state each.
    assert positions.frame.groupby("id").size().tolist() == [8, 8]
    assert positions.hidden.shape == (16, len(tokenizer))
    first = tokenizer.convert_tokens_to_ids(":")
    assert positions.hidden[0].argmax() == first  # the state that predicts the first token reads the prompt's end

    answers = dict(zip(QUESTIONS["id"], QUESTIONS["answer"]))
    alone = [TokenLevelDecoder(slm, llm, tokenizer, FixedRouter(), tau) for tau in (1.0, 0.0)]
    labels = label(positions, grade(answers), *alone, max_new_tokens=20, round_=1)
    # q1: the SLM says 7 where the answer 5 goes (only the LLM matches); after the final "." neither model
    # predicts eos, and only the LLM's continuation ("The answer is 5") keeps the right answer.
    assert labels["case"].tolist()[:8] == ["slm_match"] * 5 + ["llm_match", "slm_match", "llm_rollout"]
    # q2 (answer 7): neither starts with 7, but the SLM's start continued by the SLM reaches "answer is 7".
    assert labels["case"].tolist()[8:] == ["slm_rollout"] + ["slm_match"] * 6 + ["slm_rollout"]
    assert labels["label"].tolist() == [0, 0, 0, 0, 0, 1, 0, 1] + [0] * 8
    ensure_valid(labels, "token_labels")

    # With the LLM continuing both rollouts (a router in the loop that always calls it), the same first
    # tokens are judged differently: the rollout labels depend on the policy, the shortcut ones do not.
    llm_policy = TokenLevelDecoder(slm, llm, tokenizer, FixedRouter(), 0.0)
    again = label(positions, grade(answers), llm_policy, llm_policy, 20, 2)
    assert again.loc[[7, 8, 15], "case"].tolist() == ["slm_rollout", "neither", "neither"]
    assert (again["case"] == labels["case"]).sum() == 13 and set(again["round"]) == {2}


def test_reference_solutions_name_questions_without_one() -> None:
    with pytest.raises(ValueError, match="q2"):
        reference_solutions(QUESTIONS.assign(meta=['{"steps": "x"}', '{"terse": "y"}']), "steps")


def random_llama(vocab: int, hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    """A random Llama whose logits are peaked (large init), so greedy choices are not near-ties."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, initializer_range=0.3,
                         max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llamas() -> tuple[LlamaForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast]:
    tokenizer = word_tokenizer()
    return random_llama(len(tokenizer), 32, 1, 0), random_llama(len(tokenizer), 64, 2, 1), tokenizer


PROMPTS = [[1, 4, 5, 6], [1, 7, 8, 9, 10, 11, 12, 13], [1, 14]]


def greedy(model: LlamaForCausalLM, prompt: list[int], n: int) -> list[int]:
    """transformers' own greedy decoding of one prompt, up to and including eos."""
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=2)
    new = out[0, len(prompt):].tolist()
    return new[: new.index(2) + 1] if 2 in new else new


def saturated_router(dim: int, seed: int) -> TokenRouter:
    """A random router whose logits are huge: its sigmoid rounds to exactly 0 or 1 in float32."""
    torch.manual_seed(seed)
    router = TokenRouter(dim, [8])
    with torch.no_grad():
        router.mlp[-1].weight.mul_(1e6)
    return router.eval()


@pytest.mark.parametrize("tau, role", [(0.0, "llm"), (1.0, "slm")])
def test_tau_edges_are_exactly_llm_only_and_slm_only_greedy(llamas, tau: float, role: str) -> None:
    slm, llm, tokenizer = llamas
    router = saturated_router(32, 0)
    gens = TokenLevelDecoder(slm, llm, tokenizer, router, tau, batch_size=2).generate_ids(PROMPTS, 12)
    alone = {"slm": slm, "llm": llm}[role]
    assert [g.token_ids for g in gens] == [greedy(alone, p, 12) for p in PROMPTS]
    assert all(set(g.sources) == {role} for g in gens)
    assert {p for g in gens for p in g.llm_scores} <= {0.0, 1.0}  # saturated, yet the edges hold
    assert all(len(g.token_ids) >= 2 for g in gens)  # the comparison covers decoding, not only prefill


def test_threshold_rule() -> None:
    assert threshold_logit(0.0) == -np.inf and threshold_logit(1.0) == np.inf
    assert threshold_logit(0.5) == 0.0
    with pytest.raises(ValueError, match="tau"):
        threshold_logit(1.5)


class EveryThird(torch.nn.Module):
    """Calls the LLM on every third token (by step, for every sequence), so its cache lags two tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full((hidden.shape[0],), 5.0 if self.calls % 3 == 0 else -5.0)


def test_llm_cache_catch_up_matches_recomputing_the_whole_context(llamas) -> None:
    slm, llm, tokenizer = llamas
    prompts = [p[:3] for p in PROMPTS[:2]] + [PROMPTS[1]]  # one sequence of another length, left-padded
    gens = TokenLevelDecoder(slm, llm, tokenizer, EveryThird(), 0.5, batch_size=3).generate_ids(prompts, 10)
    mixed = 0
    for prompt, g in zip(prompts, gens):
        for i, (token, source) in enumerate(zip(g.token_ids, g.sources)):
            model = llm if source == "llm" else slm
            with torch.inference_mode():  # no cache, no padding: the whole context at once
                expected = model(torch.tensor([prompt + g.token_ids[:i]])).logits[0, -1].argmax().item()
            assert token == expected
        mixed += {"slm", "llm"} <= set(g.sources)
    assert mixed >= 1  # the LLM really caught up after skipping tokens
    # Each catch-up is one pass that processes every token written since the LLM last ran: its FLOPs
    # cover the context up to its last call, its passes are as many as the tokens it wrote.
    costs = ModelCost.of(llm)
    for prompt, g in zip(prompts, gens):
        last = max(i for i, s in enumerate(g.sources) if s == "llm")
        assert g.llm_passes == g.n_llm_tokens
        assert g.flops["llm"] == costs.pass_flops(len(prompt) + last)


def test_costs_of_the_edges_are_plain_greedy_decoding(llamas) -> None:
    slm, llm, tokenizer = llamas
    router = TokenRouter(32, [8])
    priced = {r: ModelCost.of(m) for r, m in (("slm", slm), ("llm", llm))}
    plain = BytesMovedCost({r: c.weight_bytes for r, c in priced.items()}, {r: c.kv_bytes_per_token for r, c in priced.items()})
    assert priced["llm"].kv_bytes_per_token == 2 * 2 * 1 * 32 * 4  # K and V, 2 layers, 1 KV head of 32, fp32
    for tau, role, other in ((0.0, "llm", "slm"), (1.0, "slm", "llm")):
        for prompt, g in zip(PROMPTS, TokenLevelDecoder(slm, llm, tokenizer, router, tau).generate_ids(PROMPTS, 12)):
            assert g.bytes_moved[role] == plain.cost(role, len(prompt), g.n_output_tokens)
            assert g.flops[role] == priced[role].pass_flops(len(prompt) + g.n_output_tokens - 1)
            assert g.bytes_moved["router"] == g.n_output_tokens * ModelCost.of(router).weight_bytes
            if role == "llm":  # the SLM still steps every token, for the router's hidden state
                assert g.bytes_moved[other] == plain.cost(other, len(prompt), g.n_output_tokens)
            else:
                assert g.bytes_moved[other] == 0 and g.llm_passes == 0


def test_per_row_budgets_and_text(llamas) -> None:
    slm, llm, tokenizer = llamas
    gens = TokenLevelDecoder(slm, llm, tokenizer, FixedRouter(), 1.0).generate_ids(PROMPTS, [1, 3, 2])
    assert [len(g.token_ids) <= b for g, b in zip(gens, [1, 3, 2])] == [True] * 3
    assert all(g.finish_reason in ("stop", "length") for g in gens)
    assert gens[0].text == tokenizer.decode([t for t in gens[0].token_ids if t != 2], skip_special_tokens=True)


def test_router_learns_a_separable_rule_and_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(600, 6)).astype(np.float32)
    labels = (hidden[:, 0] + 0.5 * hidden[:, 1] > 0.3).astype(int)
    groups = np.repeat(np.arange(60), 10)
    router, summary = fit_router(hidden, labels, groups, CiterRouterConfig(hidden_sizes=[16], epochs=20, batch_size=64,
                                                                           learning_rate=0.01), seed=0)
    assert summary["val_auroc"] > 0.95 and summary["n_val_positions"] == 60
    # fresh positions, in neither the training nor the early-stopping split: label 1 still scores above label 0
    fresh = rng.normal(size=(400, 6)).astype(np.float32)
    assert auroc(router.predict(fresh), fresh[:, 0] + 0.5 * fresh[:, 1] > 0.3) > 0.95
    assert summary["val_losses"][summary["best_epoch"]] == summary["val_loss"] < summary["val_losses"][0] + 1e-9
    loaded = TokenRouter.load(router.save(tmp_path / "router"))
    np.testing.assert_array_equal(loaded.predict(hidden), router.predict(hidden))
    assert ModelCost.of(loaded).kv_bytes_per_token == 0 and ModelCost.of(FixedRouter()).weight_bytes == 0


def test_router_on_real_slm_states_ranks_llm_positions_first_on_unseen_questions(model_pair) -> None:
    """Teacher-forced SLM hidden states of arithmetic solutions, labelled "the LLM writes it" where the next token
    is a digit (the numbers a weak SLM gets wrong): a router fit on 40 questions ranks the digit positions of 20
    other questions first (AUROC about 0.90 here). The same states with the labels shuffled give a router at
    chance, so the ranking comes from the labels, not from the states alone."""
    slm_dir, llm_dir = model_pair
    slm, llm = (AutoModelForCausalLM.from_pretrained(d).eval() for d in model_pair)
    tokenizer = AutoTokenizer.from_pretrained(slm_dir)
    pairs = zoo.corpus(ArithConfig(max_operand=9), 60, seed=2, exclude=set())
    questions = pd.DataFrame({"id": [f"q{i}" for i in range(60)],
                              "question": [p.removeprefix("Question: ").removesuffix("\nAnswer:") for p, _ in pairs]})
    positions = teacher_force(slm, llm, tokenizer, questions, [c.strip() for _, c in pairs])
    digit = np.array([tokenizer.convert_ids_to_tokens(int(t)).isdigit() for t in positions.frame["token_id"]])
    ids = positions.frame["id"].to_numpy()
    seen = np.isin(ids, questions["id"][:40])
    assert 0.1 < digit[~seen].mean() < 0.4  # both kinds of position among the unseen ones
    cfg = CiterRouterConfig(hidden_sizes=[16], epochs=20, batch_size=256, learning_rate=0.01)
    scores = {}
    for name, labels in (("labels", digit), ("shuffled", np.random.default_rng(0).permutation(digit))):
        router, _ = fit_router(positions.hidden[seen], labels[seen].astype(int), ids[seen], cfg, seed=0)
        scores[name] = router.predict(positions.hidden[~seen])
    assert auroc(scores["labels"], digit[~seen]) > 0.8
    assert scores["labels"][digit[~seen]].mean() > scores["labels"][~digit[~seen]].mean() + 0.2
    assert abs(auroc(scores["shuffled"], digit[~seen]) - 0.5) < 0.15


def test_decoder_refuses_models_with_different_vocabularies(llamas) -> None:
    slm, _, tokenizer = llamas
    with pytest.raises(ValueError, match="one vocabulary"):
        TokenLevelDecoder(slm, random_llama(len(tokenizer) + 1, 32, 1, 2), tokenizer, FixedRouter(), 0.5)


def test_bytes_moved_cost_sums_weights_and_attended_positions_per_pass() -> None:
    cost = BytesMovedCost({"slm": 100}, {"slm": 10})
    assert cost.cost("slm", 3, 3) == 3 * 100 + 10 * (3 + 4 + 5)  # passes see 3, 4 and 5 positions
    assert cost.cost("slm", 3, 0) == 100 + 10 * 3  # an empty answer still paid for its prefill
    with pytest.raises(KeyError, match="llm"):
        cost.cost("llm", 1, 1)
    with pytest.raises(ValueError, match="same model roles"):
        BytesMovedCost({"slm": 100}, {"llm": 10})


def test_tau_sweep_spans_both_edges_and_is_densest_at_small_llm_shares() -> None:
    from escalate.citer.evaluate import MIN_LLM_SHARE, sweep_taus

    scores = np.random.default_rng(0).uniform(size=100_000)
    taus = sweep_taus(scores, 21)
    assert taus[0] == 0.0 and taus[-1] == 1.0 and taus == sorted(taus) and len(taus) == 21
    shares = [(scores > t).mean() for t in taus[1:-1]]
    assert shares[0] == pytest.approx(0.5, abs=0.01) and shares[-1] == pytest.approx(MIN_LLM_SHARE, abs=0.001)
    assert np.allclose(np.diff(np.log(shares)), np.log(shares[1] / shares[0]), atol=0.1)  # geometric


def test_citer_commands_parse_and_refuse_a_profile_without_a_citer_section(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bare_gpu_root: Path
) -> None:
    from escalate.cli import build_parser, main

    root = Path(__file__).resolve().parents[1]
    args = build_parser().parse_args(["citer", "log", "--profile", "smoke", "--run-id", "abc"])
    assert (args.group, args.action, args.run_id) == ("citer", "log", "abc")
    monkeypatch.chdir(root)
    assert main(["citer", "train", "--profile", "gpu", "--root", str(bare_gpu_root)]) == 2
    assert "profile 'gpu' has no citer section" in capsys.readouterr().err
