"""Fine-grained MoE law fitter recovers known coefficients; experiment arms and configs/moe agree."""
import numpy as np
import pytest

from lmlab.eval.moe_law import fit_law, law


def test_fit_recovers_synthetic_law():
    true = {"c": 1.2, "g": 40.0, "gamma": 0.6, "a": 30.0, "alpha": 0.45, "b": 300.0, "beta": 0.5}
    N, D, G = np.meshgrid([2e4, 5e4, 1e5, 3e5], [1e5, 3e5, 1e6, 3e6], [1, 2, 4, 8], indexing="ij")
    N, D, G = N.ravel(), D.ravel(), G.ravel()
    rng = np.random.default_rng(0)
    L = law(N, D, G, **true) + rng.normal(0, 1e-4, N.size)
    fit = fit_law(N, D, G, L, restarts=12)
    assert fit.rmse < 1e-3
    for k in ("c", "gamma", "alpha", "beta"):
        assert fit.params[k] == pytest.approx(true[k], rel=0.05), k
    # Finer granularity lowers the predicted loss when g > 0, as in the paper.
    assert fit.predict(1e5, 1e6, 8) < fit.predict(1e5, 1e6, 1)


def test_moe_configs_match_experiment_arms():
    from pathlib import Path

    import lmlab.experiments.moe as M
    from lmlab.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / "moe"
    for arm, model in M.ROUTER_ARMS.items():
        cfg = load_config(root / f"routers_{arm}.yaml")
        assert cfg.model.ffn == model["ffn"] and cfg.model.ffn_args == model.get("ffn_args", {})
    for arm in M.GRAN_ARMS:
        cfg = load_config(root / f"granularity_{arm}.yaml")
        assert cfg.model.ffn_args == M._gran_model(arm)["ffn_args"]
    cfg = load_config(root / "jetmoe_moa_moe.yaml")
    assert cfg.model.mixer == "moa" and cfg.model.mixer_args == M.JET_ARMS["moa_moe"]["mixer_args"]
    assert {"moe_routers", "moe_granularity", "moe_jetmoe", "moe_btx"} <= set(M.EXPERIMENTS.names())
