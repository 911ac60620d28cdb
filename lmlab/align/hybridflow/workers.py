"""Worker groups: the roles of an RL iteration as groups of Ray actors, with declared dispatch modes.

Design followed (HybridFlow, Sheng et al. 2024, arXiv:2409.19256; its code is verl, github.com/volcengine/verl):
    - a method of a worker class declares how a call on the *group* reaches its workers and how the answers
      come back (verl/single_controller/base/decorator.py: `register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)`,
      `ONE_TO_ALL`, `RANK_ZERO`); here `register(Dispatch.SPLIT | BROADCAST | RANK_ZERO, Collect.CONCAT | ...)`.
    - workers of a pool are Ray actors placed on the bundles of a placement group, one bundle per worker with
      explicit num_cpus / num_gpus (verl/single_controller/ray/base.py: RayResourcePool.get_placement_groups,
      RayWorkerGroup._create_worker);
    - colocated roles run in ONE process per bundle, one worker class hosting several roles (verl's
      create_colocated_worker_cls fuses classes into one actor); a role's group is the first `world` workers
      of its pool;
    - a data-parallel role runs SPMD inside its group: rank / world / a master address read from rank 0's node
      (verl's _get_master_addr_port), torch.distributed gloo on CPU (NCCL on GPU), gradients all-reduced.

Batches are `Batch` (a dict of tensors sharing dim 0, verl's DataProto in small): SPLIT cuts a batch into
`world` contiguous chunks (rows of one prompt stay together when the split is by prompt) and CONCAT joins
the answers back in rank order, so a gathered batch has the rows in the order a single process has them.

The local backend runs the same worker objects in the calling process (no Ray), for tests and profiling.
"""
from __future__ import annotations

import copy
import os
import socket
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional

import torch


# ------------------------------------------------------------------------------------------ batches
_INLINE = 64 * 1024   # payloads below this travel as bytes inside the call message; above, as one numpy buffer


def _pack(tensors: dict[str, torch.Tensor]) -> tuple[list[tuple], object]:
    """Every tensor's bytes laid end to end in one buffer (16-byte aligned), plus a header of
    (key, dtype name, shape, offset, nbytes). Ray sends a small `bytes` inside the call message (no object
    store, no per-tensor pickling) and a large numpy buffer zero-copy through its object store; a torch
    tensor would go through torch's own pickling (a legacy torch.save per tensor): measured ~1 CPU-ms more
    per round trip of a 4-tensor batch, which is most of the dataflow's overhead on a tiny model."""
    header, parts, off = [], [], 0
    for k, v in tensors.items():
        v = v.detach()
        if v.device.type != "cpu":
            v = v.cpu()
        v = v.contiguous()
        raw = v.reshape(-1).view(torch.uint8)
        n = raw.numel()
        header.append((k, str(v.dtype).removeprefix("torch."), tuple(v.shape), off, n))
        parts.append(raw)
        pad = -n % 16
        if pad:
            parts.append(torch.zeros(pad, dtype=torch.uint8))
        off += n + pad
    flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
    return header, (flat.numpy().tobytes() if off < _INLINE else flat.numpy())


def _unpack(header: list[tuple], data) -> dict[str, torch.Tensor]:
    if isinstance(data, bytes):
        data = bytearray(data)                     # writable, owned
    elif not data.flags.writeable:                 # a zero-copy view of the object store: own the memory
        data = data.copy()
    flat = torch.frombuffer(data, dtype=torch.uint8) if len(data) else torch.empty(0, dtype=torch.uint8)
    return {k: flat[off:off + n].view(getattr(torch, dtype)).view(shape) for k, dtype, shape, off, n in header}


class Tensors(dict):
    """A dict of CPU-movable tensors (a state dict, a list of permutations) that crosses process boundaries
    as numpy buffers (see `_pack`); in one process it is a plain dict."""

    def __reduce__(self):
        return _tensors_from_wire, _pack(self)


def _tensors_from_wire(header: list[tuple], data) -> Tensors:
    return Tensors(_unpack(header, data))


