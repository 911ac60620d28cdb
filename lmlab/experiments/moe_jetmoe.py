"""JetMoE (Shen et al. 2024): mixture of attention heads + MoE FFN vs a dense model at equal active parameters.

Dense: n_head heads, SwiGLU hidden d_ff. MoA: 8 attention experts of n_head/2 heads, top-2 (n_head active
query heads per token over n_head/2 shared K/V heads); MoE FFN: 8 experts of hidden d_ff/2, top-2 (= d_ff
active). Quick scale: 4 heads × 16, d_ff 192 (configs/moe/jetmoe_<arm>.yaml); full: the same ratios on the
FULL preset. The shared K/V projections make MoA's active attention 3/4 of dense attention's, so the MoA+MoE
arm has ≈ 6–8% fewer active non-embedding parameters than dense (checked: within 10%).

Verdict (fixed before the runs): the default rule, a one-sided Welch t-test of the loss gain at α = 0.05.
"""
from __future__ import annotations

from pathlib import Path

from lmlab.experiments import _moe as M
from lmlab.experiments.base import ArmResult, Experiment
from lmlab.experiments.common import equal_params
from lmlab.registry import EXPERIMENTS

ARMS = ["dense", "moa_moe"]


def jetmoe_config(arm: str, scale: str, seed: int = 0):
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {ARMS}")
    return M.arm_config(f"jetmoe_{arm}.yaml", scale, seed)


def _jetmoe(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.experiments.common import active_params

    res = M.train_moe(jetmoe_config(arm, scale, seed), seed, out)
    return M.result(res, {"active_params": active_params(res.model)})


EXPERIMENTS.register("moe_jetmoe", Experiment(
    name="moe_jetmoe", paper="JetMoE (Shen et al. 2024)",
    claim="mixture of attention heads + MoE FFN beats a dense model with the same active parameters",
    metric="val_loss", direction="lower", arms=ARMS, baseline="dense", technique="moa_moe",
    run=_jetmoe, arm_config=jetmoe_config, invariants=equal_params(rtol=0.10, count=M.active_non_embedding),
    plots=["val_loss", "train_loss"],
    description="Dense attention (4 heads) + SwiGLU vs MoA (8 experts × 2 heads, top-2, shared K/V) + MoE FFN "
                "(8 experts of half size, top-2); gate = fp32 top-k then softmax, aux = 0.01·(balance + 0.1·z). "
                "Active non-embedding parameters within 10% (MoA shares K/V). Verdict: one-sided Welch t-test, "
                "α = 0.05."))
