"""Hyper-connections: exactly the pre-norm residual network at init (n = 1, 2, 4; static and dynamic), the
vectorised policy equals a per-stream naive loop (float64 values and gradients) once the matrices are trained
away from init, and (optional) equals lucidrains' `hyper-connections` package on identical parameters."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.nn.residual_hyper import HyperConnection, naive_hyper_connection

torch.set_num_threads(1)


def _cfg(**kw):
    base = dict(vocab_size=40, d_model=16, n_layer=3, n_head=2, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("dynamic", [False, True])
def test_exactly_prenorm_residual_at_init(n, dynamic):
    torch.manual_seed(0)
    ref = Decoder(_cfg())
    hc = Decoder(_cfg(residual="hyper", residual_args={"n": n, "dynamic": dynamic}))
    missing, unexpected = hc.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(("alpha" in k or "beta" in k or "stream_norm" in k) for k in missing)
    idx = torch.randint(0, 40, (2, 9))
    tgt = torch.randint(0, 40, (2, 9))
    o_ref, o_hc = ref(idx, tgt), hc(idx, tgt)
    assert torch.equal(o_hc.logits, o_ref.logits)  # bit-identical, not just close
    o_ref.loss.backward()
    o_hc.loss.backward()
    grads = dict(hc.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-5, atol=1e-7)
    extra = [p.grad for k, p in grads.items() if "static_alpha" in k or "dynamic_alpha_fn" in k]
    assert all(g is not None for g in extra) and (n == 1 or any(g.abs().sum() > 0 for g in extra))


def _trained_like(m: HyperConnection, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


@pytest.mark.parametrize("dynamic", [False, True])
def test_policy_equals_naive_loop_values_and_grads(dynamic):
    torch.manual_seed(0)
    cfg = _cfg(residual="hyper", residual_args={"n": 3, "dynamic": dynamic})
    m = HyperConnection.from_config(cfg, 1, 0, n=3, dynamic=dynamic).double()
    _trained_like(m)
    lin = torch.nn.Linear(16, 16).double()
    fn = lambda x: (torch.tanh(lin(x)), None)  # noqa: E731
    H = torch.randn(2, 5, 3, 16, dtype=torch.float64, requires_grad=True)
    out, _ = m(H, fn)
    A_m, A_r, B = m.matrices(H)
    shape = (2, 5)
    ref, _ = naive_hyper_connection(H, fn, m.norm, A_m.expand(*shape, 3), A_r.expand(*shape, 3, 3), B.expand(*shape, 3))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(out)
    params = [H] + list(m.parameters()) + list(lin.parameters())
    g1 = torch.autograd.grad((out * w).sum(), params, retain_graph=True)
    g2 = torch.autograd.grad((ref * w).sum(), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_expand_reduce_roundtrip_and_bad_n():
    cfg = _cfg(residual="hyper", residual_args={"n": 4})
    x = torch.randn(2, 3, 16)
    H = HyperConnection.expand(x, cfg)
    assert H.shape == (2, 3, 4, 16)
    assert torch.equal(HyperConnection.reduce(H, cfg), x)
    with pytest.raises(Exception, match="n=0"):
        Decoder(_cfg(residual="hyper", residual_args={"n": 0}))


@pytest.mark.skipif(importlib.util.find_spec("hyper_connections") is None,
                    reason="hyper-connections not installed: pip install hyper-connections")
def test_oracle_hyper_connections_package():
    from hyper_connections import HyperConnections

    torch.manual_seed(0)
    n, d = 4, 16
    cfg = _cfg(residual="hyper", residual_args={"n": n, "dynamic": True}, norm_eps=1e-12)
    ours = HyperConnection.from_config(cfg, 1, 1, n=n, dynamic=True)  # sublayer k = 3
    _trained_like(ours)
    lin = torch.nn.Linear(d, d)
    ref = HyperConnections(n, dim=d, layer_index=3, branch=lambda x: torch.tanh(lin(ours.norm(x))))
    with torch.no_grad():
        ref.static_alpha.copy_(ours.static_alpha)
        ref.static_beta.copy_(ours.static_beta)
        ref.dynamic_alpha_fn.copy_(ours.dynamic_alpha_fn)
        ref.dynamic_alpha_scale.copy_(ours.dynamic_alpha_scale)
        ref.dynamic_beta_fn.copy_(ours.dynamic_beta_fn)
        ref.dynamic_beta_scale.copy_(ours.dynamic_beta_scale)
        ref.norm.gamma.copy_(ours.stream_norm.weight - 1)  # theirs: normalize·√d·(γ + 1)
    H = torch.randn(2, 5, n, d)
    out_ref = ref(H.transpose(1, 2).reshape(2 * n, 5, d))  # theirs folds streams into the batch: (b·n, t, d)
    out_ref = out_ref.view(2, n, 5, d).transpose(1, 2)
    out, _ = ours(H, lambda x: (torch.tanh(lin(x)), None))
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    # and at init their static alpha is ours: A_m = e_{3 mod 4}, A_r = I, B = 1
    fresh = HyperConnections(n, dim=d, layer_index=3)
    torch.testing.assert_close(HyperConnection.from_config(cfg, 1, 1, n=n).static_alpha.detach(), fresh.static_alpha.detach())