def _batch_from_wire(header: list[tuple], data, meta: dict) -> "Batch":
    return Batch(_unpack(header, data), meta)


@dataclass
class Batch:
    """Tensors that share their first dimension (rows), plus `meta` (plain values, broadcast on split)."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values()))) if self.tensors else 0

    def __reduce__(self):
        return _batch_from_wire, (*_pack(self.tensors), self.meta)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def split(self, n: int, unit: int = 1) -> list["Batch"]:
        """n contiguous chunks; chunk boundaries fall on multiples of `unit` rows (e.g. k samples of a prompt)."""
        groups = len(self) // unit
        if groups < n:
            raise ValueError(f"cannot split {groups} groups of {unit} rows across {n} workers")
        sizes = [(groups // n + (i < groups % n)) * unit for i in range(n)]
        parts = {k: torch.split(v, sizes) for k, v in self.tensors.items()}
        return [Batch({k: parts[k][i] for k in self.tensors}, dict(self.meta)) for i in range(n)]

    @staticmethod
    def concat(parts: list["Batch"]) -> "Batch":
        return Batch({k: torch.cat([p.tensors[k] for p in parts]) for k in parts[0].tensors}, dict(parts[0].meta))

    def union(self, other: "Batch") -> "Batch":
        return Batch({**self.tensors, **other.tensors}, {**self.meta, **other.meta})

    def select(self, *keys: str) -> "Batch":
        return Batch({k: self.tensors[k] for k in keys}, dict(self.meta))

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.tensors.values())


def nbytes(obj: Any) -> int:
    """Tensor payload bytes of a Batch, a tensor, or a (nested) dict/list of them."""
    if isinstance(obj, Batch):
        return obj.nbytes
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


# ------------------------------------------------------------------------------------------ dispatch
class Dispatch(Enum):
    SPLIT = "split"          # the first Batch argument is cut into `world` chunks, one per worker
    BROADCAST = "broadcast"  # every worker gets the same arguments
    RANK_ZERO = "rank_zero"  # only rank 0 runs


class Collect(Enum):
    CONCAT = "concat"        # Batch answers joined in rank order
    FIRST = "first"          # rank 0's answer
    LIST = "list"            # every worker's answer


def register(dispatch: Dispatch = Dispatch.BROADCAST, collect: Collect = Collect.LIST, unit: str = "") -> Callable:
    """Declare how a worker method is called on a group (cf. verl's `@register(dispatch_mode=...)`).
    `unit`: a Batch meta key whose value is the number of rows that must stay on one worker (SPLIT)."""
    def deco(fn):
        fn._dispatch = (dispatch, collect, unit)
        return fn
    return deco


def dispatch_of(cls, method: str) -> tuple[Dispatch, Collect, str]:
    fn = getattr(cls, method, None)
    if fn is None or not hasattr(fn, "_dispatch"):
        raise AttributeError(f"{cls.__name__}.{method} is not a registered group method")
    return fn._dispatch


PEER_DEATH_WAIT_S = 30.0   # how long a failed call waits for its other workers' answers before blaming its own error


def _ray_get_all(futures: list) -> list:
    """`ray.get` of one group call's futures. When one worker process dies, a survivor inside a collective
    (gloo all-reduce) fails first with a connection error; that RayTaskError is a symptom. Wait (bounded) for
    the call's other answers and raise the RayActorError of the dead worker instead, so the controller sees a
    lost worker and restarts from its checkpoint."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return ray.get(futures)
    except RayTaskError as symptom:
        ray.wait(futures, num_returns=len(futures), timeout=PEER_DEATH_WAIT_S)
        for f in futures:
            try:
                ray.get(f, timeout=0)
            except RayActorError:
                raise
            except Exception:   # this worker's own error, or no answer yet
                pass
        raise symptom


class Pending:
    """Answers of one group call: futures (Ray) or values (local); `.get()` collects them."""

    def __init__(self, futures: list, collect: Collect, ray_backend: bool, sent_bytes: int, t0: float):
        self.futures, self.collect, self.ray, self.sent_bytes, self.t0 = futures, collect, ray_backend, sent_bytes, t0
        self.recv_bytes = 0
        self.seconds = 0.0

    def get(self):
        if self.ray:
            outs = _ray_get_all(self.futures)
        else:
            outs = self.futures
        self.seconds = time.perf_counter() - self.t0
        self.recv_bytes = sum(nbytes(o) for o in outs)
        if self.collect is Collect.CONCAT:
            return Batch.concat(outs)
        if self.collect is Collect.FIRST:
            return outs[0]
        return outs


class WorkerGroup:
    """The first `world` workers of a pool, seen as one role (ranks 0..world-1)."""

    def __init__(self, role: str, workers: list, cls: type, ray_backend: bool):
        self.role, self.workers, self.cls, self.ray = role, workers, cls, ray_backend

    @property
    def world(self) -> int:
        return len(self.workers)

    def call(self, method: str, *args, **kwargs) -> Pending:
        """Dispatch `method` by its declared mode; returns at once (Ray futures), `.get()` waits."""
        dispatch, collect, unit = dispatch_of(self.cls, method)
        t0 = time.perf_counter()
        targets = self.workers[:1] if dispatch is Dispatch.RANK_ZERO else self.workers
        if dispatch is Dispatch.SPLIT:
            bi = next(i for i, a in enumerate(args) if isinstance(a, Batch))
            u = int(args[bi].meta.get(unit, 1)) if unit else 1
            chunks = args[bi].split(len(targets), u)
            per = [args[:bi] + (c,) + args[bi + 1:] for c in chunks]
            sent = sum(c.nbytes for c in chunks)
        else:
            a = args
            sent = nbytes(args) * len(targets)
            if self.ray and len(targets) > 1 and sent:
                import ray   # put a broadcast payload once; each worker fetches it from the object store

                a = tuple(ray.put(x) if nbytes(x) else x for x in args)
            per = [a] * len(targets)
        if self.ray:
            futs = [getattr(w, method).remote(*p, **kwargs) for w, p in zip(targets, per)]
        else:
            futs = [getattr(w, method)(*p, **kwargs) for w, p in zip(targets, per)]
        return Pending(futs, collect, self.ray, sent, t0)

    def same_processes(self, other: "WorkerGroup") -> bool:
        """The same worker processes in the same order (roles colocated with equal worlds): then worker i's
        chunk of a SPLIT by prompt is the same rows for both groups (see `Batch.split`)."""
        return self.world == other.world and all(a is b for a, b in zip(self.workers, other.workers))


# ------------------------------------------------------------------------------------------ placement
@dataclass
class Placement:
    """Pools of workers (one process per bundle) and the roles they host.

    pools: {pool: workers}; roles: {role: (pool, world)} for role in actor, rollout, ref; a role uses the first
    `world` workers of its pool, and roles of the same pool share those processes (colocated). resources:
    extra custom resources each bundle of a pool asks for (e.g. a node label of a multi-node cluster)."""

    name: str
    pools: dict[str, int]
    roles: dict[str, tuple[str, int]]
    cpus_per_worker: float = 0.25
    gpus_per_worker: float = 0.0
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    strategy: str = "PACK"

    def __post_init__(self):
        for role in ("actor", "rollout", "ref"):
            if role not in self.roles:
                raise ValueError(f"placement {self.name}: role {role!r} has no pool")
        for role, (pool, world) in self.roles.items():
            if pool not in self.pools:
                raise ValueError(f"placement {self.name}: role {role} names unknown pool {pool!r}")
            if not 1 <= world <= self.pools[pool]:
                raise ValueError(f"placement {self.name}: role {role} world={world} must be in 1..{self.pools[pool]}")

    def hosted(self, pool: str, index: int) -> dict[str, tuple[int, int]]:
        """{role: (rank, world)} of the worker `index` of `pool`."""
        return {r: (index, w) for r, (p, w) in self.roles.items() if p == pool and index < w}

    @property
    def colocated(self) -> bool:
        return self.roles["actor"][0] == self.roles["rollout"][0]


def colocated(workers: int = 2, actor: int = 1, **kw) -> Placement:
    """All roles on one pool: rollout and ref on every worker, the actor on the first `actor` of them."""
    return Placement("colocated", {"all": workers}, {"actor": ("all", actor), "rollout": ("all", workers),
                                                      "ref": ("all", workers)}, **kw)


def split(actor: int = 1, rollout: int = 2, **kw) -> Placement:
    """Disjoint pools: actor and ref on `train` (actor workers), rollout on `gen` (rollout workers)."""
    return Placement("split", {"train": actor, "gen": rollout}, {"actor": ("train", actor), "ref": ("train", actor),
                                                                   "rollout": ("gen", rollout)}, **kw)


# ------------------------------------------------------------------------------------------ worker
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class RoleWorker:
    """One process of a pool, hosting the roles the placement gives it (actor, rollout, ref).

    The actor holds the policy and its optimizer (and, for PPO, the critic: lmlab's PPO value head shares the
    policy's backbone, so critic.values comes out of the actor's forward); the rollout samples with the
    KV-cache sampler of lmlab.align.hybridflow.sampling; the ref scores log-probs. When the actor and the
    rollout share a process the rollout reads the actor's module in place (the hybrid engine: no weight
    copy); otherwise it keeps a replica that `set_weights` refreshes after each update."""

    def __init__(self, pool: str = "", index: int = 0, threads: int = 1, device: str = "cpu"):
        torch.set_num_threads(threads)
        self.pool, self.index, self.device = pool, index, torch.device(device)
        self.roles: dict[str, tuple[int, int]] = {}
        self.dist = False
        self.timings: dict[str, float] = {}
        self._cpu0 = time.process_time()

    # -- identity / SPMD set-up
    def info(self) -> dict:
        node = ""
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except Exception:       # local backend without ray
            pass
        return {"pid": os.getpid(), "node": node, "pool": self.pool, "index": self.index, "roles": dict(self.roles)}

    def master_address(self) -> tuple[str, int]:
        try:
            import ray

            ip = ray.util.get_node_ip_address()
        except Exception:
            ip = "127.0.0.1"
        return ip, _free_port()

    def init_dist(self, addr: str, port: int, rank: int, world: int) -> None:
        """Join the actor's data-parallel process group (gloo on CPU, NCCL on GPU)."""
        import torch.distributed as dist

        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if dist.is_initialized():        # a new training on the same processes: a fresh group
            dist.destroy_process_group()
        dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world)
        self.dist = True

    # -- models
    def load(self, roles: dict[str, tuple[int, int]], policy, ref, cfg: dict, state: Optional[dict] = None) -> None:
        """Build this process's roles. policy/ref: modules (copied); state: {"model", "optim"} to resume from."""
        self.roles, self.cfg = dict(roles), dict(cfg)
        self.actor = self.opt = self.ref = self.rollout = None
        if "actor" in roles:
            self.actor = copy.deepcopy(policy).to(self.device)
            if state is not None:
                self.actor.load_state_dict(state["model"])
            self.opt = torch.optim.AdamW([p for p in self.actor.parameters() if p.requires_grad], lr=cfg["lr"],
                                         weight_decay=0.0)
            if state is not None and state.get("optim") is not None:
                self.opt.load_state_dict(state["optim"])
        if "rollout" in roles:
            if self.actor is not None:
                self.rollout = self.actor                   # hybrid engine: same weights, no copy
            else:
                self.rollout = copy.deepcopy(policy).to(self.device)
                if state is not None:
                    self.rollout.load_state_dict(state["model"])
        if "ref" in roles:
            self.ref = copy.deepcopy(ref).to(self.device).eval()

    def _timed(self, key: str, t0: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def _offload(self, keep: str) -> None:
        """Time-share the device: keep `keep`'s module on it, move the others (and the optimizer) to the host.
        On a CPU-only worker the host is the device and nothing moves."""
        if self.device.type == "cpu":
            return
        t0 = time.perf_counter()
        mods = {"actor": self.actor, "rollout": self.rollout, "ref": self.ref}
        for name, m in mods.items():
            if m is not None and not (m is mods[keep]):
                m.to("cpu")
        if mods[keep] is not None:
            mods[keep].to(self.device)
        if self.opt is not None:
            dev = self.device if keep == "actor" else torch.device("cpu")
            for st in self.opt.state.values():
                for k, v in st.items():
                    if isinstance(v, torch.Tensor):
                        st[k] = v.to(dev)
        self._timed("offload", t0)

    # -- rollout
    @register(Dispatch.SPLIT, Collect.CONCAT, unit="")
    def generate(self, batch: Batch, seed: int) -> Batch:
        from lmlab.align.hybridflow.sampling import seeded_sample

        self._offload("rollout")
        c = self.cfg
        ro = seeded_sample(self.rollout, batch["prompts"].to(self.device), c["max_new_tokens"], c["samples_per_prompt"],
                           c["temperature"], c["eos_id"], seed, batch["prompt_index"])
        return Batch({"tokens": ro.tokens.cpu(), "response_mask": ro.response_mask.cpu(),
                      "logprobs": ro.logprobs.cpu()}, {"prompt_len": ro.prompt_len})

    # -- actor / critic / ref forward passes
    @register(Dispatch.SPLIT, Collect.CONCAT, unit="samples_per_prompt")
    def old_logp(self, batch: Batch, with_values: bool) -> Batch:
        from lmlab.align.ppo import response_logp

        self._offload("actor")
        tp, tokens, temp = batch.meta["prompt_len"], batch["tokens"].to(self.device), self.cfg["temperature"]
        with torch.no_grad():
            if with_values:
                lp, v = self.actor.logp_and_values(tokens, tp, temp)
                return Batch({"old_logp": lp.cpu(), "old_values": v.cpu()})
            return Batch({"old_logp": response_logp(self.actor, tokens, tp, temp).cpu()})

    @register(Dispatch.SPLIT, Collect.CONCAT, unit="samples_per_prompt")
    def ref_logp(self, batch: Batch) -> Batch:
        from lmlab.align.ppo import response_logp

        self._offload("ref")
        with torch.no_grad():
            lp = response_logp(self.ref, batch["tokens"].to(self.device), batch.meta["prompt_len"],
                               self.cfg["temperature"])
        return Batch({"ref_logp": lp.cpu()})

    # -- actor update (SPMD over the actor group)
    @register(Dispatch.BROADCAST, Collect.LIST)
    def update(self, batch: Batch, perms: "Tensors", critic: bool) -> dict:
        """PPO-clip epochs over minibatches in the order `perms` gives (the controller draws them from the
        loop's generator, as rl_train does). Rank r of W takes rows r::W of each minibatch; its loss is
        weighted by its share of the minibatch's mask so that the all-reduced (summed) gradient is the
        gradient of the whole minibatch's masked mean. perms: {"0": epoch 0's permutation, "1": ...}.
        Returns the loss statistics (the same on every rank) and, under "timings", this process's
        `pop_timings()`, so the actor's processes report without a call of their own."""
        from torch import nn

        from lmlab.align.ppo import ppo_policy_loss, response_logp, value_loss

        import torch.distributed as dist

        self._offload("actor")
        rank, world = self.roles["actor"]
        c, tp = self.cfg, batch.meta["prompt_len"]
        d = {k: v.to(self.device) for k, v in batch.tensors.items()}
        mask = d["mask"]
        b = mask.shape[0]
        mb = max(1, b // c["minibatches"])
        stats: dict = {"clipfrac": [], "approx_kl": [], "pg_loss": [], "vf_loss": []}
        params = [p for p in self.actor.parameters() if p.requires_grad]
        for e in range(len(perms)):
            perm = perms[str(e)]
            for s in range(0, b, mb):
                i_all = perm[s:s + mb]
                i = i_all[rank::world]
                if len(i) == 0:
                    raise ValueError(f"actor world {world} exceeds minibatch size {len(i_all)}")
                w = mask[i].sum().clamp(min=1) / mask[i_all].sum().clamp(min=1) if world > 1 else 1.0
                if critic:
                    logp, values = self.actor.logp_and_values(d["tokens"][i], tp, c["temperature"])
                    pg, st = ppo_policy_loss(logp, d["old_logp"][i], d["adv"][i], mask[i], c["clip_eps"])
                    vl = value_loss(values, d["old_values"][i], d["returns"][i], mask[i], c["clip_eps"])
                    loss = pg + c["vf_coef"] * vl
                    stats["vf_loss"].append(vl.item())
                else:
                    logp = response_logp(self.actor, d["tokens"][i], tp, c["temperature"])
                    pg, st = ppo_policy_loss(logp, d["old_logp"][i], d["adv"][i], mask[i], c["clip_eps"])
                    loss = pg
                self.opt.zero_grad()
                (loss * w).backward()
                if world > 1:
                    for p in params:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                if c["max_grad_norm"]:
                    nn.utils.clip_grad_norm_(self.actor.parameters(), c["max_grad_norm"])
                self.opt.step()
                stats["pg_loss"].append(pg.item())
                stats["clipfrac"].append(st["clipfrac"])
                stats["approx_kl"].append(st["approx_kl"])
        return {**{k: sum(v) / len(v) for k, v in stats.items() if v}, "timings": self.pop_timings()}

    # -- fused calls: consecutive stages of an iteration in one call, where every role is this process
    def _stage(self, name: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self._timed(name, t0)
        return out

    @register(Dispatch.SPLIT, Collect.CONCAT, unit="")
    def rollout_and_logp(self, batch: Batch, seed: int, with_values: bool) -> Batch:
        """generate, then old_logp and ref_logp on the rows it made: three stages in one call, for a process
        that hosts the rollout, the actor and the ref of its chunk (the colocated hybrid engine). The same
        methods run in the same order as three calls would run them; each stage's seconds are kept for
        `pop_timings`."""
        ro = self._stage("generate", self.generate, batch, seed)
        old = self._stage("old_logp", self.old_logp, ro, with_values)
        return ro.union(old).union(self._stage("ref_logp", self.ref_logp, ro))

    def update_and_rollout(self, batch: Batch, perms: "Tensors", critic: bool, nxt: Optional[Batch], seed: int,
                           with_values: bool) -> dict:
        """`update`, then (nxt given) `rollout_and_logp` of the next iteration on this process's chunk `nxt`:
        the rollout reads the weights the update just wrote (on-policy), one call instead of two. Returns
        update's answer plus its seconds ("seconds") and the next rollout's rows ("next", or None)."""
        t0 = time.perf_counter()
        out = {**self.update(batch, perms, critic), "seconds": time.perf_counter() - t0}
        out["next"] = self.rollout_and_logp(nxt, seed, with_values) if nxt is not None else None
        return out

    # -- weights
    @register(Dispatch.RANK_ZERO, Collect.FIRST)
    def get_weights(self) -> Tensors:
        return Tensors({k: v.detach().cpu().clone() for k, v in self.actor.state_dict().items()})

    @register(Dispatch.BROADCAST, Collect.LIST)
    def set_weights(self, sd: dict[str, torch.Tensor]) -> float:
        """Refresh a rollout replica (no-op where the rollout is the actor itself). Returns seconds spent."""
        t0 = time.perf_counter()
        if self.rollout is not None and self.rollout is not self.actor:
            self.rollout.load_state_dict(sd)
        return time.perf_counter() - t0

    @register(Dispatch.RANK_ZERO, Collect.FIRST)
    def checkpoint_state(self) -> dict:
        # plain dicts: the controller torch.saves this, and torch.load(weights_only=True) takes no Tensors
        return {"model": dict(self.get_weights()), "optim": copy.deepcopy(self.opt.state_dict())}

    @register(Dispatch.BROADCAST, Collect.LIST)
    def pop_timings(self) -> dict[str, float]:
        """Seconds spent offloading since the last call, and this process's CPU seconds (cpu_workers)."""
        now = time.process_time()
        t, self.timings = {**self.timings, "cpu_workers": now - self._cpu0}, {}
        self._cpu0 = now
        return t
