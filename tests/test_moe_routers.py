"""Routers: fast index-form routing + slot-table dispatch == loop-built D/C + token loop (float64 values and
gradients); capacity, dropping and batch priority on hand-built cases; balance losses read 1 when balanced."""
import math

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.nn.moe.layer import MoE
from lmlab.nn.moe.routers import (ROUTERS, aux_losses, build_router, naive_sinkhorn, naive_sparse_transport,
                                  router_metrics, sinkhorn, sparse_transport)

CFG = ModelConfig(d_model=8, n_head=2, d_ff=12, n_layer=2)
ALL = ROUTERS.names()


def _layer(router, seed=0, **kw):
    torch.manual_seed(seed)
    m = MoE.from_config(CFG, router=router, **kw).double()
    with torch.no_grad():  # O(1) weights so the outputs and gradients are far from 0
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


CASES = [(r, cf, bpr) for r in ALL for cf, bpr in [(None, False), (1.0, False), (0.5, True)]
         if r != "soft" or cf is None]  # soft MoE has no capacity


@pytest.mark.parametrize("router,cf,bpr", CASES)
def test_fast_equals_naive_values_and_grads(router, cf, bpr):
    m = _layer(router, n_experts=4, top_k=2, capacity_factor=cf, batch_priority=bpr, group="sequence",
               slots_per_expert=2)
    x = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    y, yn = m(x), m.naive_forward(x)
    assert y.abs().max() > 0.1
    torch.testing.assert_close(y, yn, rtol=1e-10, atol=1e-12)
    params = [x] + [p for p in m.parameters()]
    w = torch.randn_like(y)
    g1 = torch.autograd.grad((y * w).sum(), params, allow_unused=True)
    g2 = torch.autograd.grad((yn * w).sum(), params, allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    target = m.router.phi if router == "soft" else m.router.proj.weight
    g_router = g1[next(i for i, p in enumerate(params) if p is target)]
    assert g_router.abs().max() > 0  # the router learns through the combine weights


def _identity_router(name, e, **kw):
    r = build_router(name, e, e, **kw).double()
    with torch.no_grad():
        r.proj.weight.copy_(torch.eye(e, dtype=torch.float64))
    return r


def test_token_choice_capacity_drops_in_position_order():
    # 4 tokens, all prefer expert 0, increasingly confident; c = ceil(4·1·0.5/2) = 1.
    x = torch.tensor([[[1.0, 0], [2, 0], [3, 0], [4, 0]]], dtype=torch.float64)
    r = _identity_router("softmax_tc", 2, top_k=1, capacity_factor=0.5)(x)
    assert r.capacity == 1
    D, C = r.dense()
    assert D[0, :, 0, 0].tolist() == [True, False, False, False]  # first come, first served
    assert D[0, :, 1].sum() == 0
    assert router_metrics(r)["dropped"] == 0.75
    torch.testing.assert_close(C[0, 0, 0, 0], torch.softmax(x[0, 0], -1)[0])


def test_batch_priority_keeps_most_confident_token():
    x = torch.tensor([[[1.0, 0], [2, 0], [4, 0], [3, 0]]], dtype=torch.float64)
    r = _identity_router("softmax_tc", 2, top_k=1, capacity_factor=0.5, batch_priority=True)(x)
    D, _ = r.dense()
    assert D[0, :, 0, 0].tolist() == [False, False, True, False]


def test_top2_fills_first_choices_before_second_choices():
    # c = ceil(2·2·0.5/2) = 1: each expert's single slot goes to the token that chose it first.
    x = torch.tensor([[[2.0, 0], [0, 2]]], dtype=torch.float64)
    r = _identity_router("softmax_tc", 2, top_k=2, capacity_factor=0.5)(x)
    D, C = r.dense()
    assert r.capacity == 1
    assert D[0, 0, 0, 0] and D[0, 1, 1, 0] and D.sum() == 2
    assert router_metrics(r)["dropped"] == 0.0


def test_dropless_never_drops_and_capacity_is_max_load():
    x = torch.tensor([[[1.0, 0], [2, 0], [3, 0], [0, 1]]], dtype=torch.float64)
    r = _identity_router("topk_softmax_tc", 2, top_k=1, capacity_factor=None)(x)
    assert r.capacity == 3 and bool(r.valid.all())
    assert router_metrics(r)["dropped"] == 0.0
    _, C = r.dense()
    torch.testing.assert_close(C.sum((2, 3)), torch.ones(1, 4, dtype=torch.float64))  # top-1 softmax = 1


def test_expert_choice_hand_case_and_capacity():
    # s=4, e=2, cf=1 -> c = 2; expert 0 takes the two tokens with the largest p[:, 0].
    x = torch.tensor([[[3.0, 0], [0, 3], [1, 0], [2, 0]]], dtype=torch.float64)
    r = _identity_router("softmax_ec", 2, capacity_factor=1.0)(x)
    D, _ = r.dense()
    assert r.capacity == 2
    assert D[0, :, 0].any(-1).tolist() == [True, False, False, True]
    assert D[0, :, 1].any(-1).tolist() == [False, True, True, False]


@pytest.mark.parametrize("name", ["softmax_ec", "sinkhorn_ec", "sparse_ec"])
@pytest.mark.parametrize("cf", [0.5, 1.0, 2.0])
def test_expert_choice_never_exceeds_capacity(name, cf):
    torch.manual_seed(0)
    r = build_router(name, 6, 4, capacity_factor=cf).double()
    for _ in range(5):
        x = torch.randn(3, 10, 6, dtype=torch.float64) * 3
        out = r(x)
        D, _ = out.dense()
        per_expert = D.sum((1, 3))                                     # (g, e) tokens per expert
        assert int(per_expert.max()) <= out.capacity == math.ceil(cf * 10 / 4)
        assert int(D.sum(-1).max()) <= 1                               # a token fills ≤ 1 slot per expert


def test_soft_moe_rows_sum_to_one():
    torch.manual_seed(0)
    r = build_router("soft", 8, 3, slots_per_expert=2).double()
    out = r(torch.randn(2, 5, 8, dtype=torch.float64))
    torch.testing.assert_close(out.dispatch.sum(1), torch.ones(2, 3, 2, dtype=torch.float64))  # over tokens
    torch.testing.assert_close(out.combine.sum((2, 3)), torch.ones(2, 5, dtype=torch.float64))  # over slots
    # L2-normalised inputs: scaling a token does not change the routing.
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(r(x).dispatch, r(x * torch.tensor([1.0, 3, 0.2, 7])[None, :, None]).dispatch)


def test_sinkhorn_fast_equals_naive_and_is_balanced():
    torch.manual_seed(0)
    lg = torch.randn(2, 6, 3, dtype=torch.float64) * 2
    P = sinkhorn(lg, 50)
    torch.testing.assert_close(P, naive_sinkhorn(lg, 50))
    torch.testing.assert_close(P.sum(1), torch.full((2, 3), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(P.sum(2), torch.full((2, 6), 1 / 6, dtype=torch.float64), atol=1e-6, rtol=0)


def test_sparse_transport_support_and_naive():
    torch.manual_seed(1)
    lg = torch.randn(2, 9, 3, dtype=torch.float64)
    P = sparse_transport(lg, 3, 8)
    torch.testing.assert_close(P, naive_sparse_transport(lg, 3, 8))
    assert int((P > 0).sum(1).max()) <= 3
    torch.testing.assert_close(P.sum(1), torch.full((2, 3), 1 / 3, dtype=torch.float64))


def test_balance_losses_read_one_when_balanced():
    e, s = 4, 8
    x = (3.0 * torch.eye(e, dtype=torch.float64)[torch.arange(s) % e])[None]   # token i prefers expert i % e
    r = _identity_router("softmax_tc", e, top_k=1)(x)
    aux = aux_losses(r)
    for name in ("importance", "load", "balance"):
        torch.testing.assert_close(aux[name], torch.tensor(1.0, dtype=torch.float64))
    aux_noisy = aux_losses(r, noise_std=1.0)  # smooth load estimator: balanced too by symmetry
    torch.testing.assert_close(aux_noisy["load"], torch.tensor(1.0, dtype=torch.float64))
    skew = (3.0 * torch.eye(e, dtype=torch.float64)[torch.zeros(s, dtype=torch.long)])[None]
    aux2 = aux_losses(_identity_router("softmax_tc", e, top_k=1)(skew))
    assert all(aux2[n] > 1.5 for n in ("importance", "load", "balance"))
    # Entropy metric: uniform probabilities give log(e).
    r0 = _identity_router("softmax_tc", e, top_k=1)(torch.zeros(1, 3, e, dtype=torch.float64))
    assert abs(router_metrics(r0)["entropy"] - math.log(e)) < 1e-9
    # z-loss = mean logsumexp²: zero logits -> log(e)².
    assert abs(float(aux_losses(r0)["z"]) - math.log(e) ** 2) < 1e-9


def test_aux_loss_free_bias_moves_towards_underloaded_experts():
    r = _identity_router("softmax_tc", 3, top_k=1, bias_update_rate=0.1)
    r.train()
    x = torch.tensor([[[2.0, 0, 0], [2, 0, 0], [2, 0, 0], [0, 2, 0]]], dtype=torch.float64)
    r(x)
    assert r.select_bias.tolist() == pytest.approx([-0.1, 0.1, 0.1])  # expert 0 overloaded, others under
    torch.manual_seed(0)
    xs = torch.randn(1, 60, 3, dtype=torch.float64)
    xs[..., 0] += 1.5                                          # most tokens prefer expert 0
    r.select_bias.zero_()
    first = float(r(xs).load().max())
    for _ in range(40):
        r(xs)
    assert first > 0.6 and float(r(xs).load().max()) < first - 0.2   # the bias alone spreads the tokens
    r.eval()
    before = r.select_bias.clone()
    r(xs)
    assert torch.equal(before, r.select_bias)  # no update at eval


def test_granularity_and_shared_experts_shapes_and_flops():
    m = MoE.from_config(CFG, router="topk_softmax_tc", n_experts=2, top_k=1, granularity=4, n_shared=1)
    assert (m.e, m.h, m.k) == (8, 3, 4)  # G·E experts of hidden d_ff/G, k·G active
    dense_ffn = 2 * 3 * 8 * 12
    assert m.flops_per_token() == dense_ffn + 2 * 3 * 8 * 3 + 2 * 8 * 8  # routed = 1 dense FFN, + shared + router
    y = m(torch.randn(2, 5, 8))
    assert y.shape == (2, 5, 8) and m.aux_loss is not None


def test_bad_router_name_is_one_line_error():
    with pytest.raises(ValueError, match="router='nope'"):
        MoE.from_config(CFG, router="nope")


def test_packed_experts_equal_per_expert_loop_values_and_grads():
    # Segments of 3, 0 (an idle expert), 5 and 1 rows; float64 against experts.one row by row, and gradcheck.
    from lmlab.nn.moe.experts import SwiGLUExperts
    torch.manual_seed(0)
    ex = SwiGLUExperts(4, 6, 5, std=0.5).double()
    counts = [3, 0, 5, 1]
    x = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    owner = [i for i, m in enumerate(counts) for _ in range(m)]
    want = torch.stack([ex.one(i, x[j]) for j, i in enumerate(owner)])
    y = ex(x, counts)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    params = [x, ex.w_gate, ex.w_up, ex.w_down]
    w = torch.randn_like(y)
    g1 = torch.autograd.grad((y * w).sum(), params)
    for a, b in zip(g1, torch.autograd.grad((want * w).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert g1[1][1].abs().max() == 0 and g1[1][2].abs().max() > 0   # the idle expert gets a zero gradient
    assert torch.autograd.gradcheck(lambda *t: ex(t[0], counts), (x,))
    with pytest.raises(ValueError, match="segment per expert"):
        ex(x, [3, 6])


@pytest.mark.parametrize("router,cf", [("topk_softmax_tc", None), ("topk_softmax_tc", 1.0), ("softmax_ec", None)])
def test_dropless_experts_see_only_the_assignments(router, cf):
    # Dropless token choice packs exactly k·s rows per group (no padding to the busiest expert); a fixed
    # capacity hands the padded (e, g·c, d) slot table to one bmm.
    m = _layer(router, n_experts=4, top_k=2, capacity_factor=cf, group="sequence")
    seen = []
    m.experts.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    r = m.router(m._to_groups(torch.randn(2, 7, 8, dtype=torch.float64)))
    m(torch.randn(2, 7, 8, dtype=torch.float64))
    if cf is None and not m.router.expert_choice:
        assert seen == [(2 * 7 * 2, 8)] and r.dropless
    else:
        assert seen == [(4, 2 * r.capacity, 8)] and not r.dropless


def test_packed_experts_under_cpu_autocast():
    # Under autocast the packed experts compute in bf16 and hand fp32 gradients back to fp32 parameters.
    torch.manual_seed(0)
    m = MoE.from_config(CFG, router="topk_softmax_tc", n_experts=4, top_k=2, capacity_factor=None)
    x = torch.randn(2, 7, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().square().sum().backward()
    ref = MoE.from_config(CFG, router="topk_softmax_tc", n_experts=4, top_k=2, capacity_factor=None)
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(y.float(), ref(x), rtol=0.05, atol=0.02)
    assert m.experts.w_gate.grad.dtype == torch.float32 and m.experts.w_gate.grad.abs().sum() > 0
