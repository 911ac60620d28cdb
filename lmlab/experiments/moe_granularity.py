"""Scaling Laws for Fine-Grained MoE (Krajewski et al. 2024): G > 1 beats G = 1 at equal active compute.

Two model sizes (quick: d = 48 with G ∈ {1, 2, 4}, d = 80 with G ∈ {1, 4}; full: 3/4 and 5/4 of the preset's
width): 4·G experts of hidden d_ff/G (d_ff = 4·d), top-G routing, so active FLOPs are equal across G. Arms:
configs/moe/granularity_<arm>.yaml. L(N, D, G) is fitted on every (N, D, G, loss) point of the validation
curves (law_fit.png / law_fit.json beside the runs).

Verdict (fixed before the runs): at each size, a one-sided Welch t-test (α = 0.05) of G = 4 < G = 1 on
held-out loss; combined with how="all". The fitted law is reported beside it.
"""
from __future__ import annotations

import json
from pathlib import Path

from lmlab.experiments import _moe as M
from lmlab.experiments.base import ArmResult, Experiment, Verdict, combine, compare
from lmlab.experiments.common import FULL, equal_params
from lmlab.registry import EXPERIMENTS

GRAN_SIZES = {"s": 48, "m": 80}          # quick-scale widths (the recipes); full scale: × 512/64
GRAN_ARMS = ["s_G1", "s_G2", "s_G4", "m_G1", "m_G4"]
FULL_OVERRIDES = {"train": {"eval_interval": FULL["train"]["steps"] // 6}}   # 6 curve points, as 150/25


def granularity_config(arm: str, scale: str, seed: int = 0):
    if arm not in GRAN_ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {GRAN_ARMS}")
    return M.arm_config(f"granularity_{arm}.yaml", scale, seed, full=FULL_OVERRIDES)


def _granularity(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.experiments.common import active_params

    cfg = granularity_config(arm, scale, seed)
    res = M.train_moe(cfg, seed, out)
    g = int(arm.split("_G")[1])
    r = M.result(res, {"active_params": active_params(res.model), "G": g,
                       "tokens_per_step": cfg.train.batch_size * cfg.data.seq_len})
    try:
        _refit_and_plot(out.parent.parent)
    except Exception as e:  # noqa: BLE001 - a failed fit must not lose the run
        r.info["fit_error"] = str(e)
    return r


def _active_without_routers(model_cfg) -> float:
    from lmlab.experiments.common import active_params, meta_model

    return active_params(meta_model(model_cfg), routers=False)


def _equal_active(cfgs: dict) -> dict:
    """Equal active non-embedding parameters across G at each size, the routers' 4·G·d weights aside (1–2% of
    the total at quick scale); returns the counts."""
    out = {}
    for size in GRAN_SIZES:
        out.update(equal_params(count=_active_without_routers,
                                arms=[a for a in cfgs if a.startswith(size + "_")])(cfgs))
    return out


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

    parts = {f"{n}: G=4 < G=1": compare(M.vals(results, f"{n}_G1"), M.vals(results, f"{n}_G4")) for n in GRAN_SIZES}
    v = combine(parts, "all", "G=4 vs G=1 at each model size")
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
    run=_granularity, arm_config=granularity_config, invariants=_equal_active, verdict=_gran_verdict,
    plots=["val_loss"],
    description="Two model sizes (d=48: G ∈ {1,2,4}; d=80: G ∈ {1,4} at quick scale): 4·G experts of hidden "
                "d_ff/G, top-G routing, so active FLOPs are equal across G. The law is fitted on every "
                "(N, D, G, loss) point of the validation curves (law_fit.png / law_fit.json beside the runs). "
                "Verdict: G=4 < G=1 at both sizes, one-sided Welch t-tests at α = 0.05."))
