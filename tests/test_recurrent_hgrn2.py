"""HGRN2: chunked and one-step forms equal the naive recurrence (float64 values and gradients), decoding
through the Decoder equals one full forward, and (optional) the op equals fla's naive GLA recurrence."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.nn.recurrent.hgrn2 import HGRN2, chunk_hgrn2, hgrn2_step, naive_hgrn2

torch.set_num_threads(1)


def _inputs(b=2, h=3, t=13, k=4, v=5, seed=0, state=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, k, generator=g, dtype=torch.float64)
    gate = torch.nn.functional.logsigmoid(torch.randn(b, h, t, k, generator=g, dtype=torch.float64) * 2)
    x = torch.randn(b, h, t, v, generator=g, dtype=torch.float64)
    s0 = torch.randn(b, h, k, v, generator=g, dtype=torch.float64) if state else None
    return [z.requires_grad_() if z is not None else None for z in (q, gate, x, s0)]


def _grads(fn, inputs, seed=1):
    o, s = fn(*inputs)
    g = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() + (s * s).sum()
    ins = [z for z in inputs if z is not None]
    return o.detach(), s.detach(), torch.autograd.grad(loss, ins)


@pytest.mark.parametrize("pairwise", [False, True])
@pytest.mark.parametrize("t,chunk", [(13, 4), (13, 5), (33, 16), (7, 32), (1, 8), (16, 16)])
def test_chunk_equals_naive_values_and_grads(t, chunk, pairwise):
    ins = _inputs(t=t)
    o1, s1, g1 = _grads(naive_hgrn2, ins)
    o2, s2, g2 = _grads(lambda *a: chunk_hgrn2(*a, chunk=chunk, pairwise=pairwise), ins)
    torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s1, rtol=1e-10, atol=1e-10)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_chunk_without_initial_state_and_strong_decay_is_finite():
    q, g, v, _ = _inputs(t=40, state=False)
    g = (g * 100).detach()  # log-decays of about −100 per step: exp(−B) overflows even in float64
    o1, s1 = naive_hgrn2(q, g, v)
    o2, s2 = chunk_hgrn2(q, g, v, chunk=16)  # auto: must pick the pairwise form here
    with torch.no_grad():
        bad, _ = chunk_hgrn2(q, g, v, chunk=16, pairwise=False)
    assert not torch.isfinite(bad).all()  # the guard is needed
    assert torch.isfinite(o2).all()
    torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s1, rtol=1e-10, atol=1e-10)


def test_step_equals_naive():
    q, g, v, s = [z.detach() for z in _inputs(t=9)]
    o_ref, s_ref = naive_hgrn2(q, g, v, s)
    outs = []
    for i in range(9):
        o, s = hgrn2_step(q[:, :, i:i + 1], g[:, :, i:i + 1], v[:, :, i:i + 1], s)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-12)


def test_naive_accumulates_in_fp32_for_low_precision_inputs():
    q, g, v, _ = [z.detach() if z is not None else None for z in _inputs(t=6, state=False)]
    o, s = naive_hgrn2(q.bfloat16(), g.bfloat16(), v.bfloat16())
    assert o.dtype == torch.float32 and s.dtype == torch.float32


def _cfg(**kw):
    base = dict(vocab_size=50, d_model=16, n_layer=3, n_head=2, max_seq_len=64, layer_pattern=["hgrn2"],
                mixer_args={"hgrn2": {"expand": 4, "chunk": 8}})
    base.update(kw)
    return ModelConfig(**base)


def test_module_chunk_equals_naive_param_grads():
    torch.manual_seed(0)
    cfg = _cfg(n_layer=1)
    m = HGRN2.from_config(cfg, 0, expand=4, chunk=5).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    y1, _ = m(x)
    g1 = torch.autograd.grad(y1.square().sum(), list(m.parameters()))
    m.mode = "naive"
    y2, _ = m(x)
    g2 = torch.autograd.grad(y2.square().sum(), list(m.parameters()))
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_lower_bounds_increase_with_depth_and_bound_the_gate():
    torch.manual_seed(0)
    model = Decoder(_cfg(n_layer=4))
    lbs = [float(b.mixer.lower_bound) for b in model.blocks]
    assert lbs == [0.0, 0.25, 0.5, 0.75]
    x = torch.randn(1, 5, 16) * 10
    for blk, lb in zip(model.blocks, lbs):
        _, g, _ = blk.mixer.gates(x)
        assert float(g.detach().exp().min()) >= lb - 1e-6


@pytest.mark.parametrize("expand", [1, 4])
def test_prefill_then_decode_equals_full_forward(expand):
    torch.manual_seed(0)
    cfg = _cfg(layer_pattern=["hgrn2", "attn"], mixer_args={"hgrn2": {"expand": expand, "chunk": 4}})
    model = Decoder(cfg).double().eval()
    idx = torch.randint(0, 50, (2, 15))
    full = model(idx).logits
    states = model.init_states(2, 32)
    out = model(idx[:, :6], states=states)           # prefill through the chunked form with a state
    logits = [out.logits]
    states = out.states
    for i in range(6, 15):                            # then one token at a time
        out = model(idx[:, i:i + 1], states=states)
        states = out.states
        logits.append(out.logits)
    # the Decoder's own RMSNorms run in fp32 even for a float64 model, hence 1e-6 rather than 1e-9
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-6, atol=1e-6)
    assert states[0].shape == (2, 16 // expand, expand, expand)  # constant in context length


def test_params_do_not_depend_on_expand():
    counts = {e: Decoder(_cfg(mixer_args={"hgrn2": {"expand": e}})).num_params() for e in (1, 2, 4, 8)}
    assert len(set(counts.values())) == 1


def test_bad_expand_is_a_one_line_error():
    with pytest.raises(Exception, match="expand=3"):
        Decoder(_cfg(mixer_args={"hgrn2": {"expand": 3}}))


def _load_fla_naive():
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = f"{list(spec.submodule_search_locations)[0]}/ops/gla/naive.py"
    # fla's package __init__ needs triton (GPU); its naive reference is plain torch, loaded by file path.
    s = importlib.util.spec_from_file_location("_fla_gla_naive", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(importlib.util.find_spec("fla") is None,
                    reason="flash-linear-attention (fla) not installed: pip install flash-linear-attention")
def test_oracle_fla_naive_recurrent_gla():
    fla = _load_fla_naive()
    q, g, v, s = [z.detach() for z in _inputs(t=11, k=4, v=6)]
    k = 1 - g.exp()
    # fla layout (b, t, h, ·); it scales q by k^-1/2, HGRN2 reads S_tᵀq_t unscaled.
    tr = lambda z: z.transpose(1, 2).contiguous()  # noqa: E731
    o_ref, s_ref = fla.naive_recurrent_gla(tr(q) * math.sqrt(4), tr(k), tr(v), tr(g), initial_state=s,
                                           output_final_state=True)
    o, s_out = chunk_hgrn2(q, g, v, s, chunk=4)
    # fla's reference accumulates in fp32
    torch.testing.assert_close(o.float(), tr(o_ref).float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s_out.float(), s_ref.float(), rtol=1e-4, atol=1e-4)
