"""The single controller: one RL iteration written as a dataflow over worker groups.

    batch = rollout.generate(prompts)                                 # SPLIT over the rollout group
    old   = actor.old_logp(batch)   (+ critic.values for PPO)         # SPLIT over the actor group  } futures:
    ref   = ref.logp(batch)                                           # SPLIT over the ref group    } these three
    score = reward.score(batch)                                       # rule-based: on the controller } overlap
    adv   = advantages(score, old, ref)                               # on the controller (as verl's driver does)
    actor.update(batch + adv)                                         # BROADCAST, SPMD inside the actor group
    rollout.set_weights(actor.get_weights())                          # weight sync through the object store

Every stage's wall time and tensor bytes moved (sent to workers + returned) are recorded per iteration,
next to the metrics `rl_train` logs. The advantage and loss math is not written here: it calls the functions
rl_train calls (lmlab.align.ppo: kl_shaped_rewards, gae, masked_whiten, the algorithm's group_advantages,
ppo_policy_loss, value_loss), in the same order, and draws from the loop's generator exactly as rl_train
does with `set_sampler(row_seeded_sample)` (prompts, one rollout seed, one permutation per epoch), so one
iteration here and one in rl_train give the same parameters (tests/test_hybridflow*.py).

Overlap between iterations: PPO, RLOO and GRPO as lmlab writes them are on-policy (the samples of iteration
k+1 must come from the weights after update k), so no rollout k+1 ever *runs* before update k and its weight
sync. With `pipeline=True` (the default, Ray only) the controller *sends* rollout k+1 right after update k and
the weight refresh, before their answers come back: Ray runs one caller's calls to an actor in the order they
were sent, so every rollout process runs it after its own actor's update (colocated) or after the refresh of
its replica (split). That takes one round trip and the controller's bookkeeping off the critical path, with
the same samples (tests/test_hybridflow_ray.py: several iterations equal rl_train's). Where every role is on
the same processes (colocated with equal worlds: the hybrid engine), the stages go to each process as two calls
instead of five: `rollout_and_logp` (generate, old_logp, ref_logp in that order) and `update_and_rollout`
(update k, then the rollout of k + 1 with the prompts and seed rl_train would draw next); the worker times each
stage, so the metrics keep their per-stage seconds. At a tiny model a Ray call costs more than a stage (about
1-2.5 ms of latency and 0.7 CPU-ms, benchmarks/RESULTS.md), so the number of calls per iteration is the
dataflow's overhead. What overlaps inside an iteration elsewhere: old_logp, ref and reward run concurrently
once the rollout is back (on disjoint workers in the split placement).

Fault handling: after every `checkpoint_every` iterations the controller keeps a checkpoint (actor weights,
optimizer, the loop's generator, KL coefficient, history; written atomically to `checkpoint_dir` when set).
If a worker dies mid-iteration (a RayActorError), every group is torn down and rebuilt, the actor resumes
from the last checkpoint, the lost iterations are run again, and a {"event": "restart"} record goes into the
metrics. Row-seeded sampling makes the rerun draw the same samples, so a restarted run ends with the same
weights as an uninterrupted one.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from lmlab.align.hybridflow.sampling import draw_seed
from lmlab.align.hybridflow.workers import Batch, Collect, Pending, Placement, RoleWorker, Tensors, WorkerGroup, colocated
from lmlab.io import atomic_file


def _ray_errors() -> tuple:
    try:
        from ray.exceptions import RayActorError, WorkerCrashedError

        return (RayActorError, WorkerCrashedError)
    except ImportError:   # local backend without ray installed
        return ()


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, **kw) -> None:
    """Connect to `address` (an existing cluster) or start a private local one: no dashboard, its own temp
    dir (so concurrent local clusters on one machine do not find each other)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, **kw)
        return
    kw.setdefault("include_dashboard", False)
    kw.setdefault("_temp_dir", tempfile.mkdtemp(prefix="lmlab_ray_"))
    ray.init(num_cpus=num_cpus, **kw)


