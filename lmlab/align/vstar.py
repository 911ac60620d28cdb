"""V-STaR (Hosseini et al. 2024): a self-improving generator plus a DPO-trained verifier for best-of-k.

Notation: x = problem, y = sampled solution, k = samples per problem, c(x, y) ∈ {0, 1} = exact checker,
G = generator, V = verifier, π_ref = the SFT model both start from, β = DPO temperature.

Loop (paper Alg. 1, small):
    G_0 = SFT(base, D_SFT)
    for t = 1..T:   sample k solutions per training problem from G_{t-1}; label with c
                    D_GEN ∪= {correct (x, y)}               (STaR / rejection-sampling fine-tune data)
                    D_VER ∪= {(x, y⁺, y⁻) : c(x,y⁺)=1, c(x,y⁻)=0}   (ALL iterations' pairs are kept)
                    G_t = SFT(G_{t-1}, D_SFT ∪ D_GEN)
    V = DPO(π_ref = G_0, D_VER)
Verifier score (paper §3): s(x, y) = β·(log π_V(y|x) − log π_ref(y|x)).
Test: k samples from G_T per problem; answer = argmax_y s(x, y) (best-of-k), against majority vote over the
k final answers and the first sample (pass@1).
Tokens: one token per character of the task text; 0 = BOS, 1 = EOS (also padding).
"""
from __future__ import annotations

import copy
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from lmlab.align.dpo import completion_logps, train_dpo
from lmlab.align.envs import Problem
from lmlab.align.rollout import sample
from lmlab.align.sft import IGNORE, pad_examples, train_sft
from lmlab.registry import ALIGN_ALGOS

BOS, EOS = 0, 1


# ------------------------------------------------------------------------------------------- tokens
@dataclass
class CharCodec:
    alphabet: str = "CSomputer0123456789+-*=: \n"

    @property
    def vocab_size(self) -> int:
        return 2 + len(self.alphabet)

    def encode(self, s: str) -> list[int]:
        try:
            return [2 + self.alphabet.index(ch) for ch in s]
        except ValueError:
            bad = next(ch for ch in s if ch not in self.alphabet)
            raise ValueError(f"CharCodec: character {bad!r} is not in the alphabet") from None

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            if i == EOS:
                break
            if i >= 2:
                out.append(self.alphabet[i - 2])
        return "".join(out)

    def prompt(self, p: Problem) -> list[int]:
        return [BOS] + self.encode(p.prompt)


def cut_eos(ids: Sequence[int]) -> list[int]:
    """Response token ids up to and including the first EOS (the scored completion)."""
    ids = list(ids)
    return ids[:ids.index(EOS) + 1] if EOS in ids else ids


# ------------------------------------------------------------------------------ pairs and selection
def build_pairs(labels: Sequence[Sequence[float]], max_per_prompt: Optional[int] = None,
                rng: Optional[random.Random] = None) -> list[tuple[int, int, int]]:
    """Per prompt i, every (correct j ≻ incorrect l) sample pair -> (i, j, l), in row-major order.
    With max_per_prompt, a seeded random subset of that size (paper: pairs are subsampled per problem)."""
    out = []
    for i, lab in enumerate(labels):
        pos = [j for j, c in enumerate(lab) if c > 0]
        neg = [j for j, c in enumerate(lab) if c <= 0]
        pairs = [(i, j, l) for j in pos for l in neg]
        if max_per_prompt is not None and len(pairs) > max_per_prompt:
            pairs = sorted((rng or random.Random(0)).sample(pairs, max_per_prompt))
        out += pairs
    return out


