"""MoE routers in one formulation: dispatch and combine weights over (token, expert, capacity slot).

Following "Routers in Vision Mixture of Experts" (Liu, Puigcerver et al. 2024; google-research/vmoe), every
router maps a group of tokens to a dispatch tensor D[s, e, c] ∈ {0,1} (token s fills slot c of expert e)
and a combine tensor C[s, e, c] (its weight in the token's output):  y_s = Σ_{e,c} C[s,e,c] · f_e(x̃_{e,c}),
x̃_{e,c} = Σ_s D[s,e,c] x_s.  Soft MoE is the case where D and C are dense (softmax over tokens / slots).

Notation: g = routing groups, s = tokens per group, e = experts, k = experts per token, c = capacity
(slots per expert), d = model dim, n = k·s candidate assignments.

Sparse routers return a `Routing` in index form (one row per assignment: token, expert, slot, weight,
valid) that the fast dispatch in experts.py consumes; `Routing.dense()` gives D and C. Each router also has
a `naive(x)` twin that builds D and C with explicit Python loops over tokens/experts, for the tests.

Routers (registered in lmlab.registry.ROUTERS, each with its typed `Args`):
    softmax_tc       softmax over experts, each token picks its top-k, weight = softmax prob
    topk_softmax_tc  top-k of the logits, then softmax over the k (JetMoE / Mixtral)
    sinkhorn_tc      top-k chosen on the Sinkhorn-balanced plan, weight = softmax prob (S-BASE)
    softmax_ec       each expert picks its top-c tokens by softmax prob (Zhou et al. expert choice)
    sinkhorn_ec      each expert picks its top-c tokens on the Sinkhorn plan
    sparse_ec        sparsity-constrained EC: transport plan whose columns have ≤ c non-zeros
    soft             Soft MoE (Puigcerver et al.): D = softmax over tokens, C = softmax over slots
Capacity: token choice c = ceil(s·k·cf/e), expert choice c = ceil(cf·s/e); cf=None means dropless for token
choice (c = the largest expert load). Batch-priority routing (Riquelme et al. 2021) fills slots in order of
the token's top routing weight instead of position.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lmlab.config import ComponentArgs, validate
from lmlab.registry import ROUTERS


def register(name: str, help: str):
    """Register a router class in lmlab.registry.ROUTERS under `name` with a one-line description."""
    def deco(cls):
        cls.name = name
        return ROUTERS.register(name, cls, help=help)
    return deco


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Router math in fp32 at least (fp64 stays fp64 for the equivalence tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def tc_capacity(s: int, k: int, e: int, cf: Optional[float]) -> Optional[int]:
    return None if cf is None else max(1, math.ceil(s * k * cf / e))


def ec_capacity(s: int, e: int, cf: float) -> int:
    return max(1, min(s, math.ceil(cf * s / e)))


# ----------------------------------------------------------------------------------------------- data
@dataclass
class Routing:
    """Index form of (D, C). All index tensors are (g, n); invalid rows (dropped) have weight 0."""

    token: torch.Tensor
    expert: torch.Tensor
    slot: torch.Tensor
    weight: torch.Tensor
    valid: torch.Tensor
    capacity: int
    n_tokens: int
    n_experts: int
    logits: torch.Tensor            # (g, s, e) router logits (fp32+), for aux losses
    probs: torch.Tensor             # (g, s, e) softmax over experts
    k: int = 1                      # nominal experts per token (token choice) for the balance loss
    dropless: bool = False          # capacity = the busiest expert's load (nothing dropped, no padding needed)
    extra: dict = field(default_factory=dict)

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """D (g, s, e, c) bool and C (g, s, e, c)."""
        g = self.token.shape[0]
        shape = (g, self.n_tokens, self.n_experts, self.capacity)
        flat = ((self.token * self.n_experts + self.expert) * self.capacity + self.slot.clamp(max=self.capacity - 1))
        flat = flat + torch.arange(g, device=flat.device)[:, None] * (shape[1] * shape[2] * shape[3])
        flat = flat[self.valid]
        comb = torch.zeros(math.prod(shape), dtype=self.weight.dtype, device=self.weight.device)
        comb = comb.index_add(0, flat, self.weight[self.valid])
        disp = torch.zeros(math.prod(shape), dtype=torch.bool, device=self.weight.device)
        disp[flat] = True
        return disp.view(shape), comb.view(shape)

    def load(self) -> torch.Tensor:
        """(e,) fraction of kept assignments per expert."""
        cnt = torch.zeros(self.n_experts, device=self.expert.device, dtype=torch.float32)
        cnt.index_add_(0, self.expert.reshape(-1), self.valid.reshape(-1).to(torch.float32))
        return cnt / cnt.sum().clamp(min=1)


@dataclass
class SoftRouting:
    dispatch: torch.Tensor   # (g, s, e, p) softmax over s
    combine: torch.Tensor    # (g, s, e, p) softmax over (e, p)
    logits: torch.Tensor     # (g, s, e, p)
    n_experts: int
    extra: dict = field(default_factory=dict)

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dispatch, self.combine


# -------------------------------------------------------------------------------------------- sinkhorn
def sinkhorn(logits: torch.Tensor, n_iter: int = 10) -> torch.Tensor:
    """Balanced plan P (g, s, e) ∝ exp(logits) with rows summing to 1/s and columns to 1/e (log domain)."""
    g, s, e = logits.shape
    lp = logits.detach()
    u = torch.zeros(g, s, 1, dtype=lp.dtype, device=lp.device)
    v = torch.zeros(g, 1, e, dtype=lp.dtype, device=lp.device)
    for _ in range(n_iter):
        u = -math.log(s) - torch.logsumexp(lp + v, dim=2, keepdim=True)
        v = -math.log(e) - torch.logsumexp(lp + u, dim=1, keepdim=True)
    return torch.exp(lp + u + v)


def naive_sinkhorn(logits: torch.Tensor, n_iter: int = 10) -> torch.Tensor:
    """Same plan by alternately rescaling each row and each column in loops (probability domain)."""
    return _naive_plan(logits, n_iter)


def _naive_plan(logits: torch.Tensor, n_iter: int, capacity: Optional[int] = None) -> torch.Tensor:
    """Loops over groups, rows and columns: rows to 1/s; with `capacity`, each column keeps its top-c
    entries; columns to 1/e."""
    g, s, e = logits.shape
    out = torch.empty_like(logits)
    for gi in range(g):
        P = torch.exp(logits[gi].detach() - logits[gi].detach().max())
        for _ in range(n_iter):
            for i in range(s):
                P[i] = P[i] / max(float(P[i].sum()), 1e-30) / s
            for j in range(e):
                if capacity is not None:
                    order = sorted(range(s), key=lambda i: -float(P[i, j]))
                    for i in order[capacity:]:
                        P[i, j] = 0.0
                P[:, j] = P[:, j] / max(float(P[:, j].sum()), 1e-30) / e
        out[gi] = P
    return out


def sparse_transport(logits: torch.Tensor, capacity: int, n_iter: int = 10) -> torch.Tensor:
    """Sparsity-constrained plan: alternate (a) row normalisation to 1/s, (b) for each expert keep only its
    top-c entries and rescale that column to 1/e. The result has ≤ c non-zeros per column.

    A simplified solver of the sparsity-constrained optimal transport used by the paper's SCOT router (the
    paper solves a smoothed dual with L-BFGS); the constraint itself — at most c tokens per expert, mass
    balanced across experts — is the same.
    """
    g, s, e = logits.shape
    P = torch.exp(logits.detach() - logits.detach().amax(dim=(1, 2), keepdim=True))
    for _ in range(n_iter):
        P = P / P.sum(2, keepdim=True).clamp(min=1e-30) / s
        top = P.topk(capacity, dim=1).indices                         # (g, c, e)
        keep = torch.zeros_like(P).scatter(1, top, 1.0)
        P = P * keep
        P = P / P.sum(1, keepdim=True).clamp(min=1e-30) / e
    return P


def naive_sparse_transport(logits: torch.Tensor, capacity: int, n_iter: int = 10) -> torch.Tensor:
    """`sparse_transport` by loops."""
    return _naive_plan(logits, n_iter, capacity)


# ------------------------------------------------------------------------------------------ base class
class _Router(nn.Module):
    """Linear scoring W_r: d -> e, logits in fp32 (or fp64); optional aux-loss-free selection bias."""

    name = "router"
    expert_choice = False

    class Args(ComponentArgs):
        """A linear router's options (MoE passes its own ffn_args.moe values of the same names)."""

        top_k: int = Field(1, ge=1, description="experts per token (token choice); default cf (expert choice)")
        capacity_factor: Optional[float] = Field(None, gt=0, description="None = dropless / k (expert choice)")
        batch_priority: bool = False
        sinkhorn_iters: int = Field(10, ge=0)
        bias_update_rate: float = Field(0.0, ge=0, description="aux-loss-free balancing step (0 = off)")
        noise_std: float = Field(0.0, ge=0, description="logit noise while training")

    def __init__(self, d: int, n_experts: int, args: Optional[Args] = None):
        super().__init__()
        args = args if args is not None else self.Args()
        self.n_experts, self.top_k, self.cf = n_experts, args.top_k, args.capacity_factor
        self.batch_priority, self.sinkhorn_iters = args.batch_priority, args.sinkhorn_iters
        self.noise_std = args.noise_std
        self.proj = nn.Linear(d, n_experts, bias=False)
        # Auxiliary-loss-free balancing (Wang et al. 2024, DeepSeek-V3): a per-expert bias added to the scores
        # used for *selection* only, nudged after each training step towards under-loaded experts.
        self.bias_update_rate = args.bias_update_rate
        self.register_buffer("select_bias", torch.zeros(n_experts), persistent=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        dt = _acc_dtype(x)
        lg = F.linear(x.to(dt), self.proj.weight.to(dt))                       # (g, s, e)
        if self.training and self.noise_std > 0:
            lg = lg + self.noise_std * torch.randn_like(lg)
        return lg

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor) -> None:
        if self.training and self.bias_update_rate > 0:
            self.select_bias += self.bias_update_rate * torch.sign(load.mean() - load).to(self.select_bias)


