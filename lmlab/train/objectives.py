"""Training objectives. An objective turns (model, batch) into a scalar loss plus metrics.

    @OBJECTIVES.register("name")
    class X:
        def __init__(self, **objective_args): ...
        def setup(self, model, data, cfg, device): ...          # optional
        def __call__(self, model, batch, step) -> (loss, metrics)

batch = {"input_ids": (b, t) long, "targets": (b, t) long}. Auxiliary losses that modules of the trained
model set during the objective's forward (MoE balance …) are added by the trainer, weighted by
`train.aux_loss_weight`; objectives do not add them. Rho-1's selective objective lives in
objectives_slm.py.
"""
from __future__ import annotations

import torch

from lmlab.registry import OBJECTIVES


@OBJECTIVES.register("clm")
class CausalLM:
    """Plain next-token cross-entropy, mean over all target tokens."""

    def __init__(self, **kwargs):
        if kwargs:
            raise TypeError(f"clm takes no arguments, got {sorted(kwargs)}")

    def __call__(self, model, batch, step):
        out = model(batch["input_ids"], targets=batch["targets"])
        return out.loss, {}


def token_losses(model, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token CE (b, t); useful to objectives that weight or select tokens."""
    return model(input_ids, targets=targets, reduction="none").loss
