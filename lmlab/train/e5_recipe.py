"""The E5 two-stage recipe (Wang et al., 2022, arXiv:2212.03533; multilingual: Wang et al., 2024,
arXiv:2402.05672) for lmlab's `Embedder`.

1. Weakly supervised contrastive pre-training: InfoNCE over in-batch negatives on many weak (query, passage)
   pairs — `lmlab.models.embedder.train_contrastive` (τ = 0.01, "query: "/"passage: " prefixes).
2. Fine-tuning with hard negatives: each query comes with its positive passage and one hard negative mined
   by the stage-1 model (a highly ranked wrong passage); the loss is InfoNCE over the batch's positives *and*
   its hard negatives:

       s_ij = cos(q_i, c_j) / τ,  c = [p_1..p_b, n_1..n_b]  (2b candidates)
       L = −(1/b) Σ_i log softmax_j(s_ij)[j = i]

τ = 0.01 as in E5: the paper's §4.1 and the authors' README (microsoft/unilm, e5/README.md, FAQ "we use a
low temperature 0.01 for InfoNCE contrastive loss"). Not reproduced here: E5's fine-tuning also distils a
cross-encoder re-ranker's scores (KL term); we have no cross-encoder, so stage 2 is the contrastive term only.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from lmlab.models.embedder import PASSAGE_PREFIX, QUERY_PREFIX, Embedder, batch_ids, embed_texts, fit_batches

TAU = 0.01


def info_nce_hard(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """q, p, n (b, d) unit vectors: query i's positive is p_i; every p_j (j ≠ i) and every n_j are negatives."""
    logits = q @ torch.cat([p, n]).T / tau                           # (b, 2b)
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def naive_info_nce_hard(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """The same loss with explicit loops over queries and candidates."""
    b = q.shape[0]
    cands = [p[j] for j in range(b)] + [n[j] for j in range(b)]
    total = q.new_zeros(())
    for i in range(b):
        s = torch.stack([torch.dot(q[i], c) / tau for c in cands])
        total = total - (s[i] - torch.logsumexp(s, 0))
    return total / b


@torch.no_grad()
def mine_hard_negatives(model: Embedder, tokenizer, queries: Sequence[str], passages: Sequence[str], *,
                        top_k: int = 10, max_len: int = 64, seed: int = 0) -> list[int]:
    """For each query i (positive: passages[i]) the index of one wrong passage drawn uniformly from the
    model's top_k wrong passages; passages whose text equals the positive's are never chosen."""
    qe = embed_texts(model, tokenizer, queries, QUERY_PREFIX, max_len)
    pe = embed_texts(model, tokenizer, passages, PASSAGE_PREFIX, max_len)
    sim = qe @ pe.T                                                    # (n, n)
    by_text: dict[str, list[int]] = {}
    for i, t in enumerate(passages):
        by_text.setdefault(t, []).append(i)
    for group in by_text.values():                                     # the positive and its duplicates
        g = torch.tensor(group)
        sim[g[:, None], g[None, :]] = -float("inf")
    k = min(top_k, len(passages) - 1)
    top = sim.topk(k, dim=1).indices                                   # (n, k)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, k, (len(queries),), generator=g)
    return top[torch.arange(len(queries)), pick].tolist()


def finetune_hard_negatives(model: Embedder, tokenizer, queries: Sequence[str], passages: Sequence[str],
                            negatives: Sequence[str], *, steps: int, batch_size: int = 64, lr: float = 1e-3,
                            tau: float = TAU, max_len: int = 64, warmup: int = 10, seed: int = 0,
                            weight_decay: float = 0.01, log_every: int = 0) -> list[tuple[int, float]]:
    """AdamW on `info_nce_hard` over random batches of (query, positive, hard negative); returns [(step, loss)]."""
    if not (len(queries) == len(passages) == len(negatives)):
        raise ValueError(f"queries ({len(queries)}), passages ({len(passages)}) and negatives "
                         f"({len(negatives)}) must be aligned")
    if len(queries) < 2:
        raise ValueError("need at least 2 triples")

    def batch_loss(pick: list[int]) -> torch.Tensor:
        qi, qm = batch_ids(tokenizer, [queries[i] for i in pick], QUERY_PREFIX, max_len)
        ci, cm = batch_ids(tokenizer, [passages[i] for i in pick] + [negatives[i] for i in pick], PASSAGE_PREFIX,
                           max_len)
        c = model(ci, cm)                                  # positives, then their hard negatives
        return info_nce_hard(model(qi, qm), c[:len(pick)], c[len(pick):], tau)

    return fit_batches(model, batch_loss, len(queries), steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                       seed=seed, weight_decay=weight_decay, log_every=log_every)


__all__ = ["TAU", "info_nce_hard", "naive_info_nce_hard", "mine_hard_negatives", "finetune_hard_negatives"]
