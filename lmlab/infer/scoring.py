"""Batched log-likelihood scoring: lm-evaluation-harness's `loglikelihood` requests (context, continuation)
-> (sum log p(continuation | context), is_greedy), with shared contexts computed once.

    from lmlab.infer.scoring import score_loglikelihood
    score_loglikelihood(model, [(ctx_ids, cont_ids), ...])      # -> [(logp, is_greedy), ...]

Notation: G = distinct contexts in a batch, R = longest context remainder, N = continuations of a batch,
T = longest continuation − 1, L0 = level-0 prefix.

How the work is laid out (a prefix tree over the requests, the same tree lmlab.infer.engine decodes from):

    level 0   the tokens a group of contexts shares (a task's header, a subject's few-shot prompt:
              see `prefix_groups`)                                                   prefilled once
    level 1   each distinct context's remainder, right-padded, contexts sorted by length and packed into
              batches of ≤ batch_tokens padded tokens, ≤ PAD_SLACK of them padding    prefilled once
    level 2   each continuation's tokens but the last, over the cached level-0/1 KV   batched forwards

The logits at a context's last token score the first token of every continuation of that context, so a
multiple-choice question with single-token answers (MMLU's " A".." D") costs one forward of its prompt;
longer continuations run level 2, attended with Hydragen (lmlab.nn.hydragen): prefix blocks shared by
every query that reads them, each block's own keys causal, merged by log-sum-exp. The head (norm + vocab
projection) runs only at the positions that score a token, in chunks, never over a whole (batch, length,
vocab) tensor.

Models whose mixers are not plain attention (recurrent state, sliding windows) take the dense path: each
context + continuation recomputed in right-padded, length-sorted batches. `naive_score_loglikelihood` is
the reference: one full forward per request.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from lmlab.infer.engine import PREFILL_SCORE_BUDGET, common_prefix
from lmlab.nn.attention import Attention
from lmlab.nn.hydragen import PrefixLevel, merge_lse, prefix_attention, suffix_attention

Request = tuple[list[int], list[int]]
HEAD_ROWS = 256                     # positions per head (vocab projection) chunk
PAD_SLACK = 0.1                     # largest share of padding in a batch of contexts or continuations
SHARED_MIN = 32                     # leading tokens a run of contexts must share to get its own level 0


@dataclass
class _Plan:
    """State shared by every layer's cache during one call."""
    phase: str = "prefix"                           # prefix | context | continuation
    lengths: Optional[torch.Tensor] = None          # (b,) valid tokens of each row's own block
    group: Optional[torch.Tensor] = None            # continuation phase: (N,) row of its context


def _own_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor):
    """Attention of right-padded rows to their own keys, causal. q (b, h, t, d), k/v (b, kv, t, d) ->
    out (b, h, t, d) fp32, lse (b, h, t). Right padding needs no length mask: a valid query's causal
    window ends at itself, before any padding."""
    b, h, t, d = q.shape
    if (q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16)
            and not torch.is_grad_enabled()):   # PyTorch's fused kernel, which also returns the lse
        rep = h // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=True)[:2]
        return out.float(), lse.float()
    q_pos = torch.arange(t, device=q.device)[None].expand(b, t)
    out, lse = suffix_attention(q, k, v, lengths, q_pos)
    return out.reshape(b, h, t, d), lse.reshape(b, h, t)


def _tree_attention(q, k, v, levels: list[PrefixLevel], lengths: torch.Tensor) -> torch.Tensor:
    """Own block causal + every prefix level, merged exactly; the result in q's dtype."""
    b, h, t, d = q.shape
    if not levels:
        out, _ = _own_causal(q, k, v, lengths)
        return out.to(q.dtype)
    outs, lses = [], []
    for lv in levels:
        o, l = prefix_attention(q, lv)                                    # (b, kv, r, t, d), (b, kv, r, t)
        outs.append(o.reshape(b, h, t, d))
        lses.append(l.reshape(b, h, t))
    o, l = _own_causal(q, k, v, lengths)
    return merge_lse(outs + [o], lses + [l]).to(q.dtype)


