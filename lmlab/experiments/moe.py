"""Mixture-of-experts claims, each at equal active compute, ≥3 seeds, verdict computed:

moe_routers      Routers in Vision MoE: expert choice ≥ token choice, Soft MoE ≥ sparse routers (held-out loss)
moe_granularity  Fine-grained MoE: G>1 beats G=1 at equal active compute; L(N,D,G) fitted and plotted
moe_jetmoe       JetMoE: mixture of attention heads + MoE FFN vs dense at equal active parameters
moe_btx          Branch-Train-MiX vs sparse upcycling vs the dense seed, equal post-seed training tokens

Quick scale uses tiny models (d=64, 2 layers, sequences of 64) so each experiment (all arms × 3 seeds) takes a
few minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lmlab.experiments.base import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, ArmResult, Experiment, Verdict, compare
from lmlab.registry import EXPERIMENTS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "moe"


# --------------------------------------------------------------------------------------------- helpers
def _cfg(scale: str, name: str, model: dict, train: Optional[dict] = None, data: Optional[dict] = None):
    from lmlab.experiments.common import run_config

    if scale == "quick":
        base_model = {"d_model": 64, "n_layer": 2, "n_head": 4, "max_seq_len": 64, "d_ff": 192}
        base_train = {"steps": 150, "batch_size": 16, "lr": 3e-3, "warmup_steps": 15, "eval_interval": 50,
                      "eval_batches": 4, "log_interval": 25}
        base_data = {"seq_len": 64, "max_val_tokens_per_domain": 8192}
    else:
        base_model, base_train, base_data = {}, {}, {}
    return run_config(scale, {"model": {**base_model, **model}, "train": {**base_train, **(train or {})},
                              "data": {**base_data, **(data or {})}}, name=name)


_DATA_CACHE: dict = {}


def _data(data_cfg):
    """lmlab.data.load_data, cached per process (every arm of an experiment shares the corpus)."""
    key = data_cfg.model_dump_json()
    if key not in _DATA_CACHE:
        from lmlab.data import load_data

        _DATA_CACHE[key] = load_data(data_cfg)
    return _DATA_CACHE[key]


def _train(cfg, seed: int, out: Path, model=None, data=None):
    from lmlab.train.trainer import train

    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
    return train(cfg, out, model=model, data=data if data is not None else _data(cfg.data), resume=False)


def _result(res, extra: Optional[dict] = None) -> ArmResult:
    from lmlab.models.decoder import count_params, flops_per_token

    m = {"val_loss": res.val_loss, "val_ppl": math.exp(min(res.val_loss, 50))}
    m.update({f"val_loss/{k}": v for k, v in res.val_losses.items()})
    info = {"params": count_params(res.model), "tokens": res.tokens, "seconds": round(res.seconds, 2)}
    try:
        info["flops_per_token"] = flops_per_token(res.model)
    except Exception:  # noqa: BLE001 - a mixer without a FLOP count should not fail the run
        pass
    info.update(extra or {})
    moe = [b.ffn for b in res.model.blocks if b.ffn_name == "moe"]
    if moe:
        mets = [f.metrics() for f in moe]
        for key in ("dropped", "entropy"):
            vals = [x[key] for x in mets if key in x]
            if vals:
                m[f"router/{key}"] = float(np.mean(vals))
    return ArmResult(metrics=m, curves=res.curves, info=info)


def _both(a: Verdict, b: Verdict, what: str) -> Verdict:
    if a.verdict == REPRODUCED and b.verdict == REPRODUCED:
        v = REPRODUCED
    elif NOT_REPRODUCED in (a.verdict, b.verdict):
        v = NOT_REPRODUCED
    else:
        v = INCONCLUSIVE
    return Verdict(v, f"{what}: ({a.rule}) and ({b.rule}) -> {v}", a.baseline, a.technique,
                   {"first": a.extra, "second": b.extra, "second_means": [b.baseline, b.technique]})


def _vals(results, arm, metric="val_loss"):
    return [r.metrics[metric] for r in results[arm]]


# ------------------------------------------------------------------------------------------- routers
# Equal compute: dense SwiGLU of hidden h; every MoE has 4 experts of hidden h and processes one expert per
# token on average (TC top-1 dropless, EC capacity factor 1, Soft MoE 4 experts × 4 slots per 16-token group).
ROUTER_ARMS = {
    "dense": {"ffn": "swiglu"},
    "token_choice": {"ffn": "moe", "ffn_args": {"moe": {"router": "softmax_tc", "n_experts": 4, "top_k": 1}}},
    "expert_choice": {"ffn": "moe", "ffn_args": {"moe": {"router": "softmax_ec", "n_experts": 4, "top_k": 1,
                                                         "capacity_factor": 1.0}}},
    "soft_moe": {"ffn": "moe", "ffn_args": {"moe": {"router": "soft", "n_experts": 4, "slots_per_expert": 4}}},
}


def _routers(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    cfg = _cfg(scale, f"moe_routers/{arm}", ROUTER_ARMS[arm])
    return _result(_train(cfg, seed, out))


def _routers_verdict(exp: Experiment, results) -> Verdict:
    ec_vs_tc = compare(_vals(results, "token_choice"), _vals(results, "expert_choice"))
    best_sparse = min(("token_choice", "expert_choice"), key=lambda a: np.mean(_vals(results, a)))
    soft_vs_sparse = compare(_vals(results, best_sparse), _vals(results, "soft_moe"))
    v = _both(ec_vs_tc, soft_vs_sparse, f"EC vs TC, then soft vs {best_sparse}")
    v.extra["moe_vs_dense"] = {a: compare(_vals(results, "dense"), _vals(results, a)).verdict
                               for a in ("token_choice", "expert_choice", "soft_moe")}
    return v


EXPERIMENTS.register("moe_routers", Experiment(
    name="moe_routers", paper="Routers in Vision Mixture of Experts (Liu et al. 2024)",
    claim="expert choice beats token choice and Soft MoE beats the sparse routers at equal compute",
    metric="val_loss", direction="lower", arms=list(ROUTER_ARMS), baseline="token_choice",
    technique="expert_choice", run=_routers, verdict=_routers_verdict, plots=["val_loss", "train_loss"],
    description="Dense SwiGLU vs MoE layers (4 experts of the dense size, one active per token on average) with "
                "softmax token choice (top-1, dropless), softmax expert choice (cf=1) and Soft MoE (4×4 slots). "
                "EC and Soft MoE route within groups of same-position tokens across the batch, so no token sees "
                "its own future. Verdict: EC < TC (2·SE rule) and Soft < best sparse."))


# --------------------------------------------------------------------------------------- granularity
GRAN_SIZES = {"s": 48, "m": 80}
GRAN_ARMS = ["s_G1", "s_G2", "s_G4", "m_G1", "m_G4"]


def _gran_model(arm: str) -> dict:
    size, g = arm.split("_G")
    d = GRAN_SIZES[size]
    return {"d_model": d, "n_head": 4, "d_ff": 2 * d * 2,  # hidden divisible by 4·G
            "ffn": "moe", "ffn_args": {"moe": {"router": "topk_softmax_tc", "n_experts": 4, "top_k": 1,
                                               "granularity": int(g), "balance_weight": 0.01}}}


def _active_params(model) -> float:
    """Active non-embedding parameters: routed experts counted k·G/(E·G) of their total."""
    from lmlab.models.decoder import count_params

    total = count_params(model)
    for blk in model.blocks:
        if blk.ffn_name == "moe":
            ex = blk.ffn.experts
            n_ex = sum(p.numel() for p in ex.parameters())
            total -= n_ex - n_ex * blk.ffn.k / blk.ffn.e
    return float(total)


def _granularity(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    cfg = _cfg(scale, f"moe_granularity/{arm}", _gran_model(arm), train={"eval_interval": 25})
    res = _train(cfg, seed, out)
    g = int(arm.split("_G")[1])
    r = _result(res, {"active_params": _active_params(res.model), "G": g,
                      "tokens_per_step": cfg.train.batch_size * cfg.data.seq_len})
    try:
        _refit_and_plot(out.parent.parent)
    except Exception as e:  # noqa: BLE001 - a failed fit must not lose the run
        r.info["fit_error"] = str(e)
    return r


def _law_points(results: dict[str, list[ArmResult]]):
    N, D, G, L = [], [], [], []
    for arm, runs in results.items():
        for r in runs:
            tps = r.info.get("tokens_per_step")
            for step, loss in r.curves.get("val_loss", []):
                if step >= 50:  # skip warm-up transients
                    N.append(r.info["active_params"]), D.append(step * tps), G.append(r.info["G"]), L.append(loss)
    return N, D, G, L


def _refit_and_plot(exp_dir: Path) -> None:
    from lmlab.eval.moe_law import fit_law, plot_law

    results: dict[str, list[ArmResult]] = {}
    for f in sorted(exp_dir.glob("*/seed_*/arm_result.json")):
        d = json.loads(f.read_text())
        results.setdefault(f.parent.parent.name, []).append(ArmResult(d["metrics"], d["curves"], d["info"]))
    N, D, G, L = _law_points(results)
    if len(set(G)) < 2 or len(L) < 10:
        return
    fit = fit_law(N, D, G, L)
    plot_law(N, D, G, L, fit, exp_dir / "law_fit.png")
    (exp_dir / "law_fit.json").write_text(json.dumps({"params": fit.params, "rmse": fit.rmse, "points": fit.n_points},
                                                     indent=2))


def _gran_verdict(exp: Experiment, results) -> Verdict:
    from lmlab.eval.moe_law import fit_law

    per_size = [compare(_vals(results, f"{n}_G1"), _vals(results, f"{n}_G4")) for n in GRAN_SIZES]
    v = _both(per_size[0], per_size[1], "G=4 vs G=1 at each model size")
    N, D, G, L = _law_points(results)
    if len(L) >= 10:
        fit = fit_law(N, D, G, L)
        v.extra["law"] = {**{k: round(x, 4) for k, x in fit.params.items()}, "rmse": round(fit.rmse, 4)}
        v.rule += (f"; fitted L = {fit.params['c']:.3f} + ({fit.params['g']:.3g}/G^{fit.params['gamma']:.2f} + "
                   f"{fit.params['a']:.3g})/N^{fit.params['alpha']:.2f} + {fit.params['b']:.3g}/D^{fit.params['beta']:.2f}"
                   f" (rmse {fit.rmse:.3f})")
    return v


EXPERIMENTS.register("moe_granularity", Experiment(
    name="moe_granularity", paper="Scaling Laws for Fine-Grained Mixture of Experts (Krajewski et al. 2024)",
    claim="finer experts (G>1) beat G=1 at equal active compute; L(N,D,G) fitted",
    metric="val_loss", direction="lower", arms=GRAN_ARMS, baseline="s_G1", technique="s_G4",
    run=_granularity, verdict=_gran_verdict, plots=["val_loss"],
    description="Two model sizes (d=48: G ∈ {1,2,4}; d=80: G ∈ {1,4}): 4·G experts of hidden d_ff/G, top-G routing, so active "
                "FLOPs are equal across G. The law is fitted on every (N, D, G, loss) point of the validation "
                "curves (law_fit.png / law_fit.json beside the runs)."))


# -------------------------------------------------------------------------------------------- JetMoE
# Dense: 4 heads × 16, SwiGLU hidden 192. MoA: 8 attention experts of 2 heads × 16, top-2 (4 active query heads
# per token over 2 shared K/V heads); MoE FFN: 8 experts of hidden 96, top-2 (= 192 active).
JET_ARMS = {
    "dense": {},
    "moa_moe": {"mixer": "moa", "mixer_args": {"moa": {"n_experts": 8, "top_k": 2, "n_kv_head": 2, "head_dim": 16}},
                "ffn": "moe", "ffn_args": {"moe": {"router": "topk_softmax_tc", "n_experts": 8, "top_k": 2,
                                                   "d_expert": 96, "out_bias": True}}},
}


def _jetmoe(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    cfg = _cfg(scale, f"moe_jetmoe/{arm}", JET_ARMS[arm])
    res = _train(cfg, seed, out)
    return _result(res, {"active_params": _active_params_jet(res.model)})


def _active_params_jet(model) -> float:
    n = _active_params(model)
    for blk in model.blocks:
        if blk.mixer_name == "moa":
            mx = blk.mixer
            per = mx.w_q[0].numel() + mx.w_o[0].numel()
            n -= per * (mx.e - mx.k)
    return float(n)


EXPERIMENTS.register("moe_jetmoe", Experiment(
    name="moe_jetmoe", paper="JetMoE (Shen et al. 2024)",
    claim="mixture of attention heads + MoE FFN beats a dense model with the same active parameters",
    metric="val_loss", direction="lower", arms=list(JET_ARMS), baseline="dense", technique="moa_moe",
    run=_jetmoe, plots=["val_loss", "train_loss"],
    description="Dense attention (4 heads) + SwiGLU vs MoA (8 experts × 2 heads, top-2, shared K/V) + MoE FFN "
                "(8 experts of half size, top-2); gate = fp32 top-k then softmax, aux = 0.01·(balance + 0.1·z)."))


# ----------------------------------------------------------------------------------------------- BTX
BTX_DOMAINS = ["code", "docs", "bible_kjv"]
_SEED_MODELS: dict = {}


def _btx_steps(scale: str) -> dict:
    return {"seed": 100, "post": 120, "merge_frac": 0.25} if scale == "quick" else \
        {"seed": 2000, "post": 3000, "merge_frac": 0.25}


def _seed_model(seed: int, scale: str, out: Path):
    key = (seed, scale)
    if key not in _SEED_MODELS:
        st = _btx_steps(scale)
        cfg = _cfg(scale, "moe_btx/seed", {}, train={"steps": st["seed"]}, data={"domains": BTX_DOMAINS})
        _SEED_MODELS[key] = (_train(cfg, seed, out / "seed_model").model, cfg)
    return _SEED_MODELS[key]


def _clone(model):
    import copy

    return copy.deepcopy(model)


def _btx(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.models.upcycle import btx_merge, upcycle

    st = _btx_steps(scale)
    seed_model, seed_cfg = _seed_model(seed, scale, out)
    post = st["post"]
    mix = _data(seed_cfg.data)
    moe_args = {"balance_weight": 0.01}

    def finetune(model, steps, name, data=None, lr=1e-3):
        cfg = seed_cfg.model_copy(update={"name": name, "model": model.cfg, "train": seed_cfg.train.model_copy(
            update={"steps": steps, "lr": lr, "warmup_steps": 5, "eval_interval": max(steps // 3, 1)})})
        return _train(cfg, seed, out / name, model=model, data=data)

    if arm == "dense_seed":
        res = finetune(_clone(seed_model), post, "dense", data=mix)
        return _result(res, {"arm_steps": post})
    if arm == "upcycle":
        moe = upcycle(_clone(seed_model), n_experts=len(BTX_DOMAINS), top_k=2, seed=seed, **moe_args)
        res = finetune(moe, post, "upcycle", data=mix)
        return _result(res, {"arm_steps": post})
    # BTX: (1 − merge_frac) of the post-seed steps spent on per-domain branches (split evenly), the rest on
    # MoE finetuning of the merged model on the mix; total post-seed tokens equal to the other arms.
    merge_steps = int(round(post * st["merge_frac"]))
    per_branch = (post - merge_steps) // len(BTX_DOMAINS)
    branches = []
    import dataclasses

    for i, dom in enumerate(mix.domains):  # same tokenizer and windows, restricted to one domain
        only = dataclasses.replace(mix, train=mix.train[mix.train_domain == i], val={dom: mix.val[dom]})
        branches.append(finetune(_clone(seed_model), per_branch, f"branch_{dom}", data=only).model)
    merged = btx_merge(branches, top_k=2, seed=seed, **moe_args)
    res = finetune(merged, merge_steps, "btx_merged", data=mix)
    return _result(res, {"arm_steps": merge_steps + per_branch * len(BTX_DOMAINS)})


def _btx_verdict(exp: Experiment, results) -> Verdict:
    return _both(compare(_vals(results, "upcycle"), _vals(results, "btx")),
                 compare(_vals(results, "dense_seed"), _vals(results, "btx")), "BTX vs upcycling, BTX vs dense seed")


EXPERIMENTS.register("moe_btx", Experiment(
    name="moe_btx", paper="Branch-Train-MiX (Sukhbaatar et al. 2024)",
    claim="BTX beats sparse upcycling and the dense seed on the domain mix at equal post-seed tokens",
    metric="val_loss", direction="lower", arms=["dense_seed", "upcycle", "btx"], baseline="upcycle",
    technique="btx", run=_btx, verdict=_btx_verdict, plots=["val_loss"],
    description="A dense seed trained on the mix of code/docs/bible_kjv; then, with the same number of training "
                "tokens each: continue dense; upcycle into 3 copied experts (top-2) and finetune on the mix; BTX = "
                "train one branch per domain (75% of the tokens), merge FFNs into experts, average the rest, "
                "MoE-finetune on the mix (25%). Metric: mean held-out loss over the three domains."))