def best_of_k(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the earliest sample."""
    best = 0
    for j, s in enumerate(scores):
        if s > scores[best]:
            best = j
    return best


def majority_vote(answers: Sequence[str]) -> str:
    """Most frequent answer; ties go to the answer that appears first."""
    counts = Counter(answers)
    top = max(counts.values())
    return next(a for a in answers if counts[a] == top)


# ---------------------------------------------------------------------------------- verifier score
def _collate(prompts: Sequence[list[int]], responses: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), EOS, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, :len(p) + len(r)] = torch.tensor(list(p) + list(r))
        mask[i, len(p):len(p) + len(r)] = 1
    return ids, mask


@torch.no_grad()
def verifier_scores(verifier, ref, prompts: Sequence[list[int]], responses: Sequence[list[int]],
                    beta: float = 0.1, batch_size: int = 256) -> torch.Tensor:
    """s(x, y) = β·(log π_V(y|x) − log π_ref(y|x)) for each row; (n,)."""
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, mask = _collate(prompts[s:s + batch_size], responses[s:s + batch_size])
        out.append(beta * (completion_logps(verifier, ids, mask) - completion_logps(ref, ids, mask)))
    return torch.cat(out)


@torch.no_grad()
def naive_verifier_score(verifier, ref, prompt: list[int], response: list[int], beta: float) -> float:
    """One row, token by token in float64: β·Σ_t [log π_V(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)]."""
    total = 0.0
    for t in range(len(response)):
        ctx = torch.tensor([list(prompt) + list(response[:t])])
        for m, sign in ((verifier, 1.0), (ref, -1.0)):
            logits = m(ctx).logits[0, -1].double()
            total += sign * torch.log_softmax(logits, -1)[response[t]].item()
    return beta * total


# ------------------------------------------------------------------------------------ the loop
@dataclass
class VStarConfig:
    iterations: int = 2
    k: int = 8                   # samples per problem (training and test)
    max_new_tokens: int = 6
    temperature: float = 1.0
    sft_steps: int = 300         # G_0
    star_steps: int = 150        # per iteration
    batch_size: int = 32
    lr: float = 3e-3
    beta: float = 0.1
    dpo_lr: float = 1e-3
    dpo_epochs: int = 6
    max_pairs_per_prompt: int = 1
    seed: int = 0


@dataclass
class VStarResult:
    generator: torch.nn.Module
    verifier: torch.nn.Module
    ref: torch.nn.Module
    pairs: list                                   # (prompt_ids, chosen_ids, rejected_ids)
    history: list = field(default_factory=list)   # one dict per iteration


def sft_examples(codec: CharCodec, items: Sequence[tuple[Problem, str]]) -> list[tuple[list[int], list[int]]]:
    """(problem, response text) -> (ids, labels) with the loss on the response and its EOS only."""
    out = []
    for p, y in items:
        x, r = codec.prompt(p), codec.encode(y) + [EOS]
        out.append((x + r, [IGNORE] * len(x) + r))
    return out


def finetune(model, codec: CharCodec, items: Sequence[tuple[Problem, str]], steps: int, cfg: VStarConfig,
             seed: int) -> list[float]:
    x, y = pad_examples(sft_examples(codec, items), pad_id=EOS)
    return train_sft(model, x, y, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)


def sample_solutions(gen, codec: CharCodec, problems: Sequence[Problem], k: int, cfg: VStarConfig,
                     seed: int, chunk: int = 64) -> list[list[list[int]]]:
    """k response token lists (cut after EOS) per problem. Problems in one call need equal prompt lengths."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, len(problems), chunk):
        prompts = torch.tensor([codec.prompt(p) for p in problems[s:s + chunk]])
        ro = sample(gen, prompts, cfg.max_new_tokens, n=k, temperature=cfg.temperature, eos_id=EOS, generator=g)
        resp = [cut_eos(r) for r in ro.responses.tolist()]
        out += [resp[i * k:(i + 1) * k] for i in range(len(prompts))]
    return out


def label(task, codec: CharCodec, problems: Sequence[Problem], samples) -> list[list[float]]:
    return [[task.check(p, codec.decode(y)) for y in ys] for p, ys in zip(problems, samples)]


@ALIGN_ALGOS.register("vstar")
def run_vstar(task, gen, codec: CharCodec, train_problems: Sequence[Problem], sft_items, cfg: VStarConfig,
              log=None) -> VStarResult:
    """V-STaR (Hosseini et al. 2024): STaR generator iterations, then a DPO verifier for best-of-k.

    gen: an untrained (or pretrained) Decoder over codec's vocab; sft_items: (problem, gold text) pairs."""
    rng = random.Random(cfg.seed)
    finetune(gen, codec, sft_items, cfg.sft_steps, cfg, cfg.seed)
    ref = copy.deepcopy(gen).eval()
    gen_data = list(sft_items)
    pairs, history = [], []
    for it in range(cfg.iterations):
        samples = sample_solutions(gen, codec, train_problems, cfg.k, cfg, cfg.seed * 1000 + it)
        labels = label(task, codec, train_problems, samples)
        new = build_pairs(labels, cfg.max_pairs_per_prompt, rng)
        pairs += [(codec.prompt(train_problems[i]), samples[i][j], samples[i][l]) for i, j, l in new]
        gen_data += [(p, codec.decode(y)) for p, ys, ls in zip(train_problems, samples, labels)
                     for y, c in zip(ys, ls) if c > 0]
        finetune(gen, codec, gen_data, cfg.star_steps, cfg, cfg.seed * 1000 + it + 1)
        h = {"iteration": it, "train_sample_acc": sum(map(sum, labels)) / (len(labels) * cfg.k),
             "pairs": len(pairs), "gen_data": len(gen_data)}
        history.append(h)
        if log:
            log(h)
    verifier = copy.deepcopy(ref).train()
    dpo_hist = train_dpo(verifier, ref, pairs, beta=cfg.beta, lr=cfg.dpo_lr, epochs=cfg.dpo_epochs,
                         batch_size=cfg.batch_size, pad_id=EOS, seed=cfg.seed) if pairs else []
    verifier.eval()
    return VStarResult(gen, verifier, ref, pairs, history + [{"dpo": dpo_hist}])


def ranking_accuracy(verifier, ref, pairs, beta: float = 0.1) -> float:
    """Fraction of (x, y⁺, y⁻) with s(x, y⁺) > s(x, y⁻) (ties count ½)."""
    if not pairs:
        return float("nan")
    sc = verifier_scores(verifier, ref, [p for p, _, _ in pairs] * 2,
                         [c for _, c, _ in pairs] + [r for _, _, r in pairs], beta)
    a, b = sc[:len(pairs)], sc[len(pairs):]
    return ((a > b).float() + 0.5 * (a == b).float()).mean().item()


def evaluate_selection(task, result: VStarResult, codec: CharCodec, problems: Sequence[Problem],
                       cfg: VStarConfig, seed: int) -> dict:
    """Held-out accuracy of first sample, majority vote and verifier best-of-k (plus pass@k, the oracle),
    and the verifier's ranking accuracy on the held-out (correct, incorrect) pairs."""
    samples = sample_solutions(result.generator, codec, problems, cfg.k, cfg, seed)
    labels = label(task, codec, problems, samples)
    flat_p = [codec.prompt(p) for p, ys in zip(problems, samples) for _ in ys]
    flat_y = [y for ys in samples for y in ys]
    scores = verifier_scores(result.verifier, result.ref, flat_p, flat_y, cfg.beta).view(len(problems), cfg.k)
    first = majority = verifier = oracle = 0.0
    for p, ys, ls, sc in zip(problems, samples, labels, scores.tolist()):
        answers = [codec.decode(y).strip() for y in ys]
        first += ls[0]
        majority += task.check(p, majority_vote(answers))
        verifier += ls[best_of_k(sc)]
        oracle += float(max(ls) > 0)
    n = len(problems)
    held_pairs = [(codec.prompt(problems[i]), samples[i][j], samples[i][l]) for i, j, l in build_pairs(labels)]
    return {"first": first / n, "majority": majority / n, "verifier": verifier / n, "pass_at_k": oracle / n,
            "sample_acc": sum(map(sum, labels)) / (n * cfg.k),
            "verifier_rank_acc": ranking_accuracy(result.verifier, result.ref, held_pairs, cfg.beta)}
