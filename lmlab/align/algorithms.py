"""Look-ups into the alignment registries, restricted to what one stage can run.

ALIGN_ALGOS and REWARD_MODELS entries may carry a `stage`: the `lmlab align` stage that runs them by name
    "dpo"  a loss on preference pairs (lmlab.align.dpo.PreferenceLoss), chosen by `dpo.loss_type`
    "rl"   an online RL algorithm (lmlab.align.ppo.RLAlgorithm), chosen by `rl.algo`
    "rm"   a reward-model training method (lmlab.align.reward.RewardKind), chosen by `rm.method`
Entries without a stage (V-STaR, Direct Principle Feedback, contrastive rewards) are driven from Python,
e.g. by lmlab.experiments; `lmlab list` shows them all with their one-line descriptions.
"""
from __future__ import annotations

from typing import Any

from lmlab.registry import ALIGN_ALGOS, REWARD_MODELS, Registry, RegistryError


def for_stage(registry: Registry, stage: str) -> dict[str, Any]:
    """{name: entry} of `registry` that `stage` runs."""
    return {n: o for n, o in registry.items() if getattr(o, "stage", None) == stage}


def _pick(registry: Registry, stage: str, name: str) -> Any:
    entries = for_stage(registry, stage)
    if name not in entries:
        raise RegistryError(f"unknown {registry.kind} {name!r} for the {stage} stage; "
                            f"choose one of: {', '.join(sorted(entries)) or '(none)'}")
    return entries[name]


def algorithm(stage: str, name: str) -> Any:
    """The ALIGN_ALGOS entry `name` that `stage` ("dpo", "rl") runs; RegistryError lists the choices."""
    return _pick(ALIGN_ALGOS, stage, name)


def reward_kind(name: str) -> Any:
    """The REWARD_MODELS entry `name` that the rm stage trains; RegistryError lists the choices."""
    return _pick(REWARD_MODELS, "rm", name)