class HybridFlow:
    """Worker pools of a Placement on Ray (`backend="ray"`) or in this process (`backend="local"`), and the
    controller loop that drives them (`train`). Pools start once (`start`) and can run several trainings."""

    def __init__(self, placement: Optional[Placement] = None, backend: str = "ray", threads: int = 1,
                 device: str = "cpu", checkpoint_dir: Optional[str | Path] = None, checkpoint_every: int = 1,
                 max_restarts: int = 3, pipeline: bool = True):
        if backend not in ("ray", "local"):
            raise ValueError(f"backend={backend!r}: choose ray or local")
        self.placement = placement or colocated()
        self.backend, self.threads, self.device = backend, threads, device
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_every, self.max_restarts = checkpoint_every, max_restarts
        self.pipeline = pipeline
        self.pools: dict[str, list] = {}
        self._pgs: dict = {}
        self.restarts = 0

    # ------------------------------------------------------------------------------ pools and groups
    def start(self, wait: bool = True) -> "HybridFlow":
        """Create every pool's workers (Ray: a placement group per pool, one actor per bundle). wait=False
        returns while the worker processes start (several flows can start together); `ready()` waits."""
        if self.backend == "local":
            self.pools = {p: [RoleWorker(p, i, self.threads, self.device) for i in range(n)]
                          for p, n in self.placement.pools.items()}
            return self
        import ray

        if not ray.is_initialized():
            init_ray()
        for pool in self.placement.pools:
            self._start_pool(pool)
        return self.ready() if wait else self

    def _start_pool(self, pool: str) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pl, n = self.placement, self.placement.pools[pool]
        bundle = {"CPU": pl.cpus_per_worker, **({"GPU": pl.gpus_per_worker} if pl.gpus_per_worker else {}),
                  **pl.resources.get(pool, {})}
        pg = placement_group([dict(bundle) for _ in range(n)], strategy=pl.strategy)
        self._pgs[pool] = pg
        cls = ray.remote(RoleWorker)
        self.pools[pool] = [   # task events feed Ray's state API / dashboard: ~6 % of a call's CPU, unused here
            cls.options(num_cpus=pl.cpus_per_worker, num_gpus=pl.gpus_per_worker, max_restarts=0,
                        enable_task_events=False,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i))
            .remote(pool, i, self.threads, self.device) for i in range(n)]

    def ready(self) -> "HybridFlow":
        """Wait until every worker answers."""
        if self.backend == "ray":
            import ray

            ray.get([w.info.remote() for ws in self.pools.values() for w in ws])
        return self

    def _restart_dead_pools(self, timeout: float = 30.0) -> list[str]:
        """Rebuild the pools that have a dead worker (a pool's processes host its roles together)."""
        import ray

        dead = []
        for pool, ws in self.pools.items():
            try:
                ray.get([w.info.remote() for w in ws], timeout=timeout)
            except Exception:           # RayActorError / GetTimeoutError: this pool lost a worker
                dead.append(pool)
        for pool in dead:
            self._stop_pool(pool)
            self._start_pool(pool)
        self.ready()
        return dead

    def use(self, placement: Placement) -> "HybridFlow":
        """Run later trainings with `placement`'s roles on the same started pools (same pool names and sizes)."""
        if self.pools and placement.pools != self.placement.pools:
            raise ValueError(f"placement {placement.name}: pools {placement.pools} differ from the started "
                             f"{self.placement.pools}")
        self.placement = placement
        return self

    def group(self, role: str) -> WorkerGroup:
        pool, world = self.placement.roles[role]
        return WorkerGroup(role, self.pools[pool][:world], RoleWorker, self.backend == "ray")

    def workers(self):
        return [w for ws in self.pools.values() for w in ws]

    def _all(self, method: str, *args) -> list:
        """Call `method` on every worker of every pool (each process once)."""
        ws = self.workers()
        if self.backend == "local":
            return [getattr(w, method)(*args) for w in ws]
        import ray

        return ray.get([getattr(w, method).remote(*args) for w in ws])

    def info(self) -> list[dict]:
        return self._all("info")

    def _stop_pool(self, pool: str) -> None:
        import ray

        for w in self.pools.pop(pool, []):
            try:
                ray.kill(w)
            except Exception:      # already dead
                pass
        pg = self._pgs.pop(pool, None)
        if pg is not None:
            try:
                ray.util.remove_placement_group(pg)
            except Exception:
                pass

    def shutdown(self) -> None:
        if self.backend == "ray":
            for pool in list(self.pools):
                self._stop_pool(pool)
        self.pools, self._pgs = {}, {}

    def _load(self, policy, ref, cfg: dict, state: Optional[dict]) -> None:
        """Build every worker's roles; join the actor's process group when it is data-parallel."""
        pl = self.placement
        calls = []
        for pool, ws in self.pools.items():
            for i, w in enumerate(ws):
                calls.append((w, pl.hosted(pool, i)))
        if self.backend == "local":
            for w, roles in calls:
                w.load(roles, policy, ref, cfg, state)
        else:
            import ray

            p_ref, r_ref, s_ref = ray.put(policy), ray.put(ref), ray.put(state)
            ray.get([w.load.remote(roles, p_ref, r_ref, cfg, s_ref) for w, roles in calls])
        actor = self.group("actor")
        if actor.world > 1:
            if self.backend == "local":
                raise ValueError("a data-parallel actor (world > 1) needs the ray backend")
            import ray

            addr, port = ray.get(actor.workers[0].master_address.remote())
            ray.get([w.init_dist.remote(addr, port, r, actor.world) for r, w in enumerate(actor.workers)])

    # ------------------------------------------------------------------------------ controller loop
    def train(self, policy: nn.Module, ref: nn.Module, prompt_fn: Callable, reward_fn: Callable, cfg,
              baseline_fn: Optional[Callable] = None, log: Optional[Callable[[dict], None]] = None,
              hook: Optional[Callable[[str, int, "HybridFlow"], None]] = None) -> list[dict]:
        """rl_train's contract (same arguments, same metrics, `policy` holds the trained weights at the end),
        run as a dataflow. hook(stage, iteration, self) is called before each stage (tests kill workers)."""
        run = self.session(policy, ref, prompt_fn, reward_fn, cfg, baseline_fn, log, hook)
        while len(run.history) < cfg.iterations:
            run.step()
        return run.finish()

    def session(self, policy, ref, prompt_fn, reward_fn, cfg, baseline_fn=None, log=None, hook=None) -> "Session":
        """Load the models into the workers and return a Session that runs one iteration per `step()`."""
        return Session(self, policy, ref, prompt_fn, reward_fn, cfg, baseline_fn, log, hook)

    def _checkpoint(self, it: int, g_state: torch.Tensor, klc, history, initial: Optional[nn.Module] = None) -> dict:
        """g_state: the loop generator's state after iteration `it`'s own draws (before any draw for it + 1)."""
        if initial is not None:
            state = {"model": {k: v.detach().clone() for k, v in initial.state_dict().items()}, "optim": None}
        else:
            state = self.group("actor").call("checkpoint_state").get()
        ck = {"iter": it, "state": state, "g": g_state, "kl_coef": klc.value, "history_len": len(history)}
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.checkpoint_dir / "dataflow_ckpt.pt") as tmp:
                torch.save(ck, tmp)
        return ck

    def _read_checkpoint(self) -> Optional[dict]:
        if self.checkpoint_dir is None or not (self.checkpoint_dir / "dataflow_ckpt.pt").is_file():
            return None
        return torch.load(self.checkpoint_dir / "dataflow_ckpt.pt", weights_only=True)

    def _draw(self, it, prompt_fn, cfg, g, hook) -> tuple[Batch, int]:
        """Iteration `it`'s prompts and rollout seed, drawn from the loop's generator (as rl_train draws them)."""
        if hook:
            hook("generate", it, self)
        prompts = prompt_fn(cfg.prompts_per_iter, g)
        return Batch({"prompts": prompts, "prompt_index": torch.arange(len(prompts))}), draw_seed(g)

    def _fused(self) -> bool:
        """Every role on the same processes (colocated, equal worlds), on Ray: an iteration's stages can go
        to the workers as one call (rollout + both forward passes) plus one (update + the next rollout)."""
        ro = self.group("rollout")
        return self.backend == "ray" and ro.same_processes(self.group("actor")) and ro.same_processes(self.group("ref"))

    def _iteration(self, it, algo, prompt_fn, reward_fn, baseline_fn, cfg, g, klc, hook,
                   gen: Optional[dict] = None) -> tuple[dict, Optional[dict], torch.Tensor]:
        """One iteration. gen: its rollout, already sent by the previous iteration (see `pipeline`).
        Returns (metrics, the next iteration's rollout if already sent, the loop generator's state after this
        iteration's own draws)."""
        from lmlab.align.ppo import gae, kl_shaped_rewards, masked_whiten

        rollout, actor, refg = self.group("rollout"), self.group("actor"), self.group("ref")
        fused = self._fused()
        k = cfg.samples_per_prompt
        t: dict[str, float] = {}
        nb: dict[str, int] = {}

        def stage(name):
            if hook:
                hook(name, it, self)

        def done(name, pend, out):
            t[f"t_{name}"] = pend.seconds
            nb[f"bytes_{name}"] = pend.sent_bytes + pend.recv_bytes
            return out

        t0 = gen["t0"] if gen is not None else time.perf_counter()
        if gen is None:
            batch, seed = self._draw(it, prompt_fn, cfg, g, hook)
            if fused:
                stage("logp")
                gen = {"pend": rollout.call("rollout_and_logp", batch, seed, algo.critic)}
            else:
                gen = {"pend": rollout.call("generate", batch, seed)}
        if "ready" in gen:           # fused and pipelined: the rows came back with the previous update's answer
            ro, nb["bytes_generate"] = gen["ready"], gen["bytes"]
        else:
            pend = gen["pend"]
            ro = done("rollout_and_logp" if fused else "generate", pend, pend.get())
        ro.meta["samples_per_prompt"] = k
        tp = ro.meta["prompt_len"]
        mask = ro["response_mask"].float()
        if not fused:               # independent stages: launch both forward passes, score while they run
            stage("logp")
            fwd = ro.select("tokens")
            p_old = actor.call("old_logp", fwd, algo.critic)
            p_ref = refg.call("ref_logp", fwd)
        t1 = time.perf_counter()
        rows_prompts, responses = ro["tokens"][:, :tp], ro["tokens"][:, tp:]
        with torch.no_grad():
            raw = reward_fn(rows_prompts, responses).float()
            score = raw - baseline_fn(rows_prompts) if baseline_fn is not None else raw
        t["t_reward"] = time.perf_counter() - t1
        if fused:
            old, refo = ro, ro
        else:
            old = done("old_logp", p_old, p_old.get())
            refo = done("ref_logp", p_ref, p_ref.get())
        t2 = time.perf_counter()
        old_logp, ref_logp = old["old_logp"], refo["ref_logp"]
        with torch.no_grad():                       # rl_train's advantage block, same calls, same order
            if algo.critic:
                old_values = old["old_values"]
                rewards, kl = kl_shaped_rewards(score, old_logp, ref_logp, mask, klc.value)
                adv, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
                if cfg.whiten_advantages and algo.whiten:
                    adv = masked_whiten(adv, mask) * mask
            else:
                kl = (old_logp - ref_logp) * mask
                seq_r = (score - klc.value * kl.sum(1)).view(-1, k)
                adv = algo.group_advantages(seq_r).view(-1, 1) * mask
                if cfg.whiten_advantages and algo.whiten:
                    adv = masked_whiten(adv, mask) * mask
        t["t_advantage"] = time.perf_counter() - t2
        b = ro["tokens"].shape[0]
        perms = Tensors({str(e): torch.randperm(b, generator=g) for e in range(cfg.ppo_epochs)})
        g_state = g.get_state()                     # this iteration's draws end here
        train = Batch({"tokens": ro["tokens"], "mask": mask, "old_logp": old_logp, "adv": adv}, {"prompt_len": tp})
        if algo.critic:
            train.tensors.update(old_values=old_values, returns=returns)
        more = self.pipeline and self.backend == "ray" and it + 1 < cfg.iterations
        nxt = None
        stage("update")
        if fused:
            # update k and the rollout of k + 1 in one call per process: the rollout runs after the update, on
            # the weights it wrote (on-policy), with the prompts and seed rl_train would draw next
            nbatch, nseed = self._draw(it + 1, prompt_fn, cfg, g, hook) if more else (None, 0)
            if more:
                stage("logp")
            chunks = nbatch.split(actor.world) if more else [None] * actor.world
            pend = Pending([w.update_and_rollout.remote(train, perms, algo.critic, c, nseed, algo.critic)
                            for w, c in zip(actor.workers, chunks)], Collect.LIST, True,
                           train.nbytes * actor.world + (nbatch.nbytes if more else 0), time.perf_counter())
            sync_wait = lambda: {"t_weight_sync": 0.0, "bytes_weight_sync": 0}   # noqa: E731 (the rollout is the actor)
            timing_futs = None
        else:
            pend = actor.call("update", train, perms, algo.critic)
            stage("sync")
            sync_wait = self._send_weights()
            others = [w for w in self.workers() if not any(w is a for a in actor.workers)]
            timing_futs = None
            if self.backend == "ray" and others:   # the actor's processes report inside update's answer
                import ray

                timing_futs = [w.pop_timings.remote() for w in others]
            if more:
                # on-policy all the same: every rollout process runs this call after its own actor's update or
                # after the weight refresh sent above, since Ray runs one caller's calls to an actor in order
                batch, seed = self._draw(it + 1, prompt_fn, cfg, g, hook)
                nxt = {"pend": rollout.call("generate", batch, seed), "t0": time.perf_counter()}
        answers = done("update", pend, pend.get())
        if fused:
            t["t_update"] = max(a["seconds"] for a in answers)
            if more:
                rows = Batch.concat([a["next"] for a in answers])
                nxt = {"ready": rows, "bytes": rows.nbytes + nbatch.nbytes, "t0": time.perf_counter()}
        stats = {k2: v for k2, v in answers[0].items() if k2 not in ("timings", "seconds", "next")}
        sync = sync_wait()
        mean_kl = kl.sum(1).mean().item()
        if cfg.adaptive_kl:
            klc.update(mean_kl, b)
        dt = time.perf_counter() - t0
        ent = -(ro["logprobs"] * mask).sum() / mask.sum()
        worker_t: dict[str, float] = {}
        if timing_futs is not None:
            import ray

            timings = ray.get(timing_futs)
        else:
            timings = self._all("pop_timings") if self.backend == "local" else []
        for d in [a["timings"] for a in answers] + timings:
            for key, v in d.items():
                if key == "cpu_workers" and self.backend == "local":
                    continue                        # the workers are this process: its CPU is not theirs
                if key in ("generate", "old_logp", "ref_logp"):   # fused stages, timed by the workers
                    t[f"t_{key}"] = max(t.get(f"t_{key}", 0.0), v)
                    continue
                name = key if key == "cpu_workers" else f"t_{key}"
                worker_t[name] = worker_t.get(name, 0.0) + v
        m = {"iter": it, "reward": raw.mean().item(), "reward_std": raw.std().item(), "score": score.mean().item(),
             "kl": mean_kl, "kl_coef": klc.value, "entropy_est": ent.item(),
             "response_len": mask.sum(1).mean().item(), "samples_per_s": b / dt,
             "tokens_per_s": mask.sum().item() / dt, "t_iter": dt, **t, **sync, **worker_t, **nb,
             "bytes_total": sum(nb.values()) + sync["bytes_weight_sync"], **stats}
        return m, nxt, g_state

    def _send_weights(self) -> Callable[[], dict]:
        """Actor rank 0 -> every rollout replica that is not the actor itself, through the object store. Sends
        at once; the returned function waits for the replicas and gives the sync's metrics."""
        pl = self.placement
        rpool, rworld = pl.roles["rollout"]
        apool, aworld = pl.roles["actor"]
        targets = [w for i, w in enumerate(self.pools[rpool][:rworld]) if not (rpool == apool and i < aworld)]
        t0 = time.perf_counter()
        if not targets:
            return lambda: {"t_weight_sync": 0.0, "bytes_weight_sync": 0}
        nbytes = self._sd_bytes * len(targets)
        if self.backend == "ray":
            import ray

            ref = self.group("actor").workers[0].get_weights.remote()    # stays in the object store
            futs = [w.set_weights.remote(ref) for w in targets]

            def wait() -> dict:
                ray.get(futs)
                return {"t_weight_sync": time.perf_counter() - t0, "bytes_weight_sync": nbytes}
            return wait
        group = WorkerGroup("rollout", targets, RoleWorker, False)
        group.call("set_weights", self.group("actor").call("get_weights").get()).get()
        out = {"t_weight_sync": time.perf_counter() - t0, "bytes_weight_sync": nbytes}
        return lambda: out


