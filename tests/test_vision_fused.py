"""Prismatic fused encoder: grid resampling against the per-cell loop (float64, values and gradients) and
the fused tokens against a hand-built per-patch concatenation."""
import pytest
import torch

from lmlab.registry import VISION_ENCODERS
from lmlab.vision.fused import FusedEncoder, naive_resample, resample
from lmlab.vision.vit import ViT


@pytest.mark.parametrize("src,dst", [((7, 7), (7, 7)), ((14, 14), (7, 7)), ((7, 5), (3, 2)), ((4, 4), (8, 8)),
                                     ((5, 3), (7, 4)), ((1, 1), (3, 3)), ((15, 9), (4, 6))])
def test_resample_matches_naive_float64(src, dst):
    f = torch.randn(2, 5, *src, dtype=torch.float64, requires_grad=True)
    out, ref = resample(f, *dst), naive_resample(f, *dst)
    assert out.shape == (2, 5, *dst)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ref)
    (g1,) = torch.autograd.grad((out * w).sum(), f)
    (g2,) = torch.autograd.grad((ref * w).sum(), f)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_resample_is_area_mean_for_integer_factors():
    f = torch.arange(16.0).view(1, 1, 4, 4)
    assert resample(f, 2, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert torch.equal(resample(f[:, :, :2, :2], 4, 4)[0, 0], f[0, 0, :2, :2].repeat_interleave(2, 0)
                       .repeat_interleave(2, 1))


@pytest.mark.parametrize("grid_from", ["a", "b"])
def test_fused_tokens_are_per_patch_concatenation(grid_from):
    a = ViT(image_size=32, patch=4, width=12, depth=1, n_heads=2).double()      # grid 8×8 at 32 px
    b = ViT(image_size=32, patch=8, width=20, depth=1, n_heads=2).double()      # grid 4×4
    fused = FusedEncoder(a, b, grid_from=grid_from)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    tokens = fused(x)
    gh, gw = (8, 8) if grid_from == "a" else (4, 4)
    assert fused.grid(32, 32) == (gh, gw) and fused.out_dim == 32 and tokens.shape == (2, gh * gw, 32)
    fa, fb = naive_resample(a.features(x), gh, gw), naive_resample(b.features(x), gh, gw)
    for i in range(gh):
        for j in range(gw):
            torch.testing.assert_close(tokens[:, i * gw + j], torch.cat([fa[:, :, i, j], fb[:, :, i, j]], -1),
                                       rtol=1e-12, atol=1e-12)
    tokens.sum().backward()                                       # both towers trainable here
    assert a.patch_embed.weight.grad is not None and b.patch_embed.weight.grad is not None


def test_fused_by_name_mixes_frozen_and_trainable():
    fused = VISION_ENCODERS.get("fused")(a="vit", b="mobilenet_v2", grid_from="b",
                                         a_args=dict(image_size=64, patch=8, width=16, depth=1, n_heads=2),
                                         b_args=dict(pretrained=False))
    assert not fused.frozen and fused.b.frozen and not fused.a.frozen
    fused.train()
    assert fused.a.training and not fused.b.training
    out = fused(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 4, 16 + 1280)
    out.sum().backward()
    assert fused.a.patch_embed.weight.grad is not None
    assert all(p.grad is None for p in fused.b.parameters())
    with pytest.raises(ValueError, match="grid_from"):
        FusedEncoder(fused.a, fused.b, grid_from="c")
