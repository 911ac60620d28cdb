"""Placement search (HybridFlow §6 "auto device mapping"): enumerate placements of the RL roles on a set of
devices, cost each from per-stage costs, pick the fastest.

Two cost sources:
  - profiled: per-stage seconds of one iteration measured on ONE worker (`profile_stages`), scaled to w
    workers as t/w (data parallel over rows) plus a measured per-call dispatch overhead; a placement's
    iteration time follows the controller's order (lmlab.align.hybridflow.controller): generate, then
    old_logp ∥ ref_logp (concurrent only on disjoint workers), update, weight sync. Validated against the
    measured iteration times of the same placements in benchmarks/rl_dataflow.py.
  - analytic (`plan_cluster`, `lmlab align rl --plan "16xH100, actor 7B, critic 7B"`): a FLOP / byte MODEL of
    a GPU cluster, NOT a measurement: forward 2·N·tokens and training 6·N·tokens FLOPs at a fixed model FLOP
    utilisation, decoding bounded by reading the weights (+ KV) from HBM once per step, training memory 16
    bytes/parameter (bf16 weights and grads, fp32 Adam moments and master copy) sharded over the pool,
    weight sync 2·N bytes over the interconnect, colocated offload/reload 2·N bytes per role over PCIe.
    As in the paper, the search is over how many devices each pool gets (colocated = one pool).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Optional

# ------------------------------------------------------------------------------------------ profiled


def predict(stage_s: dict[str, float], pools: dict[str, int], roles: dict[str, tuple[str, int]],
            overhead_s: float = 0.0) -> float:
    """Iteration seconds of a placement from single-worker stage seconds (keys generate, old_logp, ref_logp,
    update, weight_sync; weight_sync is paid once per rollout replica that is not the actor itself)."""
    ap, aw = roles["actor"]
    rp, rw = roles["rollout"]
    fp, fw = roles["ref"]
    gen = stage_s["generate"] / rw
    old = stage_s["old_logp"] / aw
    ref = stage_s["ref_logp"] / fw
    fwd = max(old, ref) if fp != ap else old + ref   # same processes run the two calls one after the other
    upd = stage_s["update"] / aw
    replicas = rw - (aw if rp == ap else 0)
    sync = stage_s.get("weight_sync", 0.0) * max(replicas, 0) / max(rw, 1) if replicas > 0 else 0.0
    # round trips on the critical path: the controller's dispatch (HybridFlow._iteration) sends an iteration as
    # two calls per process when every role sits on the same processes (fused), else rollout, the forward
    # passes, update (+ the weight refresh)
    fused = rp == ap == fp and rw == aw == fw
    calls = 2 if fused else 4 + (1 if replicas > 0 else 0)
    return gen + fwd + upd + sync + overhead_s * calls


def candidate_placements(devices: int) -> list[tuple[str, dict, dict]]:
    """(name, pools, roles) for every colocated (actor on 1..devices workers) and split (a + r = devices)."""
    out = []
    for a in range(1, devices + 1):
        out.append((f"colocated({devices}, actor={a})", {"all": devices},
                    {"actor": ("all", a), "rollout": ("all", devices), "ref": ("all", devices)}))
    for a in range(1, devices):
        r = devices - a
        out.append((f"split(actor={a}, rollout={r})", {"train": a, "gen": r},
                    {"actor": ("train", a), "ref": ("train", a), "rollout": ("gen", r)}))
    return out


def search(stage_s: dict[str, float], devices: int, overhead_s: float = 0.0) -> list[tuple[str, float]]:
    """Every candidate placement on `devices` workers with its predicted seconds, fastest first."""
    res = [(name, predict(stage_s, pools, roles, overhead_s)) for name, pools, roles in candidate_placements(devices)]
    return sorted(res, key=lambda x: x[1])


# ------------------------------------------------------------------------------------------ analytic GPU model
GPUS = {  # dense bf16 FLOP/s, HBM bytes/s, memory bytes (vendor datasheets)
    "H100": (989e12, 3.35e12, 80e9),
    "H200": (989e12, 4.8e12, 141e9),
    "A100": (312e12, 2.0e12, 80e9),
}


@dataclass
class ClusterSpec:
    gpus: int
    gpu: str
    actor: float                 # parameters
    critic: float = 0.0          # 0: no critic (RLOO / GRPO)
    reward: float = 0.0          # 0: rule-based reward
    batch: int = 1024            # sequences per iteration
    prompt: int = 1024           # tokens
    response: int = 1024         # tokens
    epochs: int = 1
    mfu: float = 0.4             # training / forward model FLOP utilisation
    interconnect: float = 50e9   # bytes/s per GPU between pools (InfiniBand)
    pcie: float = 25e9           # bytes/s host<->device (offload/reload)
    gpus_per_node: int = 8


def parse_cluster(text: str) -> ClusterSpec:
    """"16xH100, actor 7B, critic 7B[, reward 7B][, batch 512][, prompt 1024][, response 2048]" -> ClusterSpec."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    m = re.fullmatch(r"(\d+)\s*[x×]\s*([A-Za-z0-9]+)", parts[0]) if parts else None
    if not m:
        raise ValueError(f"--plan {text!r}: start with <count>x<GPU>, e.g. '16xH100, actor 7B, critic 7B'")
    gpu = m.group(2).upper()
    if gpu not in GPUS:
        raise ValueError(f"--plan: unknown GPU {m.group(2)!r}; choose one of: {', '.join(GPUS)}")
    spec = ClusterSpec(int(m.group(1)), gpu, 0.0)
    for p in parts[1:]:
        mm = re.fullmatch(r"(actor|critic|reward)\s+([\d.]+)\s*([BbMm])", p)
        if mm:
            setattr(spec, mm.group(1), float(mm.group(2)) * (1e9 if mm.group(3).upper() == "B" else 1e6))
            continue
        mm = re.fullmatch(r"(batch|prompt|response|epochs)\s+(\d+)", p)
        if mm:
            setattr(spec, mm.group(1), int(mm.group(2)))
            continue
        raise ValueError(f"--plan: cannot read {p!r} (expected e.g. 'actor 7B', 'critic 7B', 'batch 512')")
    if spec.actor <= 0:
        raise ValueError("--plan: the actor's size is required, e.g. 'actor 7B'")
    return spec