class _ScoreCache:
    """One layer's KV of the prefix tree; Attention.forward calls `attend` (see lmlab.nn.attention)."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.length = 0
        self.k0 = self.v0 = self.k1 = self.v1 = self.l1 = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        P = self.plan
        if P.phase == "prefix":                                           # q (1, h, L0, d)
            self.k0, self.v0 = k, v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        n = q.shape[0]
        levels = [] if self.k0 is None else [PrefixLevel(self.k0, self.v0, q.new_zeros(n, dtype=torch.long))]
        if P.phase == "context":                                          # q (G, h, R, d)
            self.k1, self.v1, self.l1 = k, v, P.lengths
            G, h, R = q.shape[:3]
            step = max(1, PREFILL_SCORE_BUDGET // (h * R * R))            # bound the (rows, h, R, R) scores
            return torch.cat([_tree_attention(q[i:i + step], k[i:i + step], v[i:i + step],
                                              [PrefixLevel(lv.k, lv.v, lv.group[i:i + step]) for lv in levels],
                                              P.lengths[i:i + step]) for i in range(0, G, step)])
        levels.append(PrefixLevel(self.k1, self.v1, P.group, self.l1))     # continuation: q (N, h, T, d)
        return _tree_attention(q, k, v, levels, P.lengths)


def _hidden(model, idx: torch.Tensor, positions: torch.Tensor, caches: Optional[list]) -> torch.Tensor:
    """The final residual stream (b, t, d) before the norm; caches None = plain causal forward."""
    h = model.residual_cls.expand(model.embed(idx), model.cfg)
    for i, blk in enumerate(model.blocks):
        h, _ = blk(h, state=None if caches is None else caches[i], positions=positions)
    return model.residual_cls.reduce(h, model.cfg)


def _score_rows(model, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, d) hidden states, targets (M,) -> log p(target) (M,) and target == argmax (M,), the head run on
    HEAD_ROWS positions at a time (fp32 at least, float64 stays float64)."""
    lps, greedy = [], []
    for i in range(0, x.shape[0], HEAD_ROWS):
        lg = model.head(model.norm(x[i:i + HEAD_ROWS]))
        lg = lg.to(torch.promote_types(lg.dtype, torch.float32))
        t = targets[i:i + HEAD_ROWS]
        lps.append(lg.gather(1, t[:, None])[:, 0] - torch.logsumexp(lg, -1))
        greedy.append(lg.argmax(-1) == t)
    return torch.cat(lps), torch.cat(greedy)


def _pad(rows: list[list[int]], device) -> torch.Tensor:
    x = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return x


