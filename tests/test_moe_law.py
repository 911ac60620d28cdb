"""Fine-grained MoE law fitter recovers known coefficients; MoE arms are read from configs/moe."""
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


def test_moe_arms_are_read_from_configs_moe():
    """Every MoE arm is its configs/moe recipe at quick scale (no copy of it in the experiment)."""
    from pathlib import Path

    from lmlab.config import load_config
    from lmlab.registry import EXPERIMENTS

    root = Path(__file__).resolve().parents[1] / "configs" / "moe"
    recipes = {"moe_routers": "routers_{}", "moe_granularity": "granularity_{}", "moe_jetmoe": "jetmoe_{}"}
    for name, pattern in recipes.items():
        exp = EXPERIMENTS.get(name)
        for arm in exp.arms:
            yaml_cfg = load_config(root / (pattern.format(arm) + ".yaml"))
            cfg = exp.arm_config(arm, "quick", 0)
            assert cfg.model == yaml_cfg.model and cfg.name == yaml_cfg.name, (name, arm)
            assert cfg.train.model_dump(exclude={"progress", "tensorboard"}) == \
                yaml_cfg.train.model_dump(exclude={"progress", "tensorboard"}), (name, arm)
    seed = load_config(root / "btx_seed.yaml")
    assert EXPERIMENTS.get("moe_btx").arm_config("dense_seed", "quick", 0).data.domains == seed.data.domains
