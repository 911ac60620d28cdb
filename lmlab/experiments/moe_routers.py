"""Routers in Vision MoE (Liu et al. 2024), LM rows: the causal router only.

The paper's routers study is about image classification, where routing may look at every token of an image.
Expert choice and Soft MoE route within groups of same-position tokens across the batch: in a causal LM that
mixes tokens of unrelated sequences, so here they are *adapted* arms, trained and reported but left out of the
verdict (their study in its own setting belongs with the vision experiments). The verdict uses the causal
router, token choice (each token picks its expert from its own logits), against the dense layer.

Equal compute: a dense SwiGLU of hidden h; every MoE has 4 experts of hidden h and processes one expert per
token on average (token choice top-1 dropless, expert choice capacity factor 1, Soft MoE 4 experts × slots
with experts × slots = the tokens of one routing group). Arms: configs/moe/routers_<arm>.yaml.

Verdict (fixed before the runs): one-sided Welch t-test at α = 0.05 of token choice < dense on held-out loss.
EC vs TC, Soft vs TC and Soft vs EC are computed and reported beside it, labelled adapted, not used.
"""
from __future__ import annotations

from pathlib import Path

from lmlab.experiments import _moe as M
from lmlab.experiments.base import ArmResult, Experiment, Verdict, compare
from lmlab.registry import EXPERIMENTS

ARMS = ["dense", "token_choice", "expert_choice", "soft_moe"]
CAUSAL = ["token_choice"]                     # routers whose choice for a token depends on that token alone
ADAPTED = ["expert_choice", "soft_moe"]       # mix tokens across sequences in a causal LM: reported only
ADAPTED_LABEL = "adapted (mixes tokens across sequences in a causal LM)"


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
    """token choice < dense (one-sided Welch, α = 0.05). The adapted arms' comparisons ride along in extra."""
    v = M.vals
    out = compare(v(results, "dense"), v(results, "token_choice"))
    out.rule = f"causal router only: token choice vs dense: {out.rule}"
    reported = {"EC < TC": ("token_choice", "expert_choice"), "Soft < TC": ("token_choice", "soft_moe"),
                "Soft < EC": ("expert_choice", "soft_moe"), "EC < dense": ("dense", "expert_choice"),
                "Soft < dense": ("dense", "soft_moe")}
    out.extra["adapted"] = {"label": ADAPTED_LABEL, **{
        k: compare(v(results, a), v(results, b)).verdict for k, (a, b) in reported.items()
        if results.get(a) and results.get(b)}}
    return out


EXPERIMENTS.register("moe_routers", Experiment(
    name="moe_routers", paper="Routers in Vision Mixture of Experts (Liu et al. 2024)",
    claim="a causal token-choice MoE layer beats the dense layer at equal compute (expert choice and Soft MoE: "
          "reported only, adapted)",
    metric="val_loss", direction="lower", arms=ARMS, baseline="dense",
    technique="token_choice", run=_routers, arm_config=routers_config, invariants=_equal_compute,
    verdict=_routers_verdict, plots=["val_loss", "train_loss"],
    description="Dense SwiGLU vs MoE layers (4 experts of the dense size, one active per token on average) with "
                "softmax token choice (top-1, dropless), softmax expert choice (cf=1) and Soft MoE (4 experts × "
                "batch/4 slots). Only token choice is causal; EC and Soft MoE route within groups of "
                "same-position tokens across the batch (no token sees its own future, but each mixes tokens of "
                f"unrelated sequences): they are {ADAPTED_LABEL}, reported beside the verdict and excluded from "
                "it. Verdict: token choice < dense, one-sided Welch t-test at α = 0.05."))
