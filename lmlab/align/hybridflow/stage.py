"""`lmlab align rl CONFIG --ray [--ray-address ADDR]`: the rl stage (lmlab.align.stages.rl_stage, unchanged:
same task, prompts, reward, models, metrics and outputs) with the dataflow in place of `rl_train`.

`run_stage_dataflow` swaps `lmlab.align.ppo.rl_train` for the controller while the stage runs (rl_stage
looks it up when it runs), so the stage code stays single-sourced; without --ray the same config runs
rl_train in one process.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional

from lmlab.align.hybridflow.workers import Placement, colocated, split


def make_placement(kind: str, rollout: int = 2, actor: int = 1, cpus_per_worker: float = 0.25,
                   gpus_per_worker: float = 0.0) -> Placement:
    """colocated: `rollout` workers host every role, the actor on the first `actor`; split: `actor` workers
    (actor + ref) and `rollout` other workers."""
    kw = {"cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker}
    if kind == "colocated":
        if actor > rollout:
            raise ValueError(f"colocated: actor workers ({actor}) cannot exceed the pool ({rollout} workers)")
        return colocated(rollout, actor, **kw)
    if kind == "split":
        return split(actor, rollout, **kw)
    raise ValueError(f"placement={kind!r}: choose colocated or split")


@contextlib.contextmanager
def dataflow_in_place_of_rl_train(flow) -> Iterator[None]:
    """While the block runs, lmlab.align.ppo.rl_train(...) runs `flow.train(...)` instead."""
    from lmlab.align import ppo

    orig = ppo.rl_train

    @functools.wraps(orig)
    def rl_train(policy, ref, prompt_fn, reward_fn, cfg, baseline_fn=None, log=None):
        return flow.train(policy, ref, prompt_fn, reward_fn, cfg, baseline_fn, log)

    ppo.rl_train = rl_train
    try:
        yield
    finally:
        ppo.rl_train = orig


def run_stage_dataflow(stage: str, cfg, placement: Placement, ray_address: Optional[str] = None,
                       device: str = "cpu") -> dict:
    """Run an rl stage (rl, ppo, rloo, grpo) of `cfg` on Ray; the summary gains the placement and restarts."""
    from pathlib import Path

    from lmlab.align.hybridflow.controller import HybridFlow, init_ray
    from lmlab.align.stages import resolve_stage, run_stage

    name, _ = resolve_stage(stage, cfg)
    if name != "rl":
        raise ValueError(f"--ray runs the rl stage (rl, ppo, rloo, grpo), not {stage!r}")
    import ray

    started = not ray.is_initialized()
    init_ray(ray_address)
    flow = HybridFlow(placement, backend="ray", device=device, checkpoint_dir=Path(cfg.out_dir) / "dataflow_ckpt")
    try:
        with dataflow_in_place_of_rl_train(flow):
            summary = run_stage(stage, cfg)
    finally:
        flow.shutdown()
        if started:
            ray.shutdown()
    summary.update(placement=placement.name, pools=placement.pools, restarts=flow.restarts,
                   ray_address=ray_address or "local")
    return summary
