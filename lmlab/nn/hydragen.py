"""Hydragen (Juravsky et al., 2024): exact attention for a batch whose sequences share prefixes.

Notation: n = sequences, g = groups sharing one prefix, m = max sequences per group, h = query heads,
k = key/value heads, r = h // k, t = query tokens per sequence, p = prefix length, s = suffix length,
d = head dim.

Attention over keys split into disjoint blocks decomposes exactly (paper eq. 2-4): for each block i
compute out_i = softmax(q K_iᵀ/√d) V_i and lse_i = log Σ_j exp(q·k_j/√d), then

    w_i = exp(lse_i − max_i lse_i),    out = Σ_i w_i · out_i / Σ_i w_i        (fp32)

Here the blocks are: one block per prefix level of a tree (level 0 shared by all sequences, level 1 by
the sequences of one prompt, …) and each sequence's own suffix. A prefix's KV is stored once per group;
its attention gathers the queries of every sequence of the group into one matmul
[g, m·r·t, d] @ [g, d, p] (inter-sequence batching), instead of n matmuls against n copies of the prefix,
turning memory-bound matrix-vector products into one matrix-matrix product. Keys of a prefix are visible to
every query (queries come after the prefix); suffix keys are masked causally and by each sequence's length.

`naive_hydragen_attention` is the reference: the prefix KV copied into every sequence, one masked softmax.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class PrefixLevel:
    """KV of g prefixes stored once: k/v (g, k, p, d); group (n,) long: the prefix each sequence reads;
    lengths (g,) valid keys per prefix (None = all p)."""

    k: torch.Tensor
    v: torch.Tensor
    group: torch.Tensor
    lengths: Optional[torch.Tensor] = None


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, k, M, d), k/v (B, k, S, d), mask broadcastable to (B, k, M, S), True = visible.
    Returns out (B, k, M, d) fp32 and lse (B, k, M) fp32; rows with no visible key get out 0, lse −inf."""
    if (mask is None and q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16)
            and not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)))):
        # PyTorch's fused CPU kernel returns the log-sum-exp too (blocked over keys, fp32 accumulation)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[:2]
        return out.float(), lse.float()
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 accumulation (fp64 stays fp64)
    scores = (q.to(acc) * (1.0 / math.sqrt(q.shape[-1]))) @ k.to(acc).transpose(-1, -2)  # (B, k, M, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    mx = scores.amax(dim=-1, keepdim=True)
    mx = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)                          # fully masked rows
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        e = torch.exp(scores - mx)
    else:
        e = scores.sub_(mx).exp_()                                                       # in place: (B, k, M, S)
    den = e.sum(dim=-1, keepdim=True)
    out = (e @ v.to(acc)) / den.clamp_min(torch.finfo(acc).tiny)
    return out, (mx + den.log()).squeeze(-1)


def merge_lse(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> torch.Tensor:
    """Exact combination of attention over disjoint key blocks. outs (…, d), lses (…) in fp32; the result
    is contiguous. Rows whose blocks are all empty (lse −inf everywhere) come out 0.

    Blocks are folded pairwise: with w = exp(lse_a) / (exp(lse_a) + exp(lse_b)) = sigmoid(lse_a − lse_b),
    out = out_b + w · (out_a − out_b) (one `lerp`) and lse = logaddexp(lse_a, lse_b)."""
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (*outs, *lses))
    out, lse = outs[0], lses[0]
    for i in range(1, len(outs)):
        w = torch.sigmoid(lse - lses[i]).nan_to_num(0.0)[..., None]   # nan: both blocks empty, out is 0
        if grad:
            out = torch.lerp(outs[i], out, w)
        else:  # straight into a contiguous buffer (the block outputs may be strided views)
            out = torch.lerp(outs[i], out, w, out=torch.empty(out.shape, dtype=out.dtype, device=out.device))
        if i + 1 < len(outs):
            lse = torch.logaddexp(lse, lses[i])
    return out.contiguous()


def _slots(group: torch.Tensor, g: int) -> tuple[torch.Tensor, int]:
    """Rank of each sequence inside its group (stable), and the largest group size."""
    n = group.shape[0]
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=g)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(group)
    slot[order] = torch.arange(n, device=group.device) - starts[group[order]]
    return slot, int(counts.max())


