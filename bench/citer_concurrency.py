"""CITER served concurrently: throughput and latency of one client at a time against 8 at once, same answers.

    python bench/citer_concurrency.py --questions 48 --clients 8 --repeats 3 --out bench/results/citer_concurrency.md

The pair has the tiny profile's shapes (SLM 64 wide, 2 layers; LLM 128 wide, 3 layers; a 400-token zoo
tokenizer) with random weights drawn large, so greedy choices are no near-ties; the router is random,
its τ set so the LLM writes about `--llm-share` of the tokens (the trained tiny champion: 4%). Random
models seldom write eos, so eos's embedding is made 1.05× that of a token the SLM writes about once in
40: a sequence ends where it would write that token, and answers vary in length as real ones do (rows
then leave and join the batch at any step). Answers run to eos or the profile's max_new_tokens (96).

- sequential: one client asks one question after another, each decoded alone (`cascade.answer`, what the
  in-process engine did before it batched);
- concurrent: `--clients` threads share the questions and ask through a DecodeBatcher, as the gateway's
  worker threads do through InProcessEngine.answer.

Every concurrent answer must equal its sequential one (text, sources, costs, tokens; the router's
score to float tolerance), else the script exits 1. Torch's threads and the machine's load are
written beside the figures, since both set them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from escalate.cascade import RESULT_FIELDS
from escalate.citer.cascade import TokenLevelCascade
from escalate.citer.router import TokenRouter
from escalate.config import ModelConfig, SamplingConfig, load_profile
from escalate.data import arith
from escalate.evaluation.cost import TokenPriceCost
from escalate.models import zoo
from escalate.prompts import format_prompt
from escalate.serving.batcher import DecodeBatcher

TIMING = {k for k in RESULT_FIELDS if k.startswith("latency")}


def tiny_pair(path: Path) -> dict[str, Path]:
    """Random checkpoints of the tiny profile's SLM and LLM shapes, sharing one zoo tokenizer."""
    profile = load_profile("tiny", Path(__file__).resolve().parents[1])
    pairs = zoo.corpus(profile.data.arith, 400, seed=1, exclude=set())
    tokenizer = zoo.train_tokenizer((p + c for p, c in pairs), vocab_size=profile.zoo.vocab_size)
    models = {}
    for seed, role in enumerate(("slm", "llm")):
        arch = getattr(profile.zoo, role).arch
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
                             num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, head_dim=arch.head_dim,
                             num_key_value_heads=arch.num_heads, max_position_embeddings=arch.max_position_embeddings,
                             initializer_range=0.3, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        models[role] = LlamaForCausalLM(config).eval()
    prompts = [tokenizer(p, return_tensors="pt").input_ids for p, _ in pairs[:8]]
    with torch.inference_mode():
        written = torch.cat([models["slm"].generate(x, max_new_tokens=96, do_sample=False)[0, x.shape[1]:]
                             for x in prompts])
    ids, counts = written.unique(return_counts=True)
    ender = int(ids[(counts.float() / len(written) - 1 / 40).abs().argmin()])
    dirs = {}
    for role, model in models.items():
        with torch.no_grad():
            embedding = model.get_input_embeddings().weight  # tied: also the output layer
            embedding[tokenizer.eos_token_id] = 1.05 * embedding[ender]
        model.save_pretrained(path / role)
        tokenizer.save_pretrained(path / role)
        dirs[role] = path / role
    return dirs


def questions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [arith.make_problem(rng, rng.randint(1, 4), 9).question() for _ in range(n)]


def build(dirs: dict[str, Path], llm_share: float, asked: list[str]) -> TokenLevelCascade:
    """The cascade with a random router whose τ gives the LLM about `llm_share` of the SLM-only decode's positions."""
    profile = load_profile("tiny", Path(__file__).resolve().parents[1])
    torch.manual_seed(0)
    router = TokenRouter(profile.zoo.slm.arch.hidden_size, profile.citer.router.hidden_sizes).eval()
    cost = TokenPriceCost({r: tuple(p) for r, p in profile.cost.prices.items()})
    sampling = SamplingConfig(k=1, max_new_tokens=profile.sampling.max_new_tokens, batch_size=16)

    def make(tau: float) -> TokenLevelCascade:
        return TokenLevelCascade.from_checkpoints(ModelConfig(name="slm"), ModelConfig(name="llm"), dirs, router, tau,
                                                  cost, sampling)

    scores = make(1.0).decoder.generate([format_prompt(q) for q in asked[:8]], sampling.max_new_tokens)
    return make(float(np.quantile([s for g in scores for s in g.llm_scores], 1 - llm_share)))


