"""Fused LM head + cross-entropy, the RMSNorm and RoPE autograd Functions: equal to their plain formulas (values, gradients)."""
import math

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.nn.losses import linear_cross_entropy, naive_linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 32, 1000])
def test_fused_equals_naive_float64(chunk):
    g = torch.Generator().manual_seed(chunk)
    n, d, v = 45, 12, 37
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    t[::5] = -100                                                   # ignored rows
    ref = naive_linear_cross_entropy(x, w, t)
    gx_ref, gw_ref = torch.autograd.grad(ref * 3.0, (x, w))
    out = linear_cross_entropy(x, w, t, chunk=chunk)
    gx, gw = torch.autograd.grad(out * 3.0, (x, w))                 # an upstream gradient other than 1
    assert abs(out.item() - ref.item()) < 1e-12
    assert (gx - gx_ref).abs().max() < 1e-12 and (gw - gw_ref).abs().max() < 1e-12
    # and against the definition written out: mean over valid rows of logsumexp − target logit
    logits = x.detach() @ w.detach().T
    keep = t != -100
    by_hand = (torch.logsumexp(logits[keep], 1) - logits[keep, t[keep]]).mean()
    assert math.isclose(out.item(), by_hand.item(), rel_tol=1e-12)


def test_all_targets_ignored_gives_nan_like_cross_entropy():
    x, w = torch.randn(4, 3), torch.randn(5, 3)
    t = torch.full((4,), -100)
    assert torch.isnan(linear_cross_entropy(x, w, t)) and torch.isnan(naive_linear_cross_entropy(x, w, t))


def test_row_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="rows of x"):
        linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(3, dtype=torch.long))


def test_decoder_fused_loss_equals_plain_with_tied_head():
    torch.manual_seed(0)
    m = Decoder(ModelConfig(vocab_size=97, d_model=32, n_layer=2, n_head=4, max_seq_len=32,
                            tie_embeddings=True)).double()
    x = torch.randint(0, 97, (3, 17))
    tgt = torch.randint(0, 97, (3, 17))
    tgt[0, :5] = -100
    fused = m(x, targets=tgt)
    assert fused._logits is None                                    # no (b, t, vocab) tensor was made
    g_fused = torch.autograd.grad(fused.loss, list(m.parameters()), retain_graph=True)
    plain_logits = m(x).logits
    plain = torch.nn.functional.cross_entropy(plain_logits.reshape(-1, 97), tgt.reshape(-1))
    g_plain = torch.autograd.grad(plain, list(m.parameters()))
    assert abs(fused.loss.item() - plain.item()) < 1e-12
    for a, b in zip(g_fused, g_plain):
        assert (a - b).abs().max() < 1e-12
    assert torch.equal(fused.logits, plain_logits)                 # made on first read, same values
    with torch.no_grad():                                           # evaluation makes the logits directly
        assert m(x, targets=tgt)._logits is not None


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 16)])
def test_rms_norm_function_equals_formula_float64(shape):
    from lmlab.nn.norm import naive_rms_norm, rms_norm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[-1], generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(*shape, generator=g, dtype=torch.float64)
    a, b = rms_norm(x, w), naive_rms_norm(x, w)
    assert (a - b).abs().max() < 1e-13
    ga, gb = torch.autograd.grad((a * up).sum(), (x, w)), torch.autograd.grad((b * up).sum(), (x, w))
    for p, q in zip(ga, gb):
        assert (p - q).abs().max() < 1e-12
    assert torch.autograd.gradcheck(lambda x_, w_: rms_norm(x_, w_), (x, w))


def test_rms_norm_bf16_computes_in_fp32():
    from lmlab.nn.norm import naive_rms_norm, rms_norm

    x = torch.randn(4, 32).bfloat16().requires_grad_()
    w = torch.randn(32).bfloat16().requires_grad_()
    out = rms_norm(x, w)
    assert out.dtype == torch.bfloat16 and torch.equal(out, naive_rms_norm(x, w))
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16


def test_rope_function_equals_rotate_half_formula_float64():
    from lmlab.nn.attention import apply_rope, naive_apply_rope, rope_cache

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 8, generator=g, dtype=torch.float64).transpose(1, 2).requires_grad_()  # strided
    cos, sin = rope_cache(torch.arange(3, 8)[None], 8, 10000.0)
    a, b = apply_rope(x, cos.double(), sin.double()), naive_apply_rope(x, cos.double(), sin.double())
    assert (a - b).abs().max() < 1e-13
    up = torch.randn(a.shape, generator=g, dtype=torch.float64)
    ga, gb = torch.autograd.grad((a * up).sum(), x), torch.autograd.grad((b * up).sum(), x)
    assert (ga[0] - gb[0]).abs().max() < 1e-13
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos.double(), sin.double()), (x,))
