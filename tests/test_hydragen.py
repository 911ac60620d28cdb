"""Hydragen shared-prefix attention equals attention over per-sequence copies of the prefix."""
import pytest
import torch

from lmlab.nn.hydragen import PrefixLevel, hydragen_attention, naive_hydragen_attention


def _kv(g, kv, p, d, gen, dtype=torch.float32):
    return (torch.randn(g, kv, p, d, generator=gen, dtype=dtype), torch.randn(g, kv, p, d, generator=gen, dtype=dtype))


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes_one_level(seed):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 9, (1,), generator=gen))
    kv = [1, 2, 3][seed % 3]
    h = kv * int(torch.randint(1, 4, (1,), generator=gen))          # MHA, GQA, MQA
    d = [8, 16, 12][seed % 3]
    p, s, t = int(torch.randint(1, 40, (1,), generator=gen)), int(torch.randint(1, 9, (1,), generator=gen)), 1
    q = torch.randn(n, h, t, d, generator=gen)
    k0, v0 = _kv(1, kv, p, d, gen)
    ks, vs = _kv(n, kv, s, d, gen)
    lv = [PrefixLevel(k0, v0, torch.zeros(n, dtype=torch.long))]
    lens = torch.randint(1, s + 1, (n,), generator=gen)            # ragged suffixes
    fast = hydragen_attention(q, lv, ks, vs, lens)
    ref = naive_hydragen_attention(q, lv, ks, vs, lens)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert (fast - ref).abs().max() < 1e-5


def test_two_level_tree_gqa_ragged():
    gen = torch.Generator().manual_seed(0)
    n, h, kv, d, t = 7, 6, 2, 16, 1
    group = torch.tensor([0, 0, 1, 1, 1, 2, 2])                    # unequal group sizes
    q = torch.randn(n, h, t, d, generator=gen)
    k0, v0 = _kv(1, kv, 33, d, gen)                                # level 0: shared by all (system prompt)
    k1, v1 = _kv(3, kv, 11, d, gen)                                # level 1: one per prompt, ragged
    l1 = torch.tensor([11, 4, 7])
    ks, vs = _kv(n, kv, 5, d, gen)
    sl = torch.tensor([5, 1, 3, 5, 2, 4, 1])
    levels = [PrefixLevel(k0, v0, torch.zeros(n, dtype=torch.long)), PrefixLevel(k1, v1, group, l1)]
    fast = hydragen_attention(q, levels, ks, vs, sl)
    ref = naive_hydragen_attention(q, levels, ks, vs, sl)
    assert (fast - ref).abs().max() < 1e-5
    # and against plain softmax attention over the explicitly concatenated keys, per sequence
    for i in range(n):
        g = group[i]
        K = torch.cat([k0[0], k1[g, :, :l1[g]], ks[i, :, :sl[i]]], 1).repeat_interleave(h // kv, 0)
        V = torch.cat([v0[0], v1[g, :, :l1[g]], vs[i, :, :sl[i]]], 1).repeat_interleave(h // kv, 0)
        a = torch.softmax(q[i] @ K.transpose(-1, -2) / d ** 0.5, -1) @ V
        assert (fast[i] - a).abs().max() < 1e-5


def test_multi_token_causal_suffix_float64():
    # prefill of suffixes after a shared prefix: t queries, causal inside the suffix, right padding
    gen = torch.Generator().manual_seed(1)
    n, h, kv, d, t = 3, 4, 2, 8, 6
    q = torch.randn(n, h, t, d, generator=gen, dtype=torch.float64)
    k0, v0 = _kv(1, kv, 9, d, gen, torch.float64)
    ks, vs = _kv(n, kv, t, d, gen, torch.float64)
    lens = torch.tensor([6, 2, 4])
    qpos = torch.arange(t)[None].expand(n, t)
    lv = [PrefixLevel(k0, v0, torch.zeros(n, dtype=torch.long))]
    fast = hydragen_attention(q, lv, ks, vs, lens, qpos)
    ref = naive_hydragen_attention(q, lv, ks, vs, lens, qpos)
    for i in range(n):  # compare only real query positions
        L = int(lens[i])
        assert (fast[i, :, :L].double() - ref[i, :, :L]).abs().max() < 1e-6


def test_gradients_match():
    gen = torch.Generator().manual_seed(2)
    n, h, kv, d = 4, 4, 2, 8
    q = torch.randn(n, h, 1, d, generator=gen, dtype=torch.float64, requires_grad=True)
    k0, v0 = _kv(1, kv, 10, d, gen, torch.float64)
    k0.requires_grad_(True)
    ks, vs = _kv(n, kv, 3, d, gen, torch.float64)
    lv = [PrefixLevel(k0, v0, torch.zeros(n, dtype=torch.long))]
    g1 = torch.autograd.grad(hydragen_attention(q, lv, ks, vs).pow(2).sum(), (q, k0))
    g2 = torch.autograd.grad(naive_hydragen_attention(q, lv, ks, vs).pow(2).sum(), (q, k0))
    for a, b in zip(g1, g2):
        assert (a.double() - b).abs().max() < 1e-5


def test_experiment_verdict_and_op_timing():
    from lmlab.experiments.base import ArmResult
    from lmlab.experiments.hydragen_speedup import op_case, verdict
    from lmlab.registry import EXPERIMENTS

    exp = EXPERIMENTS.get("hydragen")
    r = op_case(4, 64, reps=1)
    assert r["max_err"] < 1e-5 and r["naive_ms"] > 0 and r["hydragen_ms"] > 0

    def runs(ys_b, ys_p):
        return {"batch": [ArmResult({}, {"speedup_vs_batch": list(zip([4, 16, 64], y))}) for y in ys_b],
                "prefix": [ArmResult({}, {"speedup_vs_prefix": list(zip([256, 1024, 4096], y))}) for y in ys_p]}

    up = [[1.0, 2.1, 3.3], [1.1, 2.0, 3.1], [0.9, 2.2, 3.4]]
    down = [[3.0, 2.1, 1.0], [3.1, 2.0, 1.1], [2.9, 2.2, 0.9]]
    assert verdict(exp, runs(up, up)).verdict == "reproduced"
    assert verdict(exp, runs(up, down)).verdict == "not reproduced"
    flat = [[2.0, 2.3, 1.9], [2.4, 1.8, 2.2], [1.7, 2.1, 2.3]]
    assert verdict(exp, runs(up, flat)).verdict == "inconclusive"
