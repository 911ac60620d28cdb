"""RG-LRU / Griffin recurrent block: the associative scan and vectorised conv equal their naive loops
(float64 values and gradients), prefill-then-decode through a (R, R, local-MQA) Decoder equals one full
forward, documents reset, and (optional) everything equals recurrentgemma's torch modules on equal weights."""
from __future__ import annotations

import importlib.util
import sys
import types
import typing

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.nn.recurrent.rglru import (RecurrentBlock, SqrtBoundDerivative, conv1d, linear_scan, naive_conv1d,
                                      naive_linear_scan, segment_ids)

torch.set_num_threads(1)
F64 = dict(rtol=1e-10, atol=1e-10)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("t", [1, 2, 5, 13, 64, 100])
def test_scan_equals_naive_values_and_grads(t):
    a = torch.sigmoid(_rand(2, t, 6, seed=1) * 3)
    a[:, t // 2] = 0.0  # a document reset in the middle
    a.requires_grad_()
    x = _rand(2, t, 6, seed=2).requires_grad_()
    h0 = _rand(2, 6, seed=3).requires_grad_()
    w = _rand(2, t, 6, seed=4)
    res = []
    for fn in (naive_linear_scan, linear_scan):
        y, h = fn(a, x, h0)
        loss = (y * w).sum() + h.square().sum()
        res.append((y, h, torch.autograd.grad(loss, (a, x, h0))))
    (y1, h1, g1), (y2, h2, g2) = res
    torch.testing.assert_close(y2, y1, **F64)
    torch.testing.assert_close(h2, h1, **F64)
    for p, q in zip(g2, g1):
        torch.testing.assert_close(p, q, **F64)


def test_conv_equals_naive_with_segments_and_cache():
    x = _rand(2, 9, 5, seed=1).requires_grad_()
    w = _rand(4, 5, seed=2).requires_grad_()
    b = _rand(5, seed=3).requires_grad_()
    cache = _rand(2, 3, 5, seed=4)
    pos = torch.tensor([[3, 4, 0, 1, 2, 3, 0, 1, 2], [5, 6, 7, 8, 9, 10, 11, 12, 13]])
    seg = torch.cat([torch.zeros(2, 3, dtype=torch.long), segment_ids(pos)], 1)
    ys = [f(x, w, b, seg, cache) for f in (naive_conv1d, conv1d)]
    gs = [torch.autograd.grad((y * _rand(*y.shape, seed=5)).sum(), (x, w, b)) for y in ys]
    torch.testing.assert_close(ys[1], ys[0], **F64)
    for p, q in zip(gs[1], gs[0]):
        torch.testing.assert_close(p, q, **F64)
    # across a boundary nothing leaks: the output at the first token of doc 2 sees only that token
    torch.testing.assert_close(ys[1][0, 2], b + w[3] * x[0, 2], **F64)


def _cfg(**kw):
    base = dict(vocab_size=40, d_model=16, n_layer=3, n_head=4, max_seq_len=64, layer_pattern=["rglru", "rglru", "attn"],
                mixer_args={"attn": {"window": 4, "n_kv_head": 1}})
    base.update(kw)
    return ModelConfig(**base)


def test_block_scan_equals_naive_param_grads():
    torch.manual_seed(0)
    m = RecurrentBlock.from_config(_cfg(), 0).double()
    x = _rand(2, 11, 16)
    outs = []
    for scan in ("naive", "scan"):
        m.scan = scan
        y, _ = m(x)
        outs.append((y, torch.autograd.grad(y.square().sum(), list(m.parameters()))))
    torch.testing.assert_close(outs[1][0], outs[0][0], **F64)
    for p, q in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(p, q, **F64)


def test_a_initialised_in_ring_and_sqrt_gradient_clipped():
    m = RecurrentBlock.from_config(_cfg(d_model=256, n_head=4), 0)
    a0 = torch.exp(-torch.nn.functional.softplus(m.a_param.detach()))
    assert 0.9 <= float(a0.min()) and float(a0.max()) <= 0.999 + 1e-6
    z = torch.zeros(3, requires_grad=True)
    SqrtBoundDerivative.apply(z).sum().backward()
    torch.testing.assert_close(z.grad, torch.full((3,), 1000.0))


def test_prefill_then_decode_equals_full_forward_griffin_pattern():
    torch.manual_seed(0)
    model = Decoder(_cfg()).double().eval()
    idx = torch.randint(0, 40, (2, 14))
    full = model(idx).logits
    out = model(idx[:, :5], states=model.init_states(2, 32))
    logits, states = [out.logits], out.states
    for i in range(5, 14):
        out = model(idx[:, i:i + 1], states=states)
        logits.append(out.logits)
        states = out.states
    # the Decoder's RMSNorms run in fp32 even for a float64 model, hence 1e-6
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-6, atol=1e-6)
    assert states[0].h.shape == (2, 16) and states[0].conv.shape == (2, 3, 16)  # constant memory
    assert states[2].k.shape[1] == 1  # local attention is MQA