def _min_gpus_train(params: float, mem: float) -> int:
    return max(1, int(-(-16 * params // (0.8 * mem))))


def _gen_s(s: ClusterSpec, n: int) -> float:
    """Rollout of the batch on n GPUs: replicas of the smallest tensor-parallel size that holds the weights
    and KV cache; prefill compute-bound, decode bounded by max(weights+KV read, compute) per step."""
    flops, bw, mem = GPUS[s.gpu]
    tp = 1
    kv_per_seq = 2 * 2 * (s.actor ** 0.5) * 0.5 * (s.prompt + s.response) * 1.0   # rough: ~N^0.5 hidden, bf16 K+V
    while tp < n and (2 * s.actor / tp) > 0.6 * mem:
        tp *= 2
    replicas = max(1, n // tp)
    per = s.batch / replicas
    prefill = 2 * s.actor * per * s.prompt / (tp * flops * s.mfu)
    step = max((2 * s.actor + kv_per_seq * per) / (tp * bw), 2 * s.actor * per / (tp * flops * s.mfu))
    return prefill + s.response * step


def _fwd_s(s: ClusterSpec, params: float, n: int) -> float:
    flops = GPUS[s.gpu][0]
    return 2 * params * s.batch * (s.prompt + s.response) / (n * flops * s.mfu)


def _train_s(s: ClusterSpec, params: float, n: int) -> float:
    flops = GPUS[s.gpu][0]
    return 6 * params * s.batch * (s.prompt + s.response) * s.epochs / (n * flops * s.mfu)


@dataclass
class ClusterPlan:
    name: str
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    feasible: bool = True
    why: str = ""


def plan_cluster(spec: ClusterSpec) -> list[ClusterPlan]:
    """Colocated (every role on all GPUs, offload between stages) and every split of the GPUs into an actor
    pool (+ ref), a critic pool (+ reward model) and a rollout pool, in whole nodes where the cluster has
    several nodes; infeasible ones (training memory) listed last with the reason. A MODEL, not a measurement."""
    n, mem = spec.gpus, GPUS[spec.gpu][2]
    plans = []
    # colocated: time-share all n GPUs; offload/reload every role's weights around its stage
    st = {"generate": _gen_s(spec, n), "old_logp": _fwd_s(spec, spec.actor, n), "ref_logp": _fwd_s(spec, spec.actor, n),
          "values": _fwd_s(spec, spec.critic, n) if spec.critic else 0.0,
          "reward": _fwd_s(spec, spec.reward, n) if spec.reward else 0.0,
          "update": _train_s(spec, spec.actor, n) + (_train_s(spec, spec.critic, n) if spec.critic else 0.0)}
    roles = 2 + (spec.critic > 0) + (spec.reward > 0)
    st["offload"] = 2 * (2 * spec.actor + spec.critic * 2 + spec.reward * 2 + 2 * spec.actor) / (n * spec.pcie)
    st["weight_sync"] = 2 * spec.actor / (n * 450e9)       # reshard in place over NVLink
    need = max(_min_gpus_train(spec.actor, mem), _min_gpus_train(spec.critic, mem) if spec.critic else 1)
    plans.append(ClusterPlan("colocated (all roles on all GPUs)", sum(st.values()), st, need <= n,
                             "" if need <= n else f"actor training needs >= {need} GPUs"))
    unit = spec.gpus_per_node if n >= 4 * spec.gpus_per_node else 1   # whole nodes on large clusters
    crit = spec.critic > 0 or spec.reward > 0
    for a in range(unit, n, unit):
        for c in (range(unit, n - a, unit) if crit else [0]):
            r = n - a - c
            if r < 1:
                continue
            st = {"generate": _gen_s(spec, r), "old_logp": _fwd_s(spec, spec.actor, a),
                  "ref_logp": _fwd_s(spec, spec.actor, a)}
            crit_fwd = (_fwd_s(spec, spec.critic, c) if spec.critic else 0.0) + \
                       (_fwd_s(spec, spec.reward, c) if spec.reward else 0.0)
            st["values_reward"] = crit_fwd
            fwd = max(st["old_logp"] + st["ref_logp"], crit_fwd)     # actor pool and critic pool in parallel
            upd_a = _train_s(spec, spec.actor, a)
            upd_c = _train_s(spec, spec.critic, c) if spec.critic else 0.0
            st["update"] = max(upd_a, upd_c)
            st["weight_sync"] = 2 * spec.actor / (min(a, r) * spec.interconnect)
            total = st["generate"] + fwd + st["update"] + st["weight_sync"]
            why = []
            if _min_gpus_train(spec.actor, mem) > a:
                why.append(f"actor training needs >= {_min_gpus_train(spec.actor, mem)} GPUs")
            if spec.critic and _min_gpus_train(spec.critic, mem) > c:
                why.append(f"critic training needs >= {_min_gpus_train(spec.critic, mem)} GPUs")
            if 2 * spec.actor > 0.9 * mem * r:
                why.append("rollout pool cannot hold the weights")
            name = f"split: actor+ref {a}, " + (f"critic{'+reward' if spec.reward else ''} {c}, " if crit else "") + \
                   f"rollout {r} GPUs"
            plans.append(ClusterPlan(name, total, st, not why, "; ".join(why)))
    return sorted(plans, key=lambda p: (not p.feasible, p.seconds))


def format_plan(spec: ClusterSpec, plans: Optional[list[ClusterPlan]] = None, top: int = 6) -> str:
    plans = plans if plans is not None else plan_cluster(spec)
    head = (f"PLACEMENT PLAN — an analytic MODEL (FLOP/byte estimates at MFU {spec.mfu:.0%}), not a measurement\n"
            f"cluster: {spec.gpus} x {spec.gpu}; actor {spec.actor / 1e9:g}B, critic {spec.critic / 1e9:g}B, "
            f"reward model {spec.reward / 1e9:g}B; batch {spec.batch} x ({spec.prompt} prompt + {spec.response} "
            f"response) tokens, {spec.epochs} epoch(s)")
    rows = [f"{'placement':<58} {'est. s/iter':>11}  stages (s)"]
    for p in plans[:top]:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in p.stages.items() if v)
        flag = "" if p.feasible else f"  [infeasible: {p.why}]"
        rows.append(f"{p.name:<58} {p.seconds:>11.1f}  {stages}{flag}")
    best = next((p for p in plans if p.feasible), None)
    tail = f"chosen: {best.name} (~{best.seconds:.1f} s/iteration, modelled)" if best else "no feasible placement"
    return "\n".join([head, *rows, tail])
