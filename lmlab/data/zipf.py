"""Zipf data and tail-truncated synthetic generations (Dohmatob et al., 2024, "A Tale of Tails: Model
Collapse as a Change of Scaling Laws").

Notation: items i = 1..N (skills, facts, tokens) with Zipf law p_i ∝ i^(−β), β > 1. A generation-n model is
the empirical distribution of T0 samples drawn from generation n−1, with its tail cut by the sampler
(top-k: keep the k most frequent items; top-p: keep the smallest set of most frequent items holding mass
≥ p), renormalised. Generation 0 is the true law. Synthetic training data = samples of a generation-n model.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def zipf_probs(n: int, beta: float) -> np.ndarray:
    """(N,) p_i = i^(−β) / Σ_j j^(−β), i = 1..N (index 0 holds rank 1)."""
    if beta <= 0 or n < 1:
        raise ValueError(f"zipf needs n ≥ 1 and beta > 0, got n={n}, beta={beta}")
    w = np.arange(1, n + 1, dtype=np.float64) ** (-beta)
    return w / w.sum()


def sample(probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) item indices drawn i.i.d. from probs."""
    return rng.choice(len(probs), size=n, p=probs)


def truncate(probs: np.ndarray, top_k: Optional[int] = None, top_p: Optional[float] = None) -> np.ndarray:
    """Tail cut as a sampler does it: zero every item outside the top-k / top-p nucleus, renormalise.
    Ties are broken by index (lower index = higher rank), deterministically."""
    order = np.lexsort((np.arange(len(probs)), -probs))  # by prob desc, then index asc
    keep = np.zeros(len(probs), dtype=bool)
    if top_k is not None:
        keep[order[:top_k]] = True
    else:
        keep[order] = True
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        csum = np.cumsum(probs[order])
        n_keep = int(np.searchsorted(csum, top_p * csum[-1] - 1e-12) + 1)
        nucleus = np.zeros(len(probs), dtype=bool)
        nucleus[order[:n_keep]] = True
        keep &= nucleus
    keep &= probs > 0
    out = np.where(keep, probs, 0.0)
    return out / out.sum()


def next_generation(probs: np.ndarray, t0: int, rng: np.random.Generator, top_k: Optional[int] = None,
                    top_p: Optional[float] = None) -> np.ndarray:
    """Fit the empirical law of t0 samples of `probs`, then truncate its tail as the sampler would."""
    counts = np.bincount(sample(probs, t0, rng), minlength=len(probs)).astype(np.float64)
    return truncate(counts / counts.sum(), top_k, top_p)


def generation(probs: np.ndarray, k: int, t0: int, rng: np.random.Generator, top_k: Optional[int] = None,
               top_p: Optional[float] = None) -> np.ndarray:
    """The generation-k law (k = 0: `probs` itself)."""
    p = probs
    for _ in range(k):
        p = next_generation(p, t0, rng, top_k, top_p)
    return p


def mixed(clean: np.ndarray, synthetic: np.ndarray, clean_frac: float) -> np.ndarray:
    """Training law when a fraction clean_frac of the samples is clean and the rest synthetic."""
    return clean_frac * clean + (1 - clean_frac) * synthetic


def tail_mass(probs: np.ndarray, k: int) -> float:
    """Σ_{i>k} p_i: the mass a top-k truncation of the *true* law removes (the theory's error floor)."""
    return float(np.sort(probs)[::-1][k:].sum())