def test_document_reset_isolates_documents():
    torch.manual_seed(0)
    m = RecurrentBlock.from_config(_cfg(), 0).double()
    x = _rand(1, 12, 16)
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])
    y, _ = m(x, positions=pos)
    y2, _ = m(x[:, 5:])
    torch.testing.assert_close(y[:, 5:], y2, **F64)
    m.doc_reset = False
    y3, _ = m(x, positions=pos)
    assert (y3[:, 5:] - y2).abs().max() > 1e-6


def test_bad_scan_name_is_a_one_line_error():
    with pytest.raises(Exception, match="scan='x'"):
        Decoder(_cfg(mixer_args={"rglru": {"scan": "x"}}))


# ---------------------------------------------------------------------------------- recurrentgemma oracle
def _load_recurrentgemma(monkeypatch):
    spec = importlib.util.find_spec("recurrentgemma")
    root = list(spec.submodule_search_locations)[0]
    # The package __init__ imports jax/flax and array_typing needs jaxtyping: stub both and load the torch
    # files by path.
    pkg = types.ModuleType("recurrentgemma")
    pkg.__path__ = [root]
    tpkg = types.ModuleType("recurrentgemma.torch")
    tpkg.__path__ = [f"{root}/torch"]
    at = types.ModuleType("recurrentgemma.torch.array_typing")
    at.typed = lambda f: f
    at.__getattr__ = lambda name: typing.Any
    for name, mod in (("recurrentgemma", pkg), ("recurrentgemma.torch", tpkg),
                      ("recurrentgemma.torch.array_typing", at)):
        monkeypatch.setitem(sys.modules, name, mod)
    tpkg.array_typing = at
    import recurrentgemma.torch.modules as modules  # noqa: E402
    return modules


@pytest.mark.skipif(importlib.util.find_spec("recurrentgemma") is None or importlib.util.find_spec("einops") is None,
                    reason="recurrentgemma (and einops) not installed: pip install --no-deps recurrentgemma einops")
def test_oracle_recurrentgemma_block(monkeypatch):
    rg = _load_recurrentgemma(monkeypatch)
    torch.manual_seed(0)
    ours = RecurrentBlock.from_config(_cfg(), 0)
    ref = rg.RecurrentBlock(width=16, num_heads=4, lru_width=16, conv1d_temporal_width=4)
    with torch.no_grad():
        for a, b in (("linear_x", "linear_x"), ("linear_y", "linear_y"), ("linear_out", "linear_out")):
            getattr(ref, b).weight.copy_(getattr(ours, a).weight)
            getattr(ref, b).bias.copy_(torch.randn(16) * 0.1)
            getattr(ours, a).bias.copy_(getattr(ref, b).bias)
        ref.conv_1d.w.copy_(ours.conv_w)
        ours.conv_b.copy_(torch.randn(16) * 0.1)
        ref.conv_1d.b.copy_(ours.conv_b)
        ref.rg_lru.a_param.copy_(ours.a_param)
        for g in ("input_gate", "a_gate"):
            getattr(ref.rg_lru, g).w.copy_(getattr(ours, g).w)
            getattr(ours, g).b.copy_(torch.randn(4, 4) * 0.1)
            getattr(ref.rg_lru, g).b.copy_(getattr(ours, g).b)
    x = torch.randn(2, 10, 16)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5], list(range(10))])
    y_ref, cache = ref(x, pos)
    y, _ = ours(x, positions=pos)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    # decode one more token from the prefill cache on both sides
    x1 = torch.randn(2, 1, 16)
    y1_ref, cache1 = ref(x1, torch.tensor([[6], [10]]), cache=cache)
    st = ours.init_state(2, 16)
    _, st = ours(x, state=st, positions=pos)
    y1, st = ours(x1, state=st, positions=torch.tensor([[6], [10]]))
    torch.testing.assert_close(y1, y1_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.h, cache1.rg_lru_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.conv, cache1.conv1d_state, rtol=1e-5, atol=1e-5)
