"""Rho-1 experiment pool: seeded noise injection, the clean subset is the pre-noise windows, random-k keeps
exactly ⌈k%⌉ tokens, and the reference/arm wiring of the experiment."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmlab.experiments import data_techniques as DT
from lmlab.train import objectives_slm as S


def _windows(n=200, w=65, vocab=500, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (n, w)).astype(np.int64)


def _noise(x, seed=7, **kw):
    args = dict(vocab=500, boilerplate=[1, 2, 3, 4, 5, 6, 7], noise_docs=0.5, noise_frac=0.5, span=(4, 16))
    args.update(kw)
    return DT.inject_noise(x, seed=seed, **args)


def test_noise_is_deterministic_in_its_seed():
    x = _windows()
    a, b = _noise(x), _noise(x)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    c = _noise(x, seed=8)
    assert not np.array_equal(a[2], c[2])


def test_clean_subset_equals_pre_noise_windows_and_noise_stays_in_its_mask():
    x = _windows()
    before = x.copy()
    noisy, mask, corrupted = _noise(x)
    assert np.array_equal(x, before)                               # the input is not modified
    assert np.array_equal(noisy[~corrupted], x[~corrupted])         # clean subset = pre-noise windows
    assert not mask[~corrupted].any()
    assert np.array_equal(noisy[~mask], x[~mask])                   # nothing changes outside the noise mask
    w = x.shape[1]
    assert (mask[corrupted].sum(1) >= 0.5 * w).all()                # each corrupted window ≥ noise_frac noise
    assert 0.35 < corrupted.mean() < 0.65
    # boilerplate spans are prefixes of the boilerplate line, garbage spans are uniform ids
    assert (noisy[mask] < 500).all()


def test_noise_fractions_follow_the_settings():
    x = _windows(n=2000)
    _, mask, corrupted = _noise(x, noise_docs=0.25, noise_frac=0.3)
    assert abs(corrupted.mean() - 0.25) < 0.03
    share = mask[corrupted].mean()
    assert 0.3 <= share < 0.3 + 16 / 65 + 0.01


@pytest.mark.parametrize("ratio", [0.1, 0.6, 1.0])
def test_random_tokens_selects_exactly_k_percent(ratio):
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(5, 13, generator=g) > 0.2
    for s in range(5):
        m = S.random_k_mask(valid, ratio, torch.Generator().manual_seed(s))
        assert int(m.sum()) == math.ceil(round(ratio * int(valid.sum()), 9))
        assert not (m & ~valid).any()


def test_random_tokens_objective_is_seeded_and_uniform():
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder
    from lmlab.registry import OBJECTIVES

    assert OBJECTIVES.get("random_tokens") is S.RandomTokens
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=40, d_model=16, n_layer=1, n_head=2, max_seq_len=16))
    w = torch.randint(0, 40, (4, 13))
    batch = {"input_ids": w[:, :-1], "targets": w[:, 1:]}
    la, ma = S.RandomTokens(0.6, seed=3)(model, batch, 0)
    lb, _ = S.RandomTokens(0.6, seed=3)(model, batch, 0)
    assert torch.equal(la, lb)
    assert ma["random/selected_frac"] == pytest.approx(math.ceil(0.6 * 48) / 48)
    # over many draws every valid position is picked about k% of the time
    valid = torch.ones(2, 50, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    freq = torch.stack([S.random_k_mask(valid, 0.6, g) for _ in range(400)]).float().mean(0)
    assert freq.min() > 0.45 and freq.max() < 0.75


def test_rho1_arms_share_one_config_and_the_rule_needs_both_tests():
    from lmlab.experiments.base import ArmResult
    from lmlab.registry import EXPERIMENTS

    exp = EXPERIMENTS.get("rho1_slm")
    assert exp.arms == ["clm", "slm", "random", "clean_only"] and exp.paired
    cfgs = {a: DT.rho1_config(a, "quick", 0) for a in exp.arms}
    assert len({c.model_dump_json(exclude={"name"}) for c in cfgs.values()}) == 1
    with pytest.raises(ValueError):
        DT.rho1_config("nope", "quick")

    def arm(vals):
        return [ArmResult({"val_loss": v}, info={"seed": i}) for i, v in enumerate(vals)]

    clm, slm = [5.0, 5.1, 5.2], [4.8, 4.92, 5.01]
    good = exp.decide({"clm": arm(clm), "slm": arm(slm), "random": arm([5.3, 5.4, 5.5]), "clean_only": arm([4, 4, 4])})
    assert good.verdict == "reproduced"
    tie = exp.decide({"clm": arm(clm), "slm": arm(slm), "random": arm([4.81, 4.9, 5.03]), "clean_only": []})
    assert tie.verdict == "inconclusive"
    worse = exp.decide({"clm": arm(clm), "slm": arm(slm), "random": arm([4.7, 4.81, 4.9]), "clean_only": []})
    assert worse.verdict == "not reproduced"
