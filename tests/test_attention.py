"""Attention fast path vs a float64 naive reference (values and gradients), and KV-cache decoding."""
import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.models import build_model
from lmlab.nn.attention import Attention, naive_attention, sdpa_attention


@pytest.mark.parametrize("h,k,window,t", [(4, 4, None, 17), (4, 2, None, 13), (4, 1, None, 9), (4, 2, 5, 19)])
def test_sdpa_matches_naive_float64(h, k, window, t):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, h, t, 8, dtype=torch.float64, generator=g, requires_grad=True)
    kk = torch.randn(2, k, t, 8, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(2, k, t, 8, dtype=torch.float64, generator=g, requires_grad=True)
    pos = torch.arange(t)
    a = sdpa_attention(q, kk, v, pos, pos, window)
    b = naive_attention(q, kk, v, pos, pos, window)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(a)
    ga = torch.autograd.grad((a * w).sum(), (q, kk, v))
    gb = torch.autograd.grad((b * w).sum(), (q, kk, v))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def test_sliding_window_masks_far_keys():
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layer=1, n_head=2, sliding_window=3)
    attn = Attention.from_config(cfg).double()
    x = torch.randn(1, 10, 16, dtype=torch.float64, requires_grad=True)
    y, _ = attn(x)
    # output at position 9 depends only on positions 7, 8, 9
    g = torch.autograd.grad(y[0, 9].sum(), x)[0][0]
    assert torch.all(g[:7] == 0) and torch.all(g[7:].abs().sum(-1) > 0)


@pytest.mark.parametrize("kv,window", [(None, None), (1, None), (2, 4)])
def test_kv_cache_decode_equals_full_forward(kv, window):
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layer=2, n_head=4, n_kv_head=kv, sliding_window=window,
                      max_seq_len=64)
    m = build_model(cfg).double().eval()
    x = torch.randint(0, 50, (3, 20))
    full = m(x).logits
    states = m.init_states(3, 32)
    outs = [m(x[:, :7], states=states).logits]          # prefill 7 tokens
    for i in range(7, 20):                               # then one token at a time
        outs.append(m(x[:, i:i + 1], states=states).logits)
    inc = torch.cat(outs, 1)
    torch.testing.assert_close(inc, full, rtol=1e-9, atol=1e-9)


def test_tied_head_and_param_count():
    cfg = ModelConfig(vocab_size=100, d_model=32, n_layer=2, n_head=4)
    m = build_model(cfg)
    assert m.head.weight is m.embed.weight
    from lmlab.models import count_params, flops_per_token

    per_layer = 4 * 32 * 32 + 3 * 32 * cfg.ffn_hidden + 2 * 32
    assert count_params(m) == 2 * per_layer + 32
    assert count_params(m, non_embedding=False) == 2 * per_layer + 32 + 100 * 32
    assert flops_per_token(m, context=10) == 2 * (2 * 4 * 32 * 32 + 2 * 2 * 32 * 10 + 2 * 3 * 32 * cfg.ffn_hidden) + 2 * 32 * 100


def test_rank_constrained_head():
    cfg = ModelConfig(vocab_size=100, d_model=32, n_layer=1, n_head=4, head_rank=4)
    m = build_model(cfg)
    assert torch.linalg.matrix_rank(m.head.weight.detach()) <= 4
    assert m(torch.randint(0, 100, (1, 5))).logits.shape == (1, 5, 100)
