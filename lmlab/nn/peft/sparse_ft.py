"""SpIEL: sparse fine-tuning with prune/regrow (Ansell et al., 2024, "Scaling Sparse Fine-Tuning to LLMs").

Notation: o = out_features, i = in_features, k = active entries of one weight (k = density · o·i),
η = flat index into the (o, i) weight, φ = delta values, U = cycle length (steps), γ = accumulation steps,
ρ = drop fraction, t = optimizer steps done.

Each selected weight W₀ (frozen, possibly int8-quantized) gets k (η, φ) pairs; the layer computes

    W = W₀ + scatter(η, φ)          y = x Wᵀ + b

Only φ is trainable, so parameters and optimizer state cost O(k).

SpIEL as published (variant "spiel"; reference: the authors' peft fork, `SftSelector.select_rigl`). Growth
statistics are collected over the γ steps cU+1 … cU+γ and a selection runs right after step cU+γ:
  0. init    — η starts at random; the first selection (t = γ) replaces *every* slot (rate 1), so the
               initial indices are the entries of largest accumulated |gradient| (init="grad");
  1. prune   — the ⌊ρ·k⌋ slots of smallest |φ| (the delta's total magnitude) are dropped;
  2. regrow  — the growth candidates that are not still active, ranked by
       "ag" (SpIEL-AG): |Σ g| of the dense ∂L/∂W accumulated over the window. With `candidates=m` (the
                        reference: m = 1) only the m·k entries of largest |g| at the window's first step are
                        tracked (O(k) memory; active entries may be candidates); `candidates=None` tracks all;
       "ma" (SpIEL-MA): an SM3-style factored second-moment estimate with O(o + i) memory: per step
                        ν = β·min(r_o, c_i) + (1−β)·g², r_o = maxᵢ ν, c_i = maxₒ ν; score = min(r_o, c_i);
                        candidates are the inactive entries;
     the best ⌊ρ·k⌋ fill the pruned slots, smallest |φ| first, with φ = 0. An entry both pruned and regrown
     keeps its slot, value and optimizer state, and that many fewer slots change;
  3. seed    — a regrown slot's Adam moments are set from the window's statistics as if it had been active:
               exp_avg = mean g · (1 − β₁ⁿ), exp_avg_sq = mean g² · (1 − β₂ⁿ), so Adam's bias correction
               turns them into the window means. n is the optimizer's bias-correction count for the entry:
               its per-entry `age` (set to the window length) when the optimizer keeps one, like the
               reference's SftAdamW, else torch Adam(W)'s per-tensor `step`. Other per-slot state is zeroed
               (MA seeds nothing). Micro-batch gradients are summed per step (gradient accumulation).
ρ decays over `total_steps` T as `rate_policy`: "cosine" ρ·½(1 + cos πt/T) (lmlab's default with T; one of
the reference's two policies), "linear" ρ·(1 − t/T) (the reference's default), or "constant" (no T).

Ablation "spiel_cycle_delta" (variant "cycle_delta", lmlab's earlier reading): random initial indices, a
selection at the end of every cycle t = cU from the last γ steps' statistics, prune by the change over the
cycle |φ − φ_cycle_start|, regrow only never-active entries (not those just pruned), zeroed moments.

The slot layout is fixed, so optimizer state follows the indices. Density is exact after every selection.
The fast path (`_SparseDeltaLinearFn`) never keeps the dense W for backward: it rebuilds it when needed and
reduces the transient dense ∂L/∂W to the k active entries (and to the growth statistics), so the persistent
memory is the frozen base + O(k). `naive_sparse_delta_linear` builds W with autograd for reference.
`merge()` returns W₀ + scatter(η, φ) dense.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Iterable, Optional, Union

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


VARIANTS = ("spiel", "cycle_delta")


class SpIEL:
    """Owns the SparseDeltaLinear layers of one model and runs the prune/regrow selections.

    Call `step(optimizer)` after every `optimizer.step()` (or `attach(optimizer)` once, which registers a
    step post-hook doing that). `variant="spiel"` is the published method, "cycle_delta" the ablation.
    """

    def __init__(self, model: nn.Module, density: Optional[float] = None, n_trainable: Optional[int] = None,
                 target_modules: TargetSpec = r".*", exclude: Iterable[str] = (), regrow: str = "ag",
                 update_interval: int = 20, drop_fraction: float = 0.1, accumulation_steps: int = 5,
                 candidates: Union[float, str, None] = "auto",
                 sm3_beta: float = 0.9, total_steps: Optional[int] = None, seed: int = 0,
                 freeze_base: bool = True, variant: str = "spiel", init: Optional[str] = None,
                 rate_policy: Optional[str] = None):
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}; choose one of: {', '.join(VARIANTS)}")
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
        if candidates == "auto":                                 # the reference tracks k candidates; the ablation all
            candidates = 1.0 if variant == "spiel" else None
        if candidates is not None and (isinstance(candidates, str) or candidates <= 0):
            raise ValueError(f"candidates={candidates} must be > 0 (a multiple of each layer's k) or null (dense)")
        init = init or ("grad" if variant == "spiel" else "random")
        if init not in ("grad", "random"):
            raise ValueError(f"init={init!r}; choose grad (first selection replaces every slot) or random")
        rate_policy = rate_policy or ("cosine" if total_steps else "constant")
        if rate_policy not in ("constant", "linear", "cosine"):
            raise ValueError(f"rate_policy={rate_policy!r}; choose constant, linear or cosine")
        if rate_policy != "constant" and not total_steps:
            raise ValueError(f"rate_policy={rate_policy} decays over total_steps; give total_steps")
        self.variant, self.init, self.rate_policy, self.candidates = variant, init, rate_policy, candidates
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
        self._start = {n: l.delta.detach().clone() for n, l in self.layers.items()}  # φ at cycle start (ablation)
        self._stats: dict[str, dict[str, torch.Tensor]] = {}
        self._calls: dict[str, int] = {}              # backward passes seen per layer in this window
        self._window_steps = 0                        # optimizer steps in this window
        self._collecting = False
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
        """Whether the backward of the *next* step (step t+1) feeds growth statistics."""
        if self.regrow == "ma":
            return True
        pos = self.t % self.update_interval          # steps done in this cycle
        if self.variant == "spiel":
            return pos < self.accumulation_steps     # steps cU+1 .. cU+γ
        return pos >= self.update_interval - self.accumulation_steps   # the last γ steps of the cycle

    def _selects_now(self) -> bool:
        if self.variant == "spiel":
            return self.t >= self.accumulation_steps and (self.t - self.accumulation_steps) % self.update_interval == 0
        return self.t % self.update_interval == 0

    def _set_sinks(self) -> None:
        self._collecting = collect = self._phase_collects()
        for n, l in self.layers.items():
            l.grad_sink = self._make_sink(n, l) if collect else None

    def _make_sink(self, name: str, layer: SparseDeltaLinear) -> Callable[[torch.Tensor], None]:
        published = self.variant == "spiel"

        def sink(g: torch.Tensor) -> None:                                   # g: (o, i) dense ∂L/∂W
            s = self._stats.setdefault(name, {})
            self._calls[name] = self._calls.get(name, 0) + 1
            g = g.float()
            if self.regrow == "ma":
                if "row" not in s:
                    s["row"] = torch.zeros(g.shape[0], device=g.device)
                    s["col"] = torch.zeros(g.shape[1], device=g.device)
                est = torch.minimum(s["row"][:, None], s["col"][None, :])   # (o, i) SM3 cover
                nu = self.sm3_beta * est + (1 - self.sm3_beta) * g.square()
                s["row"] = nu.amax(1)
                s["col"] = nu.amax(0)
                return
            flat = g.reshape(-1)
            if self.candidates is not None:
                if "cand" not in s:                                          # first step of the window
                    first = flat.abs()
                    room = flat.numel()
                    if not published:                                        # ablation: active entries are not candidates
                        first = first.index_fill(0, layer.indices, -1.0)
                        room -= layer.k
                    s["cand"] = torch.topk(first, min(max(1, int(self.candidates * layer.k)), room)).indices
                flat = flat.index_select(0, s["cand"])
            if "acc" not in s:
                s["acc"] = torch.zeros_like(flat)
                if published:
                    s["acc_sq"] = torch.zeros_like(flat)
            s["acc"].add_(flat)
            if published:
                s["acc_sq"].addcmul_(flat, flat)
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
        if self.rate_policy == "constant":
            return self.drop_fraction
        x = min(self.t, self.total_steps) / self.total_steps
        if self.rate_policy == "linear":
            return self.drop_fraction * (1 - x)
        return self.drop_fraction * 0.5 * (1 + math.cos(math.pi * x))

    # ------------------------------------------------------------------------------------ the cycle
    @torch.no_grad()
    def prune_regrow(self, optimizer: Optional[torch.optim.Optimizer] = None) -> dict[str, int]:
        """One selection on every layer; returns the number of slots replaced per layer."""
        first = self.variant == "spiel" and self.init == "grad" and self.t == self.accumulation_steps
        rho = 1.0 if first else self.current_drop_fraction()
        select = self._select if self.variant == "spiel" else self._select_cycle_delta
        changed = {n: select(n, l, rho, optimizer) for n, l in self.layers.items()}
        self._start = {n: l.delta.detach().clone() for n, l in self.layers.items()}
        self._stats.clear()
        self._calls.clear()
        self._window_steps = 0
        self.history.append({"step": self.t, "drop_fraction": rho, "replaced": sum(changed.values())})
        return changed

    def _select(self, name: str, l: SparseDeltaLinear, rho: float, optimizer) -> int:
        """Published SpIEL on one layer: prune smallest |φ|, regrow best candidates, seed their moments."""
        n_out = int(rho * l.k)                                               # floor, as the reference
        if n_out == 0:
            return 0
        dev, numel = l.delta.device, l.weight.numel()
        out_slots = torch.topk(l.delta.abs(), n_out, largest=False, sorted=True).indices   # smallest |φ| first
        outgoing = l.indices[out_slots]
        active = torch.zeros(numel, dtype=torch.bool, device=dev)
        active[l.indices] = True
        is_out = torch.zeros(numel, dtype=torch.bool, device=dev)
        is_out[outgoing] = True
        s = self._stats.get(name, {})
        g_sum = g_sq = None
        if self.regrow == "ag" and "acc" in s:
            cand = s["cand"] if "cand" in s else torch.arange(numel, device=dev)
            ok = ~(active & ~is_out)[cand]                                   # not still active
            cand, g_sum, g_sq = cand[ok], s["acc"][ok], s["acc_sq"][ok]
            score = g_sum.abs()
        else:                                                                # MA, or no statistics: inactive entries
            cand = (~active).nonzero().squeeze(1)
            score = self.growth_score(name)[cand]
            if not bool((score > 0).any()):
                score = torch.rand(score.shape, device=dev)
        top = torch.topk(score, min(n_out, cand.numel()), sorted=True).indices
        incoming = cand[top]
        is_in = torch.zeros(numel, dtype=torch.bool, device=dev)
        is_in[incoming] = True
        out_slots = out_slots[~is_in[outgoing]]                             # pruned and regrown: slot stays
        fresh = ~is_out[incoming]
        incoming, top = incoming[fresh], top[fresh]
        out_slots = out_slots[: incoming.numel()]
        l.indices[out_slots] = incoming.to(l.indices.dtype)
        l.delta[out_slots] = 0
        if optimizer is not None:
            self._seed(optimizer, name, l, out_slots, None if g_sum is None else g_sum[top],
                       None if g_sq is None else g_sq[top])
        return int(out_slots.numel())

    def _seed(self, optimizer, name: str, l: SparseDeltaLinear, slots: torch.Tensor,
              g_sum: Optional[torch.Tensor], g_sq: Optional[torch.Tensor]) -> None:
        """Regrown slots' optimizer state: moments from the window's mean g and g², biased for Adam's
        correction (the reference's `update_optimizer` seeding); other per-slot state zeroed."""
        st = optimizer.state.get(l.delta)
        if not st:
            return
        for v in st.values():
            if torch.is_tensor(v) and v.shape == l.delta.shape:
                v[slots] = 0
        betas = next((g.get("betas") for g in optimizer.param_groups if any(p is l.delta for p in g["params"])), None)
        if g_sum is None or betas is None:
            return
        steps = max(self._window_steps, 1)
        mean_g = g_sum / steps
        mean_sq = g_sq * (max(self._calls.get(name, steps), 1) / steps) / steps   # per-step g² under grad accumulation
        age = st.get("age")
        if torch.is_tensor(age) and age.shape == l.delta.shape:              # per-entry bias correction (SftAdamW)
            age[slots] = float(steps)
            n = float(steps)
        else:                                                                # torch Adam(W): one count per tensor
            n = float(st.get("step", steps))
        b1, b2 = betas
        if torch.is_tensor(st.get("exp_avg")):
            st["exp_avg"][slots] = (mean_g * (1 - b1 ** n)).to(st["exp_avg"].dtype)
        for key in ("exp_avg_sq", "max_exp_avg_sq"):
            if torch.is_tensor(st.get(key)) and st[key].shape == l.delta.shape:
                st[key][slots] = (mean_sq * (1 - b2 ** n)).to(st[key].dtype)

    def _select_cycle_delta(self, name: str, l: SparseDeltaLinear, rho: float, optimizer) -> int:
        """The ablation: prune by change over the cycle, regrow never-active entries, zero moments."""
        n_drop = int(round(rho * l.k))
        if n_drop == 0:
            return 0
        change = (l.delta - self._start[name].to(l.delta.device)).abs()                    # (k,)
        drop_slots = torch.topk(change, n_drop, largest=False).indices
        score = self.growth_score(name).clone()                                            # (o·i,)
        if not bool((score > 0).any()):                                                    # no statistics: random
            score = torch.rand(score.shape, device=score.device)
        score[l.indices] = -math.inf                                     # active or just pruned: not candidates
        new_idx = torch.topk(score, n_drop).indices
        l.indices[drop_slots] = new_idx
        l.delta[drop_slots] = 0
        if optimizer is not None:
            for v in optimizer.state.get(l.delta, {}).values():
                if torch.is_tensor(v) and v.shape == l.delta.shape:
                    v[drop_slots] = 0                                     # fresh moments for regrown slots
        return n_drop

    def step(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Advance one optimizer step; run a selection when the schedule says so."""
        if self._collecting:
            self._window_steps += 1
        self.t += 1
        if self._selects_now():
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
