"""Tiny ViT: attention against the naive loop in float64 (values and gradients), row-major grid,
positional-embedding resizing, a swappable MLP (lmlab's MoE) and a classifier head that learns."""
import pytest
import torch

from lmlab.config import Dims
from lmlab.nn.moe.layer import MoE
from lmlab.registry import VISION_ENCODERS
from lmlab.vision.vit import ViT, attention, naive_attention


@pytest.mark.parametrize("n", [1, 15, 49])
def test_attention_matches_naive_float64(n):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out, ref = attention(q, k, v), naive_attention(q, k, v)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(out)
    ga = torch.autograd.grad((out * w).sum(), (q, k, v))
    gr = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(ga, gr):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_vit_fast_equals_naive_and_grid_is_row_major():
    vit = ViT(image_size=32, patch=8, width=24, depth=2, n_heads=3).double()
    x = torch.randn(2, 3, 24, 40, dtype=torch.float64)           # grid (3, 5): pos table resized from (4, 4)
    fast = vit(x)
    vit.set_naive(True)
    naive = vit(x)
    vit.set_naive(False)
    assert fast.shape == (2, 15, 24) and vit.grid(24, 40) == (3, 5)
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-12)
    f = vit.features(x)
    for i in range(3):
        for j in range(5):
            assert torch.equal(fast[:, i * 5 + j], f[:, :, i, j])
    # a ViT without attention mixing sees each patch alone: token (i, j) depends only on patch (i, j)
    x2 = x.clone()
    x2[:, :, 8:16, 32:40] += 1.0                                   # patch (1, 4)
    vit0 = ViT(image_size=32, patch=8, width=24, depth=0, n_heads=3).double()
    d = (vit0(x2) - vit0(x)).abs().sum(-1)                         # (2, 15)
    assert (d[:, 1 * 5 + 4] > 0).all() and (d.clone().index_fill_(1, torch.tensor([9]), 0) == 0).all()


def test_vit_mlp_swaps_for_moe_and_aux_loss_flows():
    def moe(i, d, f):
        dims = Dims(d_model=d, n_head=4, n_kv_head=4, head_dim=d // 4, ffn_hidden=f, n_layer=2, max_seq_len=64,
                    rope_theta=1e4, norm_eps=1e-5, dropout=0.0, sliding_window=None, layer_idx=i)
        return MoE(dims, MoE.Args(n_experts=4, top_k=1))

    vit = ViT(image_size=32, patch=8, width=32, depth=2, n_heads=4, n_classes=5, mlp_factory=moe)
    assert all(isinstance(b.mlp, MoE) for b in vit.blocks)
    x = torch.randn(3, 3, 32, 32)
    logits = vit.classify(x)
    aux = vit.aux_loss()
    assert logits.shape == (3, 5) and aux.item() > 0
    (logits.logsumexp(-1).sum() + aux).backward()
    assert vit.blocks[0].mlp.router.parameters().__next__().grad.abs().sum() > 0
    assert ViT(image_size=32, patch=8, width=32, depth=1).aux_loss().item() == 0.0


def test_vit_classifier_learns_a_two_class_image_task():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 16, 16) * 0.3
    y = torch.arange(32) % 2
    x[y == 1, 0, :8, :8] += 1.5                                    # class 1: red top-left quadrant
    vit = VISION_ENCODERS.get("vit")(image_size=16, patch=8, width=16, depth=1, n_heads=2, n_classes=2)
    opt = torch.optim.AdamW(vit.parameters(), lr=3e-3)
    w0 = vit.blocks[0].qkv.weight.detach().clone()
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(vit.classify(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and not torch.equal(w0, vit.blocks[0].qkv.weight)
    assert (vit.classify(x).argmax(-1) == y).float().mean() > 0.9


def test_vit_errors_name_the_argument():
    with pytest.raises(ValueError, match="patch"):
        ViT(image_size=30, patch=8)
    with pytest.raises(ValueError, match="n_heads"):
        ViT(width=30, n_heads=4)
    with pytest.raises(ValueError, match="no classifier head"):
        ViT(image_size=16, patch=8, width=8, depth=1, n_heads=2).classify(torch.randn(1, 3, 16, 16))