def prefix_attention(q: torch.Tensor, level: PrefixLevel) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every query to its group's prefix, one batched matmul per group.
    q (n, h, t, d) -> out (n, k, r, t, d) fp32 (a strided view where possible), lse (n, k, r, t)."""
    n, h, t, d = q.shape
    g, kv, p, _ = level.k.shape
    r = h // kv
    group = level.group
    if g == 1:  # the whole batch reads one prefix: [1, k, n·r·t, d] @ [1, k, d, p]
        qg = q.reshape(n, kv, r, t, d).transpose(0, 1).reshape(1, kv, n * r * t, d)
        mask = None if level.lengths is None else (torch.arange(p, device=q.device) < level.lengths[0])
        out, lse = attention_with_lse(qg, level.k, level.v, mask)
        return out.reshape(kv, n, r, t, d).transpose(0, 1), lse.reshape(kv, n, r, t).transpose(0, 1)
    slot, m = _slots(group, g)
    qg = q.new_zeros(g, m, kv, r, t, d)
    qg[group, slot] = q.view(n, kv, r, t, d)
    qg = qg.permute(0, 2, 1, 3, 4, 5).reshape(g, kv, m * r * t, d)                # (g, k, m·r·t, d)
    mask = None
    if level.lengths is not None:
        mask = (torch.arange(p, device=q.device)[None] < level.lengths[:, None])[:, None, None]  # (g,1,1,p)
    out, lse = attention_with_lse(qg, level.k, level.v, mask)
    out = out.reshape(g, kv, m, r, t, d).permute(0, 2, 1, 3, 4, 5)[group, slot]    # (n, k, r, t, d)
    lse = lse.reshape(g, kv, m, r, t).permute(0, 2, 1, 3, 4)[group, slot]
    return out, lse


def suffix_mask(s: int, t: int, lengths: Optional[torch.Tensor], q_pos: Optional[torch.Tensor],
                n: int, device) -> torch.Tensor:
    """(n, 1, t, s): key j visible to query i iff j < length and j <= q_pos[i]. q_pos (n, t) suffix
    coordinates; None = the queries are the last t valid positions (decode)."""
    lengths = torch.full((n,), s, device=device) if lengths is None else lengths
    if q_pos is None:
        q_pos = lengths[:, None] - t + torch.arange(t, device=device)[None]
    j = torch.arange(s, device=device)
    m = (j[None, None] < lengths[:, None, None]) & (j[None, None] <= q_pos[:, :, None])  # (n, t, s)
    return m[:, None]


def suffix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                     q_pos: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence attention over its own suffix. q (n, h, t, d), k/v (n, k, s, d) -> out (n, k, r, t, d)
    fp32, lse (n, k, r, t)."""
    n, h, t, d = q.shape
    kv, s = k.shape[1], k.shape[2]
    r = h // kv
    qg = q.reshape(n, kv, r * t, d)
    mask = None
    if lengths is not None or t > 1:
        mask = suffix_mask(s, t, lengths, q_pos, n, q.device)              # (n, 1, t, s)
        mask = mask[:, :, None].expand(n, 1, r, t, s).reshape(n, 1, r * t, s)
    out, lse = attention_with_lse(qg, k, v, mask)
    return out.reshape(n, kv, r, t, d), lse.reshape(n, kv, r, t)


def hydragen_attention(q: torch.Tensor, levels: list[PrefixLevel], k_suf: Optional[torch.Tensor] = None,
                       v_suf: Optional[torch.Tensor] = None, suf_lengths: Optional[torch.Tensor] = None,
                       suf_q_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q (n, h, t, d); prefix levels (outermost first); own suffix k/v (n, k, s, d). Returns (n, h, t, d)
    in q's dtype."""
    outs, lses = [], []
    for lv in levels:
        if lv.k.shape[2] == 0:
            continue
        o, l = prefix_attention(q, lv)
        outs.append(o)
        lses.append(l)
    if k_suf is not None and k_suf.shape[2] > 0:
        o, l = suffix_attention(q, k_suf, v_suf, suf_lengths, suf_q_pos)
        outs.append(o)
        lses.append(l)
    n, h, t, d = q.shape
    if not outs:
        return q.new_zeros(n, h, t, d)
    return merge_lse(outs, lses).view(n, h, t, d).to(q.dtype)


def naive_hydragen_attention(q: torch.Tensor, levels: list[PrefixLevel], k_suf: Optional[torch.Tensor] = None,
                             v_suf: Optional[torch.Tensor] = None, suf_lengths: Optional[torch.Tensor] = None,
                             suf_q_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Reference: every sequence gets its own copy of all its prefixes' KV, then one masked softmax."""
    n, h, t, d = q.shape
    ks, vs, masks = [], [], []
    for lv in levels:
        p = lv.k.shape[2]
        ks.append(lv.k[lv.group])                                    # (n, k, p, d): copied per sequence
        vs.append(lv.v[lv.group])
        valid = torch.ones(n, p, dtype=torch.bool, device=q.device) if lv.lengths is None else \
            torch.arange(p, device=q.device)[None] < lv.lengths[lv.group][:, None]
        masks.append(valid[:, None, None].expand(n, 1, t, p))
    if k_suf is not None:
        ks.append(k_suf)
        vs.append(v_suf)
        masks.append(suffix_mask(k_suf.shape[2], t, suf_lengths, suf_q_pos, n, q.device))
    k, v, mask = torch.cat(ks, 2), torch.cat(vs, 2), torch.cat(masks, 3)
    rep = h // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)                  # (n, h, t, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
