"""Branch-Train-MiX (Sukhbaatar et al. 2024) vs sparse upcycling vs the dense seed, equal post-seed tokens.

A dense seed (configs/moe/btx_seed.yaml) is trained on the mix of code/docs/bible_kjv; then, with the same
number of training tokens each: continue dense; upcycle into 3 copied experts (top-2) and finetune on the mix;
BTX = one branch per domain (75% of the tokens), FFNs merged into experts, the rest averaged, MoE-finetuned on
the mix (25%). The upcycled and merged models have the shape of configs/moe/btx_merged.yaml. The arms of a
seed start from the same seed model, so the design is paired by seed.

Verdict (fixed before the runs): paired one-sided t-tests at α = 0.05 of BTX < upcycling and BTX < dense seed
on mean held-out loss over the three domains, combined with how="all".
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from lmlab.experiments import _moe as M
from lmlab.experiments.base import ArmResult, Experiment, Verdict, arm_values, combine, compare
from lmlab.registry import EXPERIMENTS

BTX_DOMAINS = ["code", "docs", "bible_kjv"]
STEPS = {"quick": {"seed": 100, "post": 120, "merge_frac": 0.25},
         "full": {"seed": 2000, "post": 3000, "merge_frac": 0.25}}
FINETUNE = {"lr": 1e-3, "warmup_steps": 5}
_SEED_MODELS: dict = {}


def seed_config(scale: str, seed: int = 0):
    return M.arm_config("btx_seed.yaml", scale, seed, full={"train": {"steps": STEPS["full"]["seed"]}})


def split(scale: str) -> dict:
    """Post-seed optimizer steps of each phase; every arm spends `post` in all."""
    st = STEPS[scale]
    merge_steps = int(round(st["post"] * st["merge_frac"]))
    return {"post": st["post"], "merge": merge_steps, "branch": (st["post"] - merge_steps) // len(BTX_DOMAINS)}


def _finetune_cfg(seed_cfg, model_cfg, steps: int, name: str):
    return seed_cfg.model_copy(update={"name": name, "model": model_cfg, "train": seed_cfg.train.model_copy(
        update={"steps": steps, **FINETUNE, "eval_interval": max(steps // 3, 1)})})


def btx_config(arm: str, scale: str, seed: int = 0):
    """What each arm trains after the seed: dense_seed the seed model, upcycle/btx the merged MoE shape
    (configs/moe/btx_merged.yaml), for the arm's post-seed steps."""
    sc = seed_config(scale, seed)
    sp = split(scale)
    if arm == "dense_seed":
        return _finetune_cfg(sc, sc.model, sp["post"], "dense")
    if arm in ("upcycle", "btx"):
        merged = M.arm_config("btx_merged.yaml", scale, seed)
        return _finetune_cfg(sc, merged.model, sp["post"] if arm == "upcycle" else sp["merge"],
                             "upcycle" if arm == "upcycle" else "btx_merged")
    raise ValueError(f"unknown arm {arm!r}; choose dense_seed, upcycle or btx")


def _seed_model(seed: int, scale: str, out: Path):
    key = (seed, scale)
    if key not in _SEED_MODELS:
        cfg = seed_config(scale, seed)
        _SEED_MODELS[key] = (M.train_moe(cfg, seed, out / "seed_model").model, cfg)
    return _SEED_MODELS[key]


def _btx(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.experiments.common import cached_data
    from lmlab.models.upcycle import btx_merge, upcycle

    sp = split(scale)
    seed_model, seed_cfg = _seed_model(seed, scale, out)
    post = sp["post"]
    mix = cached_data(seed_cfg.data)
    moe_args = {"balance_weight": 0.01}

    def finetune(model, steps, name, data=None):
        return M.train_moe(_finetune_cfg(seed_cfg, model.cfg, steps, name), seed, out / name, model=model, data=data)

    if arm == "dense_seed":
        res = finetune(copy.deepcopy(seed_model), post, "dense", data=mix)
        return M.result(res, {"arm_steps": post})
    if arm == "upcycle":
        moe = upcycle(copy.deepcopy(seed_model), n_experts=len(BTX_DOMAINS), top_k=2, seed=seed, **moe_args)
        res = finetune(moe, post, "upcycle", data=mix)
        return M.result(res, {"arm_steps": post})
    if arm != "btx":
        raise ValueError(f"unknown arm {arm!r}; choose dense_seed, upcycle or btx")
    branches = []
    for i, dom in enumerate(mix.domains):  # same tokenizer and windows, restricted to one domain
        only = dataclasses.replace(mix, train=mix.train[mix.train_domain == i], val={dom: mix.val[dom]})
        branches.append(finetune(copy.deepcopy(seed_model), sp["branch"], f"branch_{dom}", data=only).model)
    merged = btx_merge(branches, top_k=2, seed=seed, **moe_args)
    res = finetune(merged, sp["merge"], "btx_merged", data=mix)
    return M.result(res, {"arm_steps": sp["merge"] + sp["branch"] * len(BTX_DOMAINS)})


def _equal_tokens(cfgs: dict) -> dict:
    """Equal post-seed optimizer steps (hence tokens) in every arm."""
    facts = {}
    for scale in ("quick", "full"):
        sp = split(scale)
        btx = sp["merge"] + sp["branch"] * len(BTX_DOMAINS)
        if btx != sp["post"]:
            raise AssertionError(f"moe_btx at {scale}: BTX spends {btx} post-seed steps, the others {sp['post']}")
        facts[scale] = sp
    return facts


def _btx_verdict(exp: Experiment, results) -> Verdict:
    parts = {}
    for other in ("upcycle", "dense_seed"):
        b, t = arm_values(results, other, "btx", "val_loss", paired=True)
        parts[f"BTX < {other}"] = compare(b, t, paired=True)
    return combine(parts, "all", "BTX vs upcycling, BTX vs dense seed")


EXPERIMENTS.register("moe_btx", Experiment(
    name="moe_btx", paper="Branch-Train-MiX (Sukhbaatar et al. 2024)",
    claim="BTX beats sparse upcycling and the dense seed on the domain mix at equal post-seed tokens",
    metric="val_loss", direction="lower", arms=["dense_seed", "upcycle", "btx"], baseline="upcycle",
    technique="btx", paired=True, run=_btx, arm_config=btx_config, invariants=_equal_tokens, verdict=_btx_verdict,
    plots=["val_loss"],
    description="A dense seed trained on the mix of code/docs/bible_kjv; then, with the same number of training "
                "tokens each: continue dense; upcycle into 3 copied experts (top-2) and finetune on the mix; BTX = "
                "train one branch per domain (75% of the tokens), merge FFNs into experts, average the rest, "
                "MoE-finetune on the mix (25%). Metric: mean held-out loss over the three domains. Verdict: BTX "
                "below both others, paired one-sided t-tests (same seed model per seed), α = 0.05."))