def _packs(sizes: list[int], budget: int, slack: float = 0.0) -> list[list[int]]:
    """Indices sorted by size (longest first), cut into runs whose padded size count × longest ≤ budget and
    whose padding is ≤ slack × that padded size (at least one index each)."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    out: list[list[int]] = []
    real = 0
    for i in order:
        if out:
            padded = (len(out[-1]) + 1) * sizes[out[-1][0]]
            if padded <= budget and padded - real - sizes[i] <= slack * padded:
                out[-1].append(i)
                real += sizes[i]
                continue
        out.append([i])
        real = sizes[i]
    return out


def _check(model, requests: list[Request]) -> None:
    limit = model.cfg.max_seq_len
    for i, (c, t) in enumerate(requests):
        if t and not c:
            raise ValueError(f"score_loglikelihood: request {i} has an empty context (nothing to condition on)")
        if len(c) + len(t) - 1 > limit:
            raise ValueError(f"score_loglikelihood: request {i} needs {len(c) + len(t) - 1} positions, "
                             f"past the model context {limit}")


def tree_scorable(model) -> bool:
    """True when every mixer is plain attention (no recurrent state, no sliding window): the KV tree applies."""
    return all(type(b.mixer) is Attention and b.mixer.window is None for b in model.blocks)


@torch.no_grad()
def score_loglikelihood(model, requests: list[Request], batch_tokens: int = 2048,
                        share_prefix: bool = True) -> list[tuple[float, bool]]:
    """(sum_j log p(cont_j | ctx, cont_<j), every cont_j the argmax) for each (ctx ids, cont ids) request,
    lm-eval's convention; an empty continuation scores (0.0, True). `batch_tokens` bounds the padded tokens
    of one forward; `share_prefix` prefills shared leading tokens once (level 0, see `prefix_groups`)."""
    if batch_tokens < 1:
        raise ValueError(f"score_loglikelihood: batch_tokens={batch_tokens} must be ≥ 1")
    _check(model, requests)
    model.eval()
    out: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
    live = [i for i, (_, t) in enumerate(requests) if t]
    if not live:
        return out
    if not tree_scorable(model):
        return _score_dense(model, requests, live, batch_tokens, out)
    dev = model.embed.weight.device
    distinct: dict[tuple, int] = {}
    for i in live:
        distinct.setdefault(tuple(requests[i][0]), len(distinct))
    ctxs = [list(c) for c in distinct]
    users: list[list[int]] = [[] for _ in ctxs]                   # requests of each context
    for i in live:
        users[distinct[tuple(requests[i][0])]].append(i)
    plan = _Plan()
    caches = [_ScoreCache(plan) for _ in model.blocks]
    logp = [0.0] * len(requests)
    greedy = [True] * len(requests)
    for L0, members in prefix_groups(ctxs, SHARED_MIN if share_prefix else None):
        for c in caches:
            c.k0 = c.v0 = None
        if L0:
            plan.phase = "prefix"
            _hidden(model, torch.tensor([ctxs[members[0]][:L0]], device=dev), torch.arange(L0, device=dev)[None],
                    caches)
        for pack in _packs([len(ctxs[g]) - L0 for g in members], batch_tokens, PAD_SLACK):
            batch = [members[j] for j in pack]
            _score_batch(model, requests, [ctxs[g][L0:] for g in batch], [users[g] for g in batch], L0,
                         batch_tokens, plan, caches, logp, greedy)
    for i in live:
        out[i] = (logp[i], greedy[i])
    return out


def _score_batch(model, requests, rem, users, L0, batch_tokens, plan, caches, logp, greedy) -> None:
    """Prefill the context remainders `rem` (level 1, after L0 cached tokens), score the first token of every
    continuation from their last logits, then the rest of the longer continuations over the cache (level 2)."""
    dev = model.embed.weight.device
    x1 = _pad(rem, dev)
    lens = torch.tensor([len(r) for r in rem], device=dev)
    plan.phase, plan.lengths = "context", lens
    h = _hidden(model, x1, L0 + torch.arange(x1.shape[1], device=dev)[None], caches)
    last = h[torch.arange(len(rem), device=dev), lens - 1]                             # (G, d)
    rows = [(b, i) for b, us in enumerate(users) for i in us]
    lp, gr = _score_rows(model, last[[b for b, _ in rows]],
                         torch.tensor([requests[i][1][0] for _, i in rows], device=dev))
    for (_, i), a, b in zip(rows, lp.tolist(), gr.tolist()):
        logp[i], greedy[i] = a, b
    longer = [(b, i) for b, i in rows if len(requests[i][1]) > 1]
    for chunk in _packs([len(requests[i][1]) - 1 for _, i in longer], batch_tokens, PAD_SLACK):
        sel = [longer[j] for j in chunk]
        conts = [requests[i][1] for _, i in sel]
        group = torch.tensor([b for b, _ in sel], device=dev)
        clens = torch.tensor([len(t) - 1 for t in conts], device=dev)
        x2 = _pad([t[:-1] for t in conts], dev)
        plan.phase, plan.lengths, plan.group = "continuation", clens, group
        pos = (L0 + lens[group])[:, None] + torch.arange(x2.shape[1], device=dev)[None]
        h2 = _hidden(model, x2, pos, caches)                                           # (N, T, d)
        valid = torch.arange(x2.shape[1], device=dev)[None] < clens[:, None]
        lp, gr = _score_rows(model, h2[valid], _pad([t[1:] for t in conts], dev)[valid])
        _accumulate(sel, clens.tolist(), lp, gr, logp, greedy)


def prefix_groups(ctxs: list[list[int]], shared_min: Optional[int]) -> list[tuple[int, list[int]]]:
    """Split contexts into (level-0 length, members) groups: runs of lexicographically adjacent contexts that
    share ≥ shared_min leading tokens (e.g. the few-shot prompt of one subject) each get their shared tokens
    prefilled once; the other contexts form one group over what they all share (often a task's header).
    Every member keeps ≥ 1 token of its own. shared_min None: one group, no level 0."""
    if shared_min is None:
        return [(0, list(range(len(ctxs))))]
    order = sorted(range(len(ctxs)), key=lambda i: ctxs[i])
    runs: list[tuple[int, list[int]]] = []
    for i in order:
        if runs:
            p, members = runs[-1]
            q = min(p, common_prefix([ctxs[members[-1]], ctxs[i]]))
            if q >= shared_min:
                runs[-1] = (q, members + [i])
                continue
        runs.append((len(ctxs[i]), [i]))
    groups, rest = [], []
    for p, members in runs:
        if len(members) > 1:
            groups.append((min(p, min(len(ctxs[i]) for i in members) - 1), members))
        else:
            rest += members
    if rest:
        rest_ctx = [ctxs[i] for i in rest]
        groups.append((min(common_prefix(rest_ctx), min(len(c) for c in rest_ctx) - 1) if len(rest) > 1 else 0,
                       rest))
    return groups


def _accumulate(sel, counts: list[int], lp: torch.Tensor, gr: torch.Tensor, logp: list, greedy: list) -> None:
    """Add each request's consecutive run of scored positions (`counts` of them) to its totals."""
    at = 0
    for (_, i), n in zip(sel, counts):
        logp[i] += float(lp[at:at + n].sum())
        greedy[i] = greedy[i] and bool(gr[at:at + n].all())
        at += n


def _score_dense(model, requests: list[Request], live: list[int], batch_tokens: int,
                 out: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
    """Any model: context + continuation[:-1] recomputed in right-padded batches, longest first."""
    dev = model.embed.weight.device
    seqs = [requests[i][0] + requests[i][1][:-1] for i in live]
    logp, greedy = [0.0] * len(requests), [True] * len(requests)
    for pack in _packs([len(s) for s in seqs], batch_tokens, PAD_SLACK):
        x = _pad([seqs[j] for j in pack], dev)
        h = _hidden(model, x, torch.arange(x.shape[1], device=dev)[None], None)
        idx_r, idx_t, tgt, counts = [], [], [], []
        for r, j in enumerate(pack):
            c, t = requests[live[j]]
            idx_r += [r] * len(t)
            idx_t += range(len(c) - 1, len(c) - 1 + len(t))
            tgt += t
            counts.append(len(t))
        lp, gr = _score_rows(model, h[idx_r, idx_t], torch.tensor(tgt, device=dev))
        sel = [(None, live[j]) for j in pack]
        _accumulate(sel, counts, lp, gr, logp, greedy)
        for _, i in sel:
            out[i] = (logp[i], greedy[i])
    return out


@torch.no_grad()
def naive_score_loglikelihood(model, requests: list[Request]) -> list[tuple[float, bool]]:
    """Reference: one full forward of context + continuation per request, log_softmax over every position."""
    _check(model, requests)
    out = []
    for c, t in requests:
        if not t:
            out.append((0.0, True))
            continue
        logits = model.eval()(torch.tensor([c + t], device=model.embed.weight.device)).logits[0]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        rows = logits[len(c) - 1:len(c) - 1 + len(t)]
        tgt = torch.tensor(t, device=rows.device)
        lp = torch.log_softmax(rows, -1).gather(1, tgt[:, None])[:, 0]
        out.append((float(lp.sum()), bool((rows.argmax(-1) == tgt).all())))
    return out