def sequential(cascade: TokenLevelCascade, asked: list[str]) -> tuple[list[dict], list[float], float]:
    out, waits = [], []
    start = time.perf_counter()
    for q in asked:
        t0 = time.perf_counter()
        out.append(cascade.answer([q])[0])
        waits.append(time.perf_counter() - t0)
    return out, waits, time.perf_counter() - start


def concurrent(cascade: TokenLevelCascade, asked: list[str], clients: int) -> tuple[list[dict], list[float], float]:
    """`clients` threads take the next question as each finishes its last (a closed loop, as users waiting)."""
    batcher = DecodeBatcher(cascade.decoder, cascade.max_new_tokens, cascade.decoder.batch_size)
    out: list[dict | None] = [None] * len(asked)
    waits: list[float] = [0.0] * len(asked)
    following = iter(range(len(asked)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(following, None)
            if i is None:
                return
            t0 = time.perf_counter()
            out[i] = cascade.answer([asked[i]], decode=batcher.generate)[0]
            waits[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    batcher.close()
    return out, waits, wall


def differences(alone: list[dict], together: list[dict]) -> list[str]:
    bad = []
    for i, (a, b) in enumerate(zip(alone, together)):
        keys = [k for k in a if k not in TIMING and k not in ("confidence", "score") and a[k] != b[k]]
        if keys or not np.isclose(a["score"], b["score"], rtol=1e-4, atol=1e-6):
            bad.append(f"question {i}: {keys or ['score']}")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--llm-share", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/citer_concurrency.md"))
    args = parser.parse_args()
    asked = questions(args.questions, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        cascade = build(tiny_pair(Path(tmp)), args.llm_share, asked)
    cascade.answer(asked[:2])  # warm-up: first-call allocations stay out of both timings
    load_before = os.getloadavg()
    runs: dict[str, list] = {"alone": [], "together": []}
    for _ in range(args.repeats):  # interleaved, so both see the machine's other load alike; the median run is shown
        runs["alone"].append(sequential(cascade, asked))
        runs["together"].append(concurrent(cascade, asked, args.clients))
    load_after = os.getloadavg()
    (alone, alone_waits, alone_wall), (together, together_waits, together_wall) = (
        sorted(r, key=lambda run: run[2])[len(r) // 2] for r in runs.values())
    bad = [d for run in runs["together"] for d in differences(alone, run[0])]
    tokens = sum(r["slm_output_tokens"] for r in alone)
    llm_tokens = sum(r["llm_output_tokens"] for r in alone)
    rows = [("1 client, sequential", alone_wall, alone_waits), (f"{args.clients} clients, concurrent", together_wall,
                                                                 together_waits)]
    speedup = alone_wall / together_wall
    lines = [
        "# CITER served concurrently: 1 client vs 8 (bench/citer_concurrency.py)", "",
        f"`python bench/citer_concurrency.py --questions {args.questions} --clients {args.clients} "
        f"--llm-share {args.llm_share} --repeats {args.repeats}`: tiny-profile shapes, random weights and router, "
        f"τ = {cascade.tau:.4f}; "
        f"{len(asked)} questions, {tokens} answer tokens, {llm_tokens} of them by the LLM "
        f"({llm_tokens / tokens:.1%}); max_new_tokens {cascade.max_new_tokens}, max batch {cascade.decoder.batch_size}.",
        f"CPU, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min).", "",
        "| clients | wall s | requests/s | tokens/s | p50 latency s | p90 latency s |", "|---|---|---|---|---|---|",
        *(f"| {name} | {wall:.2f} | {len(asked) / wall:.2f} | {tokens / wall:.0f} | {statistics.median(waits):.3f} | "
          f"{np.quantile(waits, 0.9):.3f} |" for name, wall, waits in rows), "",
        f"**Throughput speedup: {speedup:.2f}×** (target ≥ 4×: {'met' if speedup >= 4 else 'missed'}), from the "
        f"median of {args.repeats} interleaved runs each; every run's walls (s): sequential "
        f"{', '.join(f'{r[2]:.2f}' for r in runs['alone'])}; concurrent "
        f"{', '.join(f'{r[2]:.2f}' for r in runs['together'])}.",
        "Answers identical to the sequential ones: "
        + (f"yes, all {len(asked)} in every run." if not bad else f"NO: {'; '.join(bad)}."),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
