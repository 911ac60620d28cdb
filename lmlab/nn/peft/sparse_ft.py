"""SpIEL: sparse fine-tuning with prune/regrow (Ansell et al., 2024, "Scaling Sparse Fine-Tuning to LLMs").

Notation: o = out_features, i = in_features, k = active entries of one weight (k = density · o·i),
η = flat index into the (o, i) weight, φ = delta values, U = cycle length (steps), ρ = drop fraction.

Each selected weight W₀ (frozen, possibly int8-quantized) gets k (η, φ) pairs; the layer computes

    W = W₀ + scatter(η, φ)          y = x Wᵀ + b

Only φ is trainable, so parameters and optimizer state cost O(k). Every U optimizer steps (a *cycle*):
  1. update  — the optimizer trains φ as usual;
  2. prune   — drop the ρ·k slots whose delta changed least in magnitude over the cycle, |φ − φ_cycle_start|
               (a slot grown in the last cycle started at 0);
  3. regrow  — refill exactly those slots with the inactive indices (not those just pruned) of largest growth
               score, φ = 0:
       "ag" (SpIEL-AG): |Σ g| of the gradient accumulated over the last `accumulation_steps` steps of the
                        cycle. With `candidates=None` the whole dense gradient is accumulated (a dense buffer
                        during that window only); with `candidates=m` only m·k candidate entries are tracked,
                        chosen as the largest |g| of inactive entries at the window's first step (O(k) memory);
       "ma" (SpIEL-MA): an SM3-style factored second-moment estimate with O(o + i) memory: per step
                        ν = β·min(r_o, c_i) + (1−β)·g², r_o = maxᵢ ν, c_i = maxₒ ν; score = min(r_o, c_i).
The slot layout is fixed, so optimizer state follows the indices: kept slots keep their Adam moments,
regrown slots get zeroed moments (and a zero delta). Density is exact after every cycle by construction.

The fast path (`_SparseDeltaLinearFn`) never keeps the dense W for backward: it rebuilds it when needed and
reduces the transient dense ∂L/∂W to the k active entries (and to the growth statistics), so the persistent
memory is the frozen base + O(k). `naive_sparse_delta_linear` builds W with autograd for reference.
`merge()` returns W₀ + scatter(η, φ) dense.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.nn.peft.lora import TargetSpec, _set_submodule, find_linears


def naive_sparse_delta_linear(x: torch.Tensor, base: torch.Tensor, bias: Optional[torch.Tensor],
                              indices: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Reference: materialise W = W₀ + scatter(η, φ) with autograd and apply it."""
    w = base.reshape(-1).index_add(0, indices, delta).view_as(base)          # (o, i)
    return F.linear(x, w, bias)


