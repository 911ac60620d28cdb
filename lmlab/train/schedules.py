"""Learning-rate schedules: multiplier of the peak LR at a given step (linear warmup in all of them)."""
from __future__ import annotations

import math

from lmlab.registry import SCHEDULES


def _warmup(step: int, warmup: int) -> float:
    return (step + 1) / warmup if warmup and step < warmup else 1.0


@SCHEDULES.register("constant")
def constant(step: int, total: int, warmup: int, min_ratio: float, decay_fraction: float) -> float:
    """Linear warmup, then the peak LR."""
    return _warmup(step, warmup)


@SCHEDULES.register("cosine")
def cosine(step: int, total: int, warmup: int, min_ratio: float, decay_fraction: float) -> float:
    """Linear warmup, then cosine from the peak down to min_lr_ratio·peak."""
    if warmup and step < warmup:
        return _warmup(step, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@SCHEDULES.register("wsd")
def wsd(step: int, total: int, warmup: int, min_ratio: float, decay_fraction: float) -> float:
    """Warmup-stable-decay: flat at the peak, then linear decay over the last `decay_fraction` of steps."""
    if warmup and step < warmup:
        return _warmup(step, warmup)
    decay_start = total - int(round(decay_fraction * total))
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / max(1, total - decay_start)
    return 1.0 - (1.0 - min_ratio) * min(1.0, progress)


def lr_at(cfg, step: int) -> float:
    fn = SCHEDULES.get(cfg.schedule)
    return cfg.lr * fn(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.decay_fraction)
