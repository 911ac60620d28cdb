"""Streaming tokenization, packing into fixed windows, deterministic shuffling, splits and token accounting.

A domain's documents become one token stream `doc_0 EOS doc_1 EOS ...` (EOS after every document), cut
into non-overlapping windows of `seq_len + 1` tokens (inputs = w[:-1], targets = w[1:]). The tail that
does not fill a window is dropped and counted; only a stream shorter than one window is padded (with
EOS, counted as `padding`). Accounting identity, per stream:

    doc_tokens + eos_tokens == windows * (seq_len + 1) + tail_dropped - padding
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from lmlab.config import ConfigError
from lmlab.data.sources import hash_unit


@dataclass
class TokenizedDocs:
    """Documents as one flat id array plus per-document lengths (doc i = ids[offsets[i]:offsets[i+1]]).

    `chars` (characters per document) and `ranks` (a hash in [0, 1) per document, used to pick a
    validation document deterministically when none hashed to val) travel along for accounting.
    """

    ids: np.ndarray                      # (total,) uint32
    lengths: np.ndarray                  # (n_docs,) int64
    chars: Optional[np.ndarray] = None   # (n_docs,) int64
    ranks: Optional[np.ndarray] = None   # (n_docs,) float64

    def __post_init__(self) -> None:
        n = len(self.lengths)
        self.chars = np.zeros(n, np.int64) if self.chars is None else np.asarray(self.chars, np.int64)
        self.ranks = np.zeros(n, np.float64) if self.ranks is None else np.asarray(self.ranks, np.float64)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, idx: Sequence[int]) -> "TokenizedDocs":
        idx = np.asarray(idx, dtype=np.int64)
        offs = self.offsets
        parts = [self.ids[offs[i]:offs[i + 1]] for i in idx]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
        return TokenizedDocs(ids, self.lengths[idx], self.chars[idx], self.ranks[idx])

    def save(self, path) -> None:
        np.savez(path, ids=self.ids, lengths=self.lengths, chars=self.chars, ranks=self.ranks)

    @classmethod
    def load(cls, path) -> "TokenizedDocs":
        with np.load(path) as z:
            return cls(z["ids"], z["lengths"], z["chars"], z["ranks"])


class TokenStream:
    """Accumulates encoded documents one at a time (streaming tokenization) into a `TokenizedDocs`."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._lengths: list[int] = []
        self._chars: list[int] = []
        self._ranks: list[float] = []

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, ids: Sequence[int], n_chars: int = 0, rank: float = 0.0) -> None:
        self._chunks.append(np.asarray(ids, dtype=np.uint32))
        self._lengths.append(len(ids))
        self._chars.append(n_chars)
        self._ranks.append(rank)

    def docs(self) -> TokenizedDocs:
        ids = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.uint32)
        return TokenizedDocs(ids, np.asarray(self._lengths, np.int64), np.asarray(self._chars, np.int64),
                             np.asarray(self._ranks, np.float64))


def ensure_val(train: TokenizedDocs, val: TokenizedDocs) -> tuple[TokenizedDocs, TokenizedDocs, bool]:
    """If no document hashed to val and train has >= 2, move the lowest-ranked train document to val."""
    if len(val) or len(train) < 2:
        return train, val, False
    i = int(np.argmin(train.ranks))
    rest = [j for j in range(len(train)) if j != i]
    return train.take(rest), train.take([i]), True


@dataclass
class PackStats:
    documents: int = 0
    doc_tokens: int = 0
    eos_tokens: int = 0
    windows: int = 0
    tail_dropped: int = 0
    padding: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def split_of(key: str, val_fraction: float) -> str:
    """Train/val assignment by a deterministic hash of the document key (independent of any seed)."""
    return "val" if hash_unit(key) < val_fraction else "train"


def shuffled_order(n: int, seed: int, salt: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, salt]).permutation(n)


def pack(docs: TokenizedDocs, seq_len: int, eos_id: int, order: Optional[Sequence[int]] = None,
         pad_if_short: bool = True) -> tuple[np.ndarray, PackStats]:
    """Concatenate documents (in `order`) with EOS after each, cut into (N, seq_len+1) int64 windows."""
    w = seq_len + 1
    order = np.arange(len(docs)) if order is None else np.asarray(order)
    offs = docs.offsets
    eos = np.asarray([eos_id], dtype=np.int64)
    parts: list[np.ndarray] = []
    for i in order:
        parts.append(docs.ids[offs[i]:offs[i + 1]].astype(np.int64))
        parts.append(eos)
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    st = PackStats(documents=len(order), doc_tokens=int(docs.lengths[order].sum()) if len(order) else 0,
                   eos_tokens=len(order))
    n = len(stream) // w
    if n == 0 and len(stream) and pad_if_short:
        st.padding = w - len(stream)
        stream = np.concatenate([stream, np.full(st.padding, eos_id, np.int64)])
        n = 1
    st.windows = n
    st.tail_dropped = len(stream) - n * w
    return stream[: n * w].reshape(n, w).copy(), st


def mix_rows(avail: dict[str, int], mix: dict[str, float], total: Optional[int]) -> dict[str, int]:
    """Rows to take per domain.

    No `mix`: natural proportions (all windows when `total` is None). With `mix`: rows in proportion to the
    weights (unlisted domains get 0); without `total`, the largest count that repeats no domain.
    Rounding uses largest remainders so the counts sum exactly to the total.
    """
    names = list(avail)
    if mix:
        unknown = [k for k in mix if k not in avail]
        if unknown:
            raise ConfigError(f"data.mix: domain {unknown[0]!r} unknown (domains: {', '.join(names)})")
        weights = np.array([float(mix.get(d, 0.0)) for d in names])
        if (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError(f"data.mix={mix}: weights must be >= 0 with a positive sum")
    else:
        weights = np.array([float(avail[d]) for d in names])
        if total is None:
            return dict(avail)
    if weights.sum() <= 0:
        return {d: 0 for d in names}
    p = weights / weights.sum()
    if total is None:
        total = int(min(avail[d] / p[i] for i, d in enumerate(names) if p[i] > 0))
    raw = p * total
    rows = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - rows), kind="stable")[: total - int(rows.sum())]:
        rows[i] += 1
    return {d: int(rows[i]) for i, d in enumerate(names)}


def take_rows(windows: np.ndarray, n: int, seed: int, salt: int = 0, name: str = "?") -> tuple[np.ndarray, int]:
    """First n rows of the (already shuffled) windows; beyond what exists, repeat fresh permutations.
    Returns (rows, repeated_count)."""
    have = len(windows)
    if n <= have:
        return windows[:n], 0
    if have == 0:
        raise ConfigError(f"data.mix: domain {name!r} has no training window to draw {n} rows from")
    reps = [windows]
    k = 1
    while sum(len(r) for r in reps) < n:
        reps.append(windows[np.random.default_rng([seed, salt, k]).permutation(have)])
        k += 1
    return np.concatenate(reps)[:n], n - have
