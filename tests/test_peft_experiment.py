"""spiel_vs_lora experiment: synthetic task, equal budgets, and the paired non-inferiority verdict."""
import numpy as np

from lmlab.experiments.base import ArmResult
from lmlab.experiments.spiel_vs_lora import (LINEARS, entropy_rate, lora_budget, matches_or_approaches, sample_rows,
                                    task_pair)
from lmlab.registry import EXPERIMENTS


def test_entropy_rate_is_the_true_chain_loss_and_b_differs_from_a():
    A, B = task_pair()
    x = sample_rows(B, 400, 201, np.random.default_rng(0))[:, 50:]       # past burn-in: near stationary
    nll = -np.log(B[x[:, :-1], x[:, 1:]]).mean()
    assert abs(nll - entropy_rate(B)) < 0.03
    changed = np.abs(A - B).sum(1) > 1e-9
    assert changed.sum() >= 24                                           # about half the rows redrawn
    assert np.allclose(A.sum(1), 1) and np.allclose(B.sum(1), 1)


def test_equal_budget_matches_lora_formula():
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder
    from lmlab.nn.peft import apply_peft

    m = Decoder(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4))
    budget = lora_budget(m, 4)
    assert budget == 2 * 4 * (4 * (32 + 32) + 3 * (32 + 96))
    h = apply_peft(Decoder(m.cfg), {"method": "spiel", "n_trainable": budget, "target_modules": LINEARS})
    h2 = apply_peft(Decoder(m.cfg), {"method": "lora", "r": 4, "alpha": 8, "target_modules": LINEARS})
    assert h.n_trainable() == h2.n_trainable() == budget


def _results(lora, spiel, H=1.0):
    mk = lambda xs: [ArmResult({"val_loss": v, "entropy_rate": H}, info={"seed": i}) for i, v in enumerate(xs)]
    return {"lora": mk(lora), "spiel": mk(spiel)}


def test_verdict_rule_branches():
    exp = EXPERIMENTS.get("spiel_vs_lora")
    # tol = max(0.05·(1.5 − 1.0), 0.01) = 0.025
    assert exp.decide(_results([1.5, 1.6, 1.4], [1.51, 1.60, 1.41])).verdict == "reproduced"
    assert exp.decide(_results([1.5, 1.6, 1.4], [1.45, 1.56, 1.33])).verdict == "reproduced"      # better
    assert exp.decide(_results([1.5, 1.6, 1.4], [1.60, 1.70, 1.50])).verdict == "not reproduced"
    assert exp.decide(_results([1.5, 1.6, 1.4], [1.50, 1.68, 1.40])).verdict == "inconclusive"    # noisy gap
    assert exp.decide(_results([1.5], [1.5])).verdict == "inconclusive"
    v = matches_or_approaches(exp, _results([1.5, 1.6, 1.4], [1.51, 1.60, 1.41]))
    assert abs(v.extra["tol"] - 0.025) < 1e-12 and abs(v.extra["d"] - 0.02 / 3) < 1e-12
