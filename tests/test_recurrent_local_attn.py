"""Local MQA attention: the blocked O(t·W) form equals the explicit masked reference (float64, values and
gradients, lengths not divisible by the window, with and without cached keys); decoding through a Griffin
(R, R, local) Decoder equals one full forward while the cache stays at W − 1 keys."""
from __future__ import annotations

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.nn.attention import naive_attention
from lmlab.nn.recurrent.local_attn import blocked_local_attention

torch.set_num_threads(1)


@pytest.mark.parametrize("t,c,W", [(13, 0, 4), (13, 3, 4), (5, 2, 8), (16, 0, 16), (1, 0, 3), (20, 1, 2), (9, 0, 1)])
def test_blocked_equals_naive(t, c, W):
    g = torch.Generator().manual_seed(t * 100 + c)
    q = torch.randn(2, 4, t, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 1, c + t, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 1, c + t, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y1 = blocked_local_attention(q, k, v, W)
    y2 = naive_attention(q, k, v, torch.arange(c, c + t), torch.arange(c + t), window=W)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    w = torch.randn(y1.shape, generator=g, dtype=torch.float64)
    g1 = torch.autograd.grad((y1 * w).sum(), (q, k, v))
    g2 = torch.autograd.grad((y2 * w).sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _cfg():
    return ModelConfig(vocab_size=40, d_model=16, n_layer=3, n_head=4, max_seq_len=64,
                       layer_pattern=["rglru", "rglru", "local_attn"], mixer_args={"local_attn": {"window": 4}})


def test_local_attn_equals_windowed_attn_mixer_and_decodes():
    torch.manual_seed(0)
    model = Decoder(_cfg()).double().eval()
    ref_cfg = _cfg().model_copy(update={"layer_pattern": ["rglru", "rglru", "attn"],
                                        "mixer_args": {"attn": {"window": 4, "n_kv_head": 1}}})
    ref = Decoder(ref_cfg).double().eval()
    ref.load_state_dict(model.state_dict())
    idx = torch.randint(0, 40, (2, 15))
    full = model(idx).logits
    torch.testing.assert_close(full, ref(idx).logits, rtol=1e-9, atol=1e-9)
    out = model(idx[:, :6], states=model.init_states(2, 64))
    logits, states = [out.logits], out.states
    for i in range(6, 15):
        out = model(idx[:, i:i + 1], states=states)
        logits.append(out.logits)
        states = out.states
        assert states[2].k.shape[2] == min(3, i + 1)  # never more than W − 1 keys
    # the Decoder's RMSNorms run in fp32 even for a float64 model, hence 1e-6
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-6, atol=1e-6)
