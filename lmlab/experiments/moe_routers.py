"""Routers in Vision MoE (Liu et al. 2024): expert choice beats token choice, Soft MoE beats the sparse routers.

Equal compute: a dense SwiGLU of hidden h; every MoE has 4 experts of hidden h and processes one expert per
token on average (token choice top-1 dropless, expert choice capacity factor 1, Soft MoE 4 experts × slots
with experts × slots = the tokens of one routing group). Arms: configs/moe/routers_<arm>.yaml.

Verdict (fixed before the runs): three one-sided Welch t-tests at α = 0.05 — EC < TC, Soft < TC and
Soft < EC on held-out loss — combined with how="all". MoE vs dense is reported beside it, not used.
"""
from __future__ import annotations

from pathlib import Path

from lmlab.experiments import _moe as M
from lmlab.experiments.base import ArmResult, Experiment, Verdict, combine, compare
from lmlab.registry import EXPERIMENTS

ARMS = ["dense", "token_choice", "expert_choice", "soft_moe"]


def routers_config(arm: str, scale: str, seed: int = 0):
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {ARMS}")
    return M.arm_config(f"routers_{arm}.yaml", scale, seed)


def _routers(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    return M.result(M.train_moe(routers_config(arm, scale, seed), seed, out))


def expert_passes_per_token(cfg) -> float:
    """Expert FFNs (of the expert hidden size) each token goes through, on average."""
    m = cfg.model
    if m.ffn != "moe":
        return 1.0
    a = m.ffn_args.get("moe", {})
    if a.get("router") == "soft":     # one routing group = the batch's tokens at one position
        return a["n_experts"] * a.get("slots_per_expert", 1) / cfg.train.batch_size
    if a.get("router", "").endswith("_ec"):
        return float(a.get("capacity_factor") or a.get("top_k", 2))
    return float(a.get("top_k", 2))


def _equal_compute(cfgs: dict) -> dict:
    dense = cfgs["dense"].model.ffn_hidden
    facts = {}
    for arm, cfg in cfgs.items():
        a = cfg.model.ffn_args.get("moe", {})
        hidden = (a.get("d_expert") or cfg.model.ffn_hidden) // a.get("granularity", 1) if a else cfg.model.ffn_hidden
        passes = expert_passes_per_token(cfg)
        if hidden != dense or abs(passes - 1.0) > 1e-9:
            raise AssertionError(f"moe_routers/{arm}: expert hidden {hidden} (dense {dense}), {passes} expert "
                                 f"passes per token (want 1)")
        facts[arm] = {"expert_hidden": hidden, "passes_per_token": passes}
    return facts


def _routers_verdict(exp: Experiment, results) -> Verdict:
    v = M.vals
    parts = {"EC < TC": compare(v(results, "token_choice"), v(results, "expert_choice")),
             "Soft < TC": compare(v(results, "token_choice"), v(results, "soft_moe")),
             "Soft < EC": compare(v(results, "expert_choice"), v(results, "soft_moe"))}
    out = combine(parts, "all", "expert choice beats token choice; Soft MoE beats both sparse routers")
    out.extra["moe_vs_dense"] = {a: compare(v(results, "dense"), v(results, a)).verdict
                                 for a in ("token_choice", "expert_choice", "soft_moe")}
    return out


EXPERIMENTS.register("moe_routers", Experiment(
    name="moe_routers", paper="Routers in Vision Mixture of Experts (Liu et al. 2024)",
    claim="expert choice beats token choice and Soft MoE beats the sparse routers at equal compute",
    metric="val_loss", direction="lower", arms=ARMS, baseline="token_choice",
    technique="expert_choice", run=_routers, arm_config=routers_config, invariants=_equal_compute,
    verdict=_routers_verdict, plots=["val_loss", "train_loss"],
    description="Dense SwiGLU vs MoE layers (4 experts of the dense size, one active per token on average) with "
                "softmax token choice (top-1, dropless), softmax expert choice (cf=1) and Soft MoE (4 experts × "
                "batch/4 slots). EC and Soft MoE route within groups of same-position tokens across the batch, "
                "so no token sees its own future. Verdict: EC < TC, Soft < TC and Soft < EC, each a one-sided "
                "Welch t-test at α = 0.05."))