def _state_bytes(sd: dict) -> int:
    return sum(v.numel() * v.element_size() for v in sd.values())


def dataflow_rl_train(policy, ref, prompt_fn, reward_fn, cfg, baseline_fn=None, log=None, *,
                      placement: Optional[Placement] = None, backend: str = "ray", **kw) -> list[dict]:
    """rl_train's signature, run as a dataflow (starts the pools, trains, shuts them down)."""
    flow = HybridFlow(placement, backend=backend, **kw)
    try:
        return flow.train(policy, ref, prompt_fn, reward_fn, cfg, baseline_fn, log)
    finally:
        flow.shutdown()


class Session:
    """One training on a started HybridFlow: `step()` runs the next iteration (restarting dead pools from the
    last checkpoint when a worker dies), `finish()` copies the actor's weights into `policy`."""

    def __init__(self, flow: HybridFlow, policy, ref, prompt_fn, reward_fn, cfg, baseline_fn=None, log=None, hook=None):
        from lmlab.align.algorithms import algorithm
        from lmlab.align.ppo import AdaptiveKLController, PolicyWithValue
        from lmlab.registry import RegistryError

        try:
            self.algo = algorithm("rl", cfg.algo)
        except RegistryError as e:
            raise ValueError(f"rl_train: algo={cfg.algo!r}: {e}") from None
        if self.algo.critic and not isinstance(policy, PolicyWithValue):
            raise ValueError(f"rl_train: algo={cfg.algo!r} needs a PolicyWithValue policy")
        if not self.algo.critic and cfg.samples_per_prompt < 2:
            raise ValueError(f"rl_train: algo={cfg.algo!r} needs samples_per_prompt >= 2 (got {cfg.samples_per_prompt})")
        self.flow, self.policy, self.ref, self.cfg = flow, policy, ref, cfg
        self.prompt_fn, self.reward_fn, self.baseline_fn, self.log, self.hook = prompt_fn, reward_fn, baseline_fn, log, hook
        if not flow.pools:
            flow.start()
        self.c = asdict(cfg)
        self.g = torch.Generator().manual_seed(cfg.seed)
        self.klc = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        ref.eval()
        flow._sd_bytes = _state_bytes(policy.state_dict())
        flow._load(policy, ref, self.c, None)
        self.history: list[dict] = []
        self.next_gen: Optional[dict] = None        # the next iteration's rollout, when already sent
        self.ckpt = flow._checkpoint(-1, self.g.get_state(), self.klc, self.history, initial=policy)

    def step(self) -> dict:
        """Run iterations until one more has completed; returns its metrics."""
        f, cfg = self.flow, self.cfg
        while True:
            it = len(self.history)
            try:
                gen, self.next_gen = self.next_gen, None
                m, self.next_gen, g_state = f._iteration(it, self.algo, self.prompt_fn, self.reward_fn,
                                                         self.baseline_fn, cfg, self.g, self.klc, self.hook, gen)
                break
            except _ray_errors() as e:
                if f.restarts >= f.max_restarts or f.checkpoint_every <= 0:
                    raise
                f.restarts += 1
                self.next_gen = None                # drawn from the lost iterations' generator state: drawn again
                rebuilt = f._restart_dead_pools() if f.backend == "ray" else []
                ck = f._read_checkpoint() or self.ckpt
                rec = {"event": "restart", "iter": it, "restarts": f.restarts, "resume_from": ck["iter"] + 1,
                       "error": type(e).__name__, "rebuilt_pools": rebuilt}
                if self.log:
                    self.log(rec)
                f._load(self.policy, self.ref, self.c, ck["state"])
                self.g.set_state(ck["g"])
                self.klc.value = ck["kl_coef"]
                del self.history[ck["iter"] + 1:]
                self.ckpt = ck
        m["restarts"] = f.restarts
        self.history.append(m)
        if self.log:
            self.log(m)
        if f.checkpoint_every > 0 and ((it + 1) % f.checkpoint_every == 0 or it + 1 == cfg.iterations):
            self.ckpt = f._checkpoint(it, g_state, self.klc, self.history)
        return m

    def finish(self) -> list[dict]:
        if self.next_gen is not None and "pend" in self.next_gen:   # a rollout for an iteration that will not run
            self.next_gen["pend"].get()
        self.next_gen = None
        self.policy.load_state_dict(self.flow.group("actor").call("get_weights").get())
        return self.history
