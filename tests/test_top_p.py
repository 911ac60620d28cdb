"""Top-p by partial selection (lmlab.infer.engine.top_p_filter) keeps exactly the tokens the full sort keeps."""
import math

import pytest
import torch

import lmlab.infer.engine as E
from lmlab.backend import GenerationConfig


def naive_process_logits(logits, gen, seen):
    """process_logits as it was before partial selection: the whole vocabulary sorted for top-p."""
    if gen.repetition_penalty != 1.0 and seen is not None:
        pen = torch.where(logits > 0, logits / gen.repetition_penalty, logits * gen.repetition_penalty)
        logits = torch.where(seen, pen, logits)
    if gen.temperature <= 0:
        return logits
    logits = logits / gen.temperature
    if gen.top_k and gen.top_k < logits.shape[-1]:
        kth = torch.topk(logits, gen.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if gen.top_p < 1.0:
        srt, idx = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(srt, dim=-1)
        drop = probs.cumsum(-1) - probs > gen.top_p
        srt = srt.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, idx, srt)
    return logits


def _logits(kind: str, n: int, v: int, g: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(n, v, generator=g) * 3
    if kind == "zipf":       # LM-like: logit = -1.1 log(rank), ranks shuffled per row
        base = -1.1 * torch.log(torch.arange(1, v + 1, dtype=torch.float32))
        return torch.stack([base[torch.randperm(v, generator=g)] for _ in range(n)]) + torch.randn(n, 1, generator=g)
    if kind == "peaked":
        x = torch.randn(n, v, generator=g)
        x[torch.arange(n), torch.randint(0, v, (n,), generator=g)] += 15.0
        return x
    if kind == "flat":       # every token tied
        return torch.zeros(n, v)
    if kind == "ties":       # few distinct values: ties straddle the boundary
        return torch.randint(0, 4, (n, v), generator=g).float()
    if kind == "peaked_ties":
        x = torch.randint(0, 3, (n, v), generator=g).float()
        x[:, :5] = 9.0
        return x
    raise ValueError(kind)


KINDS = ["normal", "zipf", "peaked", "flat", "ties", "peaked_ties"]


@pytest.mark.parametrize("kind", KINDS)
def test_same_kept_set_and_probabilities_as_the_sort(kind):
    g = torch.Generator().manual_seed(KINDS.index(kind))
    cases = 0
    for n, v in [(2, 12000), (4, 3000), (3, 1000), (5, 64), (2, 65), (4, 7), (1, 1)]:
        logits = _logits(kind, n, v, g)
        for temperature in (0.5, 1.3):
            for top_p in (0.01, 0.5, 0.9, 0.999, 1 - 1e-7):
                for top_k in (0, 50):
                    gen = GenerationConfig(temperature=temperature, top_p=top_p, top_k=top_k)
                    ref = naive_process_logits(logits, gen, None)
                    new = E.process_logits(logits, gen, None)
                    assert torch.equal(torch.isfinite(new), torch.isfinite(ref)), (n, v, temperature, top_p, top_k)
                    assert torch.equal(new, ref)
                    assert torch.equal(torch.softmax(new, -1), torch.softmax(ref, -1))
                    cases += 1
    assert cases == 7 * 2 * 5 * 2


def test_repetition_penalty_then_top_p():
    g = torch.Generator().manual_seed(7)
    logits = _logits("zipf", 8, 5000, g)
    seen = torch.rand(8, 5000, generator=g) < 0.01
    gen = GenerationConfig(temperature=0.7, top_p=0.9, repetition_penalty=1.3)
    assert torch.equal(E.process_logits(logits, gen, seen), naive_process_logits(logits, gen, seen))


def test_top_p_one_is_untouched():
    """top_p = 1: no selection runs at all, the result is the old function's bit for bit."""
    g = torch.Generator().manual_seed(3)
    logits = _logits("normal", 4, 3000, g)
    for gen in (GenerationConfig(temperature=0.8), GenerationConfig(temperature=1.3, top_k=40),
                GenerationConfig(temperature=0.0)):
        assert torch.equal(E.process_logits(logits, gen, None), naive_process_logits(logits, gen, None))


def test_hand_values():
    """Probabilities 0.5, 0.3, 0.2: a token is dropped once the mass before it exceeds top_p."""
    logits = torch.tensor([[math.log(0.2), math.log(0.5), math.log(0.3)]])
    kept = {0.45: [False, True, False], 0.6: [False, True, True], 0.85: [True, True, True]}
    for top_p, want in kept.items():
        assert torch.isfinite(E.top_p_filter(logits, top_p))[0].tolist() == want


def test_partial_selection_decides_without_the_sort(monkeypatch):
    """On LM-like rows the candidates decide (the sort is not called); split ties at the boundary and the
    whole-vocabulary case go to the sort, and still agree."""
    calls = []
    real = E.top_p_sorted
    monkeypatch.setattr(E, "top_p_sorted", lambda x, p: (calls.append(x.shape[0]), real(x, p))[1])
    g = torch.Generator().manual_seed(11)
    peaked = _logits("peaked", 4, 49152, g)
    out = E.top_p_filter(peaked, 0.9)
    assert calls == [] and torch.equal(out, real(peaked, 0.9))
    assert int(torch.isfinite(out).sum(-1).max()) < E.TOP_P_FIRST_K
    ties = torch.zeros(2, 100)
    ties[:, :10] = 5.0                                  # ten tied favourites; top_p keeps only some of them
    assert torch.equal(E.top_p_filter(ties, 0.5), real(ties, 0.5)) and calls == [2]
    flat = torch.zeros(1, 300)                           # needs the whole vocabulary: one full sort
    assert torch.equal(E.top_p_filter(flat, 0.999), real(flat, 0.999)) and calls == [2, 1]
