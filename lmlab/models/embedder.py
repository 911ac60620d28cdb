"""Multilingual E5 (Wang et al., 2024): a text embedder trained with InfoNCE over in-batch negatives.

Notation: b = batch (pairs), t = tokens, d = d_model.

- Trunk: an lmlab `Decoder` (embeddings -> blocks -> final norm); its LM head is unused. The shared
  `Attention` is causal, and we keep it so: the embedder is a *causal* trunk + mean pooling (as decoder-based
  embedders do). With right padding a real token never attends to a pad token, so pooled embeddings do not
  depend on how much padding a batch carries (tested).
- Pooling: mean over non-pad positions, then L2 normalisation: e = normalize(Σ_t m_t h_t / Σ_t m_t).
- Prefixes: E5 prepends "query: " to queries and "passage: " to passages, so one trunk embeds both sides.
- Loss: InfoNCE with in-batch negatives. With s_ij = cos(q_i, p_j) / τ,
      L = −(1/b) Σ_i log softmax_j(s_ij)[j=i]                      (query -> passage)
  and the symmetric variant averages it with the passage -> query term (columns). E5 uses τ = 0.01.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder

QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "


# ------------------------------------------------------------------------------------------------ pooling
def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h (b, t, d), mask (b, t) 1 = token, 0 = pad -> (b, d) mean over the tokens."""
    m = mask.to(h.dtype).unsqueeze(-1)                              # (b, t, 1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def naive_mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    rows = []
    for i in range(h.shape[0]):
        keep = [h[i, j] for j in range(h.shape[1]) if mask[i, j]]
        rows.append(torch.stack(keep).sum(0) / len(keep))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------------- loss
def info_nce(q: torch.Tensor, p: torch.Tensor, tau: float = 0.01, symmetric: bool = False) -> torch.Tensor:
    """q, p (b, d) L2-normalised; row i of p is the positive of row i of q, the other rows its negatives."""
    logits = q @ p.T / tau                                          # (b, b): s_ij
    labels = torch.arange(q.shape[0], device=q.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss


def naive_info_nce(q: torch.Tensor, p: torch.Tensor, tau: float = 0.01, symmetric: bool = False) -> torch.Tensor:
    """The same loss written as explicit loops over queries and candidates."""
    b = q.shape[0]

    def one_side(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(())
        for i in range(b):
            s = [torch.dot(a[i], c[j]) / tau for j in range(b)]
            total = total - (s[i] - torch.logsumexp(torch.stack(s), 0))
        return total / b

    loss = one_side(q, p)
    if symmetric:
        loss = 0.5 * (loss + one_side(p, q))
    return loss


# -------------------------------------------------------------------------------------------------- model
class Embedder(nn.Module):
    """Decoder trunk (causal) + mean pooling over non-pad tokens + L2 norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.trunk = Decoder(cfg)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """idx (b, t) right-padded token ids, mask (b, t) -> (b, d) unit vectors."""
        h = self.trunk(idx, return_hidden=True).hidden              # (b, t, d) after the final norm
        return F.normalize(mean_pool(h, mask), dim=-1)


def batch_ids(tokenizer, texts: Sequence[str], prefix: str, max_len: int,
              pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """prefix + text -> right-padded (b, t) ids and (b, t) mask, each text cut at max_len tokens."""
    seqs = [tokenizer.encode(prefix + t)[:max_len] or [pad_id] for t in texts]
    t = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return idx, mask


@torch.no_grad()
def embed_texts(model: Embedder, tokenizer, texts: Sequence[str], prefix: str, max_len: int = 64,
                batch_size: int = 128) -> torch.Tensor:
    """(n, d) unit embeddings of texts, in eval mode."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        idx, mask = batch_ids(tokenizer, texts[i:i + batch_size], prefix, max_len)
        out.append(model(idx, mask))
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, model.cfg.d_model)


def train_contrastive(model: Embedder, tokenizer, queries: Sequence[str], passages: Sequence[str], *,
                      steps: int, batch_size: int = 64, lr: float = 3e-3, tau: float = 0.01,
                      symmetric: bool = True, max_len: int = 64, warmup: int = 20, seed: int = 0,
                      weight_decay: float = 0.01, log_every: int = 0,
                      ) -> list[tuple[int, float]]:
    """AdamW on InfoNCE over random batches of aligned (query, passage) pairs; returns [(step, loss)]."""
    if len(queries) != len(passages):
        raise ValueError(f"queries ({len(queries)}) and passages ({len(passages)}) must be aligned")
    if len(queries) < 2:
        raise ValueError("need at least 2 pairs for in-batch negatives")

    def batch_loss(pick: list[int]) -> torch.Tensor:
        qi, qm = batch_ids(tokenizer, [queries[i] for i in pick], QUERY_PREFIX, max_len)
        pi, pm = batch_ids(tokenizer, [passages[i] for i in pick], PASSAGE_PREFIX, max_len)
        return info_nce(model(qi, qm), model(pi, pm), tau, symmetric)

    return fit_batches(model, batch_loss, len(queries), steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                       seed=seed, weight_decay=weight_decay, log_every=log_every)


def fit_batches(model: Embedder, batch_loss, n: int, *, steps: int, batch_size: int, lr: float, warmup: int,
                seed: int = 0, weight_decay: float = 0.01, log_every: int = 0) -> list[tuple[int, float]]:
    """The embedder's training loop: AdamW (betas 0.9/0.98, grad-norm clip 1.0, linear warm-up then linear decay
    to 10 %) over `steps` random batches of the `n` aligned examples; `batch_loss(indices)` gives a batch's loss.
    Returns [(step, loss)] every `log_every` steps and at the last."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(warmup, 1)) * max(0.1, 1 - s / max(steps, 1)))
    model.train()
    curve = []
    bs = min(batch_size, n)
    for step in range(steps):
        pick = torch.randperm(n, generator=g)[:bs].tolist()
        loss = batch_loss(pick)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            curve.append((step, loss.item()))
    return curve


def tiny_embedder_config(vocab_size: int, d_model: int = 96, n_layer: int = 2, n_head: int = 4,
                         max_seq_len: int = 96, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, n_head=n_head,
                       max_seq_len=max_seq_len, **kw)


__all__ = ["Embedder", "mean_pool", "naive_mean_pool", "info_nce", "naive_info_nce", "batch_ids", "embed_texts",
           "train_contrastive", "tiny_embedder_config", "QUERY_PREFIX", "PASSAGE_PREFIX"]