class _SparseDeltaLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, bias, layer):
        w = layer.dense_weight(delta)                                         # (o, i), transient
        ctx.layer = layer
        ctx.save_for_backward(x, delta)
        ctx.has_bias = bias is not None
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, g):
        x, delta = ctx.saved_tensors
        layer = ctx.layer
        g2 = g.reshape(-1, g.shape[-1]).to(x.dtype)                           # (n, o); autocast may hand bf16
        x2 = x.reshape(-1, x.shape[-1])                                       # (n, i)
        grad_x = grad_delta = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (g2 @ layer.dense_weight(delta).to(g2.dtype)).view_as(x)
        if ctx.needs_input_grad[1] or layer.grad_sink is not None:
            gw = g2.T @ x2                                                    # (o, i) dense, transient
            if layer.grad_sink is not None:
                layer.grad_sink(gw.detach())
            grad_delta = gw.reshape(-1).index_select(0, layer.indices).to(delta.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g2.sum(0)
        return grad_x, grad_delta, grad_bias, None


class SparseDeltaLinear(nn.Module):
    """A frozen linear (float or int8 with a per-row scale) plus k trainable (index, delta) pairs."""

    def __init__(self, base: nn.Linear, k: int, generator: Optional[torch.Generator] = None,
                 delta_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        n = self.in_features * self.out_features
        if not 0 < k <= n:
            raise ValueError(f"sparse delta size k={k} must be in [1, {n}] for a {self.out_features}x{self.in_features} weight")
        self.weight = base.weight.requires_grad_(False)                      # (o, i) frozen, shared (ties survive)
        self.bias = None if base.bias is None else base.bias.requires_grad_(False)
        for key, v in vars(base).items():
            if key.startswith("_is_"):
                setattr(self, key, v)
        self.register_buffer("weight_scale", None)                           # (o, 1) when int8-quantized
        dev = base.weight.device
        idx = torch.randperm(n, generator=generator)[:k].to(dev)
        self.register_buffer("indices", idx)                                 # (k,) flat indices η
        self.delta = nn.Parameter(torch.zeros(k, device=dev, dtype=delta_dtype))  # (k,) φ
        self.grad_sink: Optional[Callable[[torch.Tensor], None]] = None
        self.fast = True

    @property
    def k(self) -> int:
        return self.indices.numel()

    def base_weight(self) -> torch.Tensor:
        if self.weight_scale is not None:
            return self.weight.to(self.delta.dtype) * self.weight_scale.to(self.delta.dtype)
        return self.weight.to(self.delta.dtype)

    def dense_weight(self, delta: Optional[torch.Tensor] = None) -> torch.Tensor:
        delta = self.delta if delta is None else delta
        base = self.base_weight().detach()
        return base.reshape(-1).index_add(0, self.indices, delta.detach()).view_as(base)

    @torch.no_grad()
    def quantize_base_int8(self) -> None:
        """Store W₀ as int8 with an absmax scale per output row (qSpIEL-style frozen quantized base)."""
        w = self.base_weight()
        scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
        self.weight = nn.Parameter(torch.round(w / scale).to(torch.int8), requires_grad=False)
        self.weight_scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xd = x.to(self.delta.dtype)
        bias = None if self.bias is None else self.bias.to(self.delta.dtype)
        if self.fast:
            y = _SparseDeltaLinearFn.apply(xd, self.delta, bias, self)
        else:
            y = naive_sparse_delta_linear(xd, self.base_weight(), bias, self.indices, self.delta)
        return y.to(x.dtype)

    @torch.no_grad()
    def merge(self) -> torch.Tensor:
        """Dense W₀ + scatter(η, φ)."""
        return self.dense_weight()

    def to_linear(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.delta.device, dtype=self.delta.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.merge())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, k={self.k}, density={self.k / (self.in_features * self.out_features):.4g}"


def _allocate(sizes: list[int], total: int) -> list[int]:
    """Split `total` active entries over weights in proportion to their sizes (largest remainder)."""
    n = sum(sizes)
    if not 0 < total <= n:
        raise ValueError(f"trainable budget {total} must be in [1, {n}] (entries in the selected weights)")
    raw = [total * s / n for s in sizes]
    ks = [math.floor(r) for r in raw]
    for j in sorted(range(len(sizes)), key=lambda j: raw[j] - ks[j], reverse=True)[: total - sum(ks)]:
        ks[j] += 1
    return [max(1, min(k, s)) for k, s in zip(ks, sizes)]


class SpIEL:
    """Owns the SparseDeltaLinear layers of one model and runs the prune/regrow cycles.

    Call `step(optimizer)` after every `optimizer.step()` (or `attach(optimizer)` once, which registers a
    step post-hook doing that).
    """

    def __init__(self, model: nn.Module, density: Optional[float] = None, n_trainable: Optional[int] = None,
                 target_modules: TargetSpec = r".*", exclude: Iterable[str] = (), regrow: str = "ag",
                 update_interval: int = 20, drop_fraction: float = 0.1, accumulation_steps: int = 5,
                 candidates: Optional[float] = None,
                 sm3_beta: float = 0.9, total_steps: Optional[int] = None, seed: int = 0,
                 freeze_base: bool = True):
        if regrow not in ("ag", "ma"):
            raise ValueError(f"regrow={regrow!r}; choose ag (accumulated gradients) or ma (SM3 momentum)")
        if (density is None) == (n_trainable is None):
            raise ValueError("give exactly one of density or n_trainable for SpIEL")
        if density is not None and not 0 < density <= 1:
            raise ValueError(f"density={density} must be in (0, 1]")
        if not 0 <= drop_fraction < 1:
            raise ValueError(f"drop_fraction={drop_fraction} must be in [0, 1)")
        if update_interval < 1 or accumulation_steps < 1:
            raise ValueError(f"update_interval={update_interval} and accumulation_steps={accumulation_steps} must be >= 1")
        accumulation_steps = min(accumulation_steps, update_interval)
        if candidates is not None and candidates <= 0:
            raise ValueError(f"candidates={candidates} must be > 0 (a multiple of each layer's k) or null (dense)")
        self.candidates = candidates
        names = find_linears(model, target_modules, exclude)
        if not names:
            raise ValueError(f"target_modules={target_modules!r} matches no nn.Linear in {type(model).__name__}")
        sizes = [model.get_submodule(n).weight.numel() for n in names]
        total = n_trainable if n_trainable is not None else max(1, round(density * sum(sizes)))
        ks = _allocate(sizes, total)
        gen = torch.Generator().manual_seed(seed)
        if freeze_base:
            for p in model.parameters():
                p.requires_grad_(False)
        self.layers: dict[str, SparseDeltaLinear] = {}
        for n, k in zip(names, ks):
            layer = SparseDeltaLinear(model.get_submodule(n), k, gen)
            _set_submodule(model, n, layer)
            self.layers[n] = layer
        self.regrow, self.update_interval, self.drop_fraction = regrow, update_interval, drop_fraction
        self.accumulation_steps, self.sm3_beta, self.total_steps = accumulation_steps, sm3_beta, total_steps
        self.t = 0
        self._start = {n: l.delta.detach().clone() for n, l in self.layers.items()}  # φ at cycle start
        self._stats: dict[str, dict[str, torch.Tensor]] = {}
        self._hooks: list = []
        self.history: list[dict] = []
        self._set_sinks()
        model.spiel = self

    # ------------------------------------------------------------------------------------ bookkeeping
    def parameters(self) -> list[nn.Parameter]:
        return [l.delta for l in self.layers.values()]

    def n_trainable(self) -> int:
        return sum(l.k for l in self.layers.values())

    def state_bytes(self) -> int:
        """Bytes held by SpIEL beyond the frozen base: indices + deltas + growth statistics."""
        b = sum(l.indices.numel() * l.indices.element_size() + l.delta.numel() * l.delta.element_size()
                for l in self.layers.values())
        b += sum(v.numel() * v.element_size() for s in self._stats.values() for v in s.values())
        return b

    def _phase_collects(self) -> bool:
        """Whether the backward of the *next* step feeds growth statistics."""
        if self.regrow == "ma":
            return True
        pos = self.t % self.update_interval          # steps done in this cycle
        return pos >= self.update_interval - self.accumulation_steps

    def _set_sinks(self) -> None:
        collect = self._phase_collects()
        for n, l in self.layers.items():
            l.grad_sink = self._make_sink(n, l) if collect else None

    def _make_sink(self, name: str, layer: SparseDeltaLinear) -> Callable[[torch.Tensor], None]:
        def sink(g: torch.Tensor) -> None:                                   # g: (o, i) dense ∂L/∂W
            s = self._stats.setdefault(name, {})
            g = g.float()
            if self.regrow == "ag" and self.candidates is not None:
                flat = g.reshape(-1)
                if "cand" not in s:                                          # first step of the window
                    first = flat.abs().index_fill(0, layer.indices, -1.0)    # active entries are not candidates
                    c = min(max(1, int(self.candidates * layer.k)), flat.numel() - layer.k)
                    s["cand"] = torch.topk(first, c).indices
                    s["acc"] = torch.zeros(c, device=g.device)
                s["acc"].add_(flat.index_select(0, s["cand"]))
            elif self.regrow == "ag":
                if "acc" not in s:
                    s["acc"] = torch.zeros_like(g)
                s["acc"].add_(g)
            else:
                if "row" not in s:
                    s["row"] = torch.zeros(g.shape[0], device=g.device)
                    s["col"] = torch.zeros(g.shape[1], device=g.device)
                est = torch.minimum(s["row"][:, None], s["col"][None, :])   # (o, i) SM3 cover
                nu = self.sm3_beta * est + (1 - self.sm3_beta) * g.square()
                s["row"] = nu.amax(1)
                s["col"] = nu.amax(0)
        return sink

    def growth_score(self, name: str) -> torch.Tensor:
        """(o·i,) score for every entry of one weight (higher = grow first)."""
        l, s = self.layers[name], self._stats.get(name, {})
        if self.regrow == "ag":
            acc = s.get("acc")
            if acc is None:
                return torch.zeros(l.weight.numel(), device=l.delta.device)
            if "cand" in s:                                                  # sparse candidates: others score 0
                return torch.zeros(l.weight.numel(), device=acc.device).index_put_((s["cand"],), acc.abs())
            return acc.abs().reshape(-1)
        if "row" not in s:
            return torch.zeros(l.weight.numel(), device=l.delta.device)
        return torch.minimum(s["row"][:, None], s["col"][None, :]).reshape(-1)

    def current_drop_fraction(self) -> float:
        if self.total_steps:
            return self.drop_fraction * 0.5 * (1 + math.cos(math.pi * min(self.t, self.total_steps) / self.total_steps))
        return self.drop_fraction

    # ------------------------------------------------------------------------------------ the cycle
    @torch.no_grad()
    def prune_regrow(self, optimizer: Optional[torch.optim.Optimizer] = None) -> dict[str, int]:
        """One prune → regrow on every layer; returns the number of slots replaced per layer."""
        rho = self.current_drop_fraction()
        changed = {}
        for n, l in self.layers.items():
            n_drop = int(round(rho * l.k))
            if n_drop == 0:
                changed[n] = 0
                continue
            change = (l.delta - self._start[n].to(l.delta.device)).abs()                        # (k,)
            drop_slots = torch.topk(change, n_drop, largest=False).indices
            keep = torch.ones(l.k, dtype=torch.bool, device=l.delta.device)
            keep[drop_slots] = False
            score = self.growth_score(n).clone()                             # (o·i,)
            if not bool((score > 0).any()):                                  # no statistics: regrow at random
                score = torch.rand(score.shape, device=score.device)
            score[l.indices] = -math.inf                                     # active or just pruned: not candidates
            new_idx = torch.topk(score, n_drop).indices
            l.indices[drop_slots] = new_idx
            l.delta[drop_slots] = 0
            if optimizer is not None:
                for v in optimizer.state.get(l.delta, {}).values():
                    if torch.is_tensor(v) and v.shape == l.delta.shape:
                        v[drop_slots] = 0                                     # fresh moments for regrown slots
            changed[n] = n_drop
        self._start = {n: l.delta.detach().clone() for n, l in self.layers.items()}
        self._stats.clear()
        self.history.append({"step": self.t, "drop_fraction": rho, "replaced": sum(changed.values())})
        return changed

    def step(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Advance one optimizer step; at the end of each cycle prune and regrow."""
        self.t += 1
        if self.t % self.update_interval == 0:
            self.prune_regrow(optimizer)
        self._set_sinks()

    def attach(self, optimizer: torch.optim.Optimizer):
        me = weakref.ref(self)

        def hook(opt, args, kwargs):
            s = me()
            if s is not None:
                s.step(opt)

        h = optimizer.register_step_post_hook(hook)
        self._hooks.append(h)
        return h

    def merge(self, model: nn.Module) -> nn.Module:
        """Replace every sparse layer by a dense nn.Linear holding W₀ + scatter(η, φ) (in place)."""
        for n, l in self.layers.items():
            _set_submodule(model, n, l.to_linear())
        for h in self._hooks:
            h.remove()
        return model


def apply_spiel(model: nn.Module, **kwargs) -> SpIEL:
    return SpIEL(model, **kwargs)