# -------------------------------------------------------------------------------------- token choice
class _TokenChoice(_Router):
    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> probs (g,s,e), chosen experts (g,s,k), their combine weights (g,s,k)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> Routing:
        g, s, _ = x.shape
        e, k = self.n_experts, self.top_k
        logits = self.logits(x)
        probs, idx, w = self.scores(logits)
        # Slot filling order: choice-major (all first choices before any second choice, as in vmoe), and
        # within a choice either position order or batch priority (highest top-1 weight first).
        if self.batch_priority:
            order = torch.argsort(w[..., 0].detach(), dim=1, descending=True, stable=True)  # (g, s)
        else:
            order = torch.arange(s, device=x.device).expand(g, s)
        idx_o = idx.gather(1, order[..., None].expand(g, s, k))                           # (g, s, k)
        flat_e = idx_o.transpose(1, 2).reshape(g, k * s)                                  # (g, n)
        # slot = rank of the assignment among its expert's assignments in filling order: a stable sort by
        # expert lists each expert's assignments in that order, starting at the expert's offset.
        n = k * s
        perm = torch.argsort(flat_e, dim=1, stable=True)                                  # (g, n)
        per = torch.zeros(g, e, dtype=torch.long, device=x.device).scatter_add_(1, flat_e, torch.ones_like(flat_e))
        first = per.cumsum(1) - per                                                       # (g, e) offsets
        rank = torch.arange(n, device=x.device).expand(g, n) - first.gather(1, flat_e.gather(1, perm))
        slot = torch.empty_like(flat_e).scatter_(1, perm, rank)                           # (g, n)
        token = order[:, None, :].expand(g, k, s).reshape(g, k * s)
        weight = w.gather(1, order[..., None].expand(g, s, k)).transpose(1, 2).reshape(g, k * s)
        cap = tc_capacity(s, k, e, self.cf)
        if cap is None:  # dropless: just enough slots for the busiest expert
            cap = int(per.max().item())
        valid = slot < cap
        r = Routing(token, flat_e, slot, weight * valid, valid, cap, s, e, logits, probs, k, dropless=self.cf is None)
        if self.training and self.bias_update_rate > 0:
            self.update_bias(r.load())
        return r

    def naive(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D, C (g, s, e, c) built by visiting tokens one at a time with per-expert slot counters."""
        g, s, _ = x.shape
        e, k = self.n_experts, self.top_k
        logits = self.logits(x)
        probs, idx, w = self.naive_scores(logits)
        cap = tc_capacity(s, k, e, self.cf)
        if cap is None:
            counts = torch.zeros(e, dtype=torch.long)
            for gi in range(g):
                c = torch.bincount(idx[gi].reshape(-1).cpu(), minlength=e)
                counts = torch.maximum(counts, c)
            cap = int(counts.max())
        D = torch.zeros(g, s, e, cap, dtype=torch.bool)
        C = [[[[None] * cap for _ in range(e)] for _ in range(s)] for _ in range(g)]
        for gi in range(g):
            toks = list(range(s))
            if self.batch_priority:
                toks.sort(key=lambda i: -float(w[gi, i, 0].detach()))
            fill = [0] * e
            for j in range(k):
                for i in toks:
                    ex = int(idx[gi, i, j])
                    if fill[ex] < cap:
                        D[gi, i, ex, fill[ex]] = True
                        C[gi][i][ex][fill[ex]] = w[gi, i, j]
                    fill[ex] += 1
        return D, _stack_nested(C, w)

    def naive_scores(self, logits):
        return self.scores(logits)


def _stack_nested(C, like: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.stack([torch.stack([torch.stack([torch.stack([c if c is not None else zero for c in slots])
                                                               for slots in ex]) for ex in tok]) for tok in C])


@register("softmax_tc", "token choice: softmax over experts, each token takes its top-k, weight = prob")
class SoftmaxTokenChoice(_TokenChoice):
    def scores(self, logits):
        probs = torch.softmax(logits, -1)
        idx = (probs + self.select_bias.to(probs)).topk(self.top_k, -1).indices
        return probs, idx, probs.gather(-1, idx)

    def naive_scores(self, logits):
        probs = torch.softmax(logits, -1)
        g, s, e = probs.shape
        idx = torch.zeros(g, s, self.top_k, dtype=torch.long)
        for gi in range(g):
            for i in range(s):
                sc = [(float(probs[gi, i, j].detach() + self.select_bias[j]), -j) for j in range(e)]
                best = sorted(range(e), key=lambda j: sc[j], reverse=True)[: self.top_k]
                idx[gi, i] = torch.tensor(best)
        return probs, idx, probs.gather(-1, idx)


@register("topk_softmax_tc", "token choice: top-k logits, softmax over the k (JetMoE / Mixtral)")
class TopKSoftmaxTokenChoice(_TokenChoice):
    """JetMoE / Mixtral gate: top-k on the fp32 logits, softmax over the k chosen (weights sum to 1)."""

    def scores(self, logits):
        idx = (logits + self.select_bias.to(logits)).topk(self.top_k, -1).indices
        probs = torch.softmax(logits, -1)
        # softmax over the k chosen logits = their probabilities renormalised (one softmax, not two).
        pk = probs.gather(-1, idx)
        return probs, idx, pk / pk.sum(-1, keepdim=True)


@register("sinkhorn_tc", "token choice: top-k on the Sinkhorn-balanced plan, weight = prob (S-BASE)")
class SinkhornTokenChoice(_TokenChoice):
    def scores(self, logits):
        probs = torch.softmax(logits, -1)
        plan = sinkhorn(logits, self.sinkhorn_iters)
        idx = plan.topk(self.top_k, -1).indices
        return probs, idx, probs.gather(-1, idx)

    def naive_scores(self, logits):
        probs = torch.softmax(logits, -1)
        plan = naive_sinkhorn(logits, self.sinkhorn_iters)
        idx = plan.topk(self.top_k, -1).indices
        return probs, idx, probs.gather(-1, idx)


# ------------------------------------------------------------------------------------- expert choice
class _ExpertChoice(_Router):
    expert_choice = True

    def __init__(self, d: int, n_experts: int, args: Optional[_Router.Args] = None):
        # For expert choice cf plays the role of k: c = cf·s/e slots per expert (default cf = k).
        super().__init__(d, n_experts, args)
        if self.cf is None:
            self.cf = float(self.top_k)

    def selection(self, logits, probs, cap):
        return probs

    def forward(self, x: torch.Tensor) -> Routing:
        g, s, _ = x.shape
        e = self.n_experts
        logits = self.logits(x)
        probs = torch.softmax(logits, -1)
        cap = ec_capacity(s, e, self.cf)
        sel = self.selection(logits, probs, cap) + self.select_bias.to(probs)
        top = sel.transpose(1, 2).topk(cap, dim=-1)                     # (g, e, c): expert's chosen tokens
        token = top.indices.reshape(g, e * cap)
        expert = torch.arange(e, device=x.device).repeat_interleave(cap).expand(g, e * cap)
        slot = torch.arange(cap, device=x.device).repeat(e).expand(g, e * cap)
        valid = top.values.reshape(g, e * cap) > self.min_score()
        weight = probs.transpose(1, 2).gather(2, top.indices).reshape(g, e * cap)      # p[token, expert]
        r = Routing(token, expert, slot, weight * valid, valid, cap, s, e, logits, probs, self.top_k)
        if self.training and self.bias_update_rate > 0:
            self.update_bias(r.load())
        return r

    def min_score(self) -> float:
        return -math.inf

    def naive_selection(self, logits, probs, cap):
        return self.selection(logits, probs, cap)

    def naive(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, s, _ = x.shape
        e = self.n_experts
        logits = self.logits(x)
        probs = torch.softmax(logits, -1)
        cap = ec_capacity(s, e, self.cf)
        sel = self.naive_selection(logits, probs, cap)
        D = torch.zeros(g, s, e, cap, dtype=torch.bool)
        C = [[[[None] * cap for _ in range(e)] for _ in range(s)] for _ in range(g)]
        for gi in range(g):
            for ex in range(e):
                ranked = sorted(range(s), key=lambda i: (-float(sel[gi, i, ex].detach() + self.select_bias[ex]), i))
                for c, i in enumerate(ranked[:cap]):
                    if float(sel[gi, i, ex].detach()) > self.min_score():
                        D[gi, i, ex, c] = True
                        C[gi][i][ex][c] = probs[gi, i, ex]
        return D, _stack_nested(C, probs)


@register("softmax_ec", "expert choice: each expert takes its top-c tokens by softmax prob")
class SoftmaxExpertChoice(_ExpertChoice):
    pass


@register("sinkhorn_ec", "expert choice: each expert takes its top-c tokens on the Sinkhorn plan")
class SinkhornExpertChoice(_ExpertChoice):
    def selection(self, logits, probs, cap):
        return sinkhorn(logits, self.sinkhorn_iters)

    def naive_selection(self, logits, probs, cap):
        return naive_sinkhorn(logits, self.sinkhorn_iters)


@register("sparse_ec", "expert choice on a transport plan with <= c tokens per expert")
class SparsityConstrainedExpertChoice(_ExpertChoice):
    """Tokens outside an expert's sparse support are not processed even if fewer than c remain."""

    def selection(self, logits, probs, cap):
        return sparse_transport(logits, cap, self.sinkhorn_iters)

    def naive_selection(self, logits, probs, cap):
        return naive_sparse_transport(logits, cap, self.sinkhorn_iters)

    def min_score(self) -> float:
        return 0.0


# ------------------------------------------------------------------------------------------- soft MoE
@register("soft", "Soft MoE: slots are softmax mixes of tokens, outputs softmax mixes of slots")
class SoftMoERouter(nn.Module):
    """Soft MoE: logits[s, (e,p)] = scale · <x̂_s, φ̂_{e,p}> with L2-normalised x and slot parameters φ;
    D = softmax over tokens (each slot is a convex mix of tokens), C = softmax over all slots (each
    token's output a convex mix of slot outputs)."""

    expert_choice = False
    name = "soft"

    class Args(ComponentArgs):
        """Soft MoE options: slots_per_expert (top_k and capacity_factor are accepted and unused)."""

        top_k: int = Field(1, ge=1, description="unused (every token reaches every slot)")
        capacity_factor: Optional[float] = Field(None, gt=0, description="unused")
        slots_per_expert: int = Field(1, ge=1)

    def __init__(self, d: int, n_experts: int, args: Optional[Args] = None):
        super().__init__()
        args = args if args is not None else self.Args()
        self.n_experts, self.slots = n_experts, args.slots_per_expert
        self.phi = nn.Parameter(torch.randn(d, n_experts * self.slots) / math.sqrt(d))
        self.scale = nn.Parameter(torch.ones(()))

    def reset_extra_parameters(self, init=None) -> None:
        nn.init.normal_(self.phi, 0.0, 1.0 / math.sqrt(self.phi.shape[0]))
        nn.init.ones_(self.scale)

    def _logits(self, x):
        dt = _acc_dtype(x)
        xn = F.normalize(x.to(dt), dim=-1)
        pn = F.normalize(self.phi.to(dt), dim=0)
        return self.scale.to(dt) * xn @ pn                                   # (g, s, e·p)

    def forward(self, x: torch.Tensor) -> SoftRouting:
        g, s, _ = x.shape
        lg = self._logits(x)
        D = torch.softmax(lg, dim=1)
        C = torch.softmax(lg, dim=2)
        shp = (g, s, self.n_experts, self.slots)
        return SoftRouting(D.view(shp), C.view(shp), lg.view(shp), self.n_experts)

    def naive(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, s, d = x.shape
        m = self.n_experts * self.slots
        lg = self._logits(x)
        D = [[None] * m for _ in range(g)]
        C = [[None] * s for _ in range(g)]
        for gi in range(g):
            for j in range(m):                      # slot j: softmax over the tokens
                col = lg[gi, :, j]
                ex = torch.exp(col - col.max())
                D[gi][j] = ex / ex.sum()
            for i in range(s):                      # token i: softmax over the slots
                row = lg[gi, i]
                ex = torch.exp(row - row.max())
                C[gi][i] = ex / ex.sum()
        Dt = torch.stack([torch.stack(D[gi], 1) for gi in range(g)])        # (g, s, m)
        Ct = torch.stack([torch.stack(C[gi], 0) for gi in range(g)])
        shp = (g, s, self.n_experts, self.slots)
        return Dt.view(shp), Ct.view(shp)


def build_router(name: str, d: int, n_experts: int, **kw) -> nn.Module:
    """ROUTERS[name] for d-dimensional tokens and n_experts experts; `kw` validated against its Args."""
    cls = ROUTERS.get(name)
    return cls(d, n_experts, validate(cls.Args, kw, source=f"router {name}"))


# -------------------------------------------------------------------------------------- aux losses
def aux_losses(r: Routing | SoftRouting, noise_std: float = 0.0) -> dict[str, torch.Tensor]:
    """Balancing losses, each normalised so a perfectly balanced router reads exactly 1:

    importance  E·Σ_e I_e² / (Σ_e I_e)² = 1 + CV²(I),   I_e = Σ_s p_{s,e}          (Shazeer et al. 2017)
    load        same on the expected load; with noise σ>0 the load is Φ((l_se − θ_se)/σ), θ = the k-th
                largest competing logit (Shazeer's smooth estimator); without noise it is the hard count
    balance     E·Σ_e f_e·P_e, f_e = share of assignments, P_e = mean prob           (GShard / Switch)
    z           mean_s (logsumexp_e l_se)²                                          (ST-MoE; not normalised)
    """
    if isinstance(r, SoftRouting):
        lg = r.logits.flatten(2)
        return {"z": torch.logsumexp(lg, -1).pow(2).mean()}
    e = r.n_experts
    p = r.probs.reshape(-1, e)
    imp = p.sum(0)
    out = {"importance": e * imp.pow(2).sum() / imp.sum().pow(2)}
    f = r.load().to(p)
    out["balance"] = e * (f * p.mean(0)).sum()
    if noise_std > 0:
        lg = r.logits.reshape(-1, e)
        k = min(r.k, e - 1)
        topv = lg.topk(k + 1, -1).values                       # (n, k+1)
        kth_in, kth_out = topv[:, k - 1:k], topv[:, k:k + 1]
        in_top = lg >= kth_in
        thr = torch.where(in_top, kth_out, kth_in)             # θ: the logit to beat when e is (not) chosen
        load = torch.distributions.Normal(0.0, 1.0).cdf((lg - thr) / noise_std).sum(0)
    else:
        load = f * p.shape[0]
    out["load"] = e * load.pow(2).sum() / load.sum().pow(2).clamp(min=1e-30)
    out["z"] = torch.logsumexp(r.logits.reshape(-1, e), -1).pow(2).mean()
    return out


@torch.no_grad()
def router_metrics(r: Routing | SoftRouting) -> dict[str, float]:
    """Per-expert load, dropped-token fraction (tokens with no kept assignment), mean router entropy."""
    if isinstance(r, SoftRouting):
        C = r.combine.flatten(2)
        ent = -(C * C.clamp(min=1e-30).log()).sum(-1).mean()
        load = r.dispatch.sum(1).flatten(1).mean(0)
        return {"entropy": float(ent), "dropped": 0.0, **{f"load/{i}": float(v) for i, v in enumerate(
            r.dispatch.sum((0, 1, 3)) / r.dispatch.sum())}}
    p = r.probs
    ent = -(p * p.clamp(min=1e-30).log()).sum(-1).mean()
    g = r.token.shape[0]
    kept = torch.zeros(g, r.n_tokens, device=p.device)
    kept.scatter_add_(1, r.token, r.valid.float())
    out = {"entropy": float(ent), "dropped": float((kept == 0).float().mean())}
    out.update({f"load/{i}": float(v) for i, v in enumerate(r.load())})
    return out
