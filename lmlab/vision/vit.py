"""A small Vision Transformer (Dosovitskiy et al., 2021) trained from scratch: the encoder for arms that need
a transformer image tower (Prismatic's second encoder, V-MoE-style MoE layers via `mlp_factory`).

Notation: b = batch, p = patch side, (gh, gw) = (⌈h/p⌉, ⌈w/p⌉), n = gh·gw patches, d = width,
nh = heads, hd = d/nh, L = depth.

    z_0 = W_patch · patches(x) + E_pos                     (b, n, d)  conv p×p stride p; E_pos learnt on the
                                                          `image_size` grid, bilinearly resized for other grids
    z'_l = z_{l−1} + MHSA(LN(z_{l−1}))                     pre-norm, no causal mask, no class token
    z_l  = z'_l + MLP(LN(z'_l))                            MLP = mlp_factory(layer, d, d_ff); GELU MLP by default
    features = LN(z_L)                                      (b, n, d), row-major over the patch grid
    classify(x) = W_head · mean_n features                  (b, n_classes)

    MHSA: softmax(q kᵀ / √hd) v per head; `attention` is F.scaled_dot_product_attention, `naive_attention`
    the per-(batch, head, query) loop it is tested against in float64.

Any `mlp_factory` module maps (b, n, d) -> (b, n, d); if it exposes `aux_loss` (lmlab's MoE does),
`ViT.aux_loss()` sums them over layers for the trainer.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.registry import VISION_ENCODERS
from lmlab.vision.base import VisionEncoder

MLPFactory = Callable[[int, int, int], nn.Module]   # (layer_idx, d_model, d_ff) -> module


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional attention. q, k, v: (b, nh, n, hd) -> (b, nh, n, hd)."""
    return F.scaled_dot_product_attention(q, k, v)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference: one query at a time, explicit softmax."""
    b, nh, n, hd = q.shape
    out = torch.empty_like(q)
    for bi in range(b):
        for h in range(nh):
            for i in range(n):
                s = (k[bi, h] @ q[bi, h, i]) / math.sqrt(hd)          # (n,)
                w = torch.exp(s - s.max())
                out[bi, h, i] = (w / w.sum()) @ v[bi, h]            # (hd,)
    return out


class GeluMLP(nn.Module):
    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def gelu_mlp(layer_idx: int, d: int, d_ff: int) -> nn.Module:
    return GeluMLP(d, d_ff)


class ViTBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, mlp: nn.Module, naive: bool = False):
        super().__init__()
        if d % n_heads:
            raise ValueError(f"vit: width {d} is not divisible by n_heads={n_heads}")
        self.nh, self.naive = n_heads, naive
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.nh, d // self.nh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                               # (b, nh, n, hd)
        a = (naive_attention if self.naive else attention)(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


@VISION_ENCODERS.register("vit")
class ViT(VisionEncoder):
    """Tiny ViT from scratch: patch embedding, pre-norm blocks, mean-pool classifier head."""

    def __init__(self, image_size: int = 64, patch: int = 8, width: int = 128, depth: int = 4,
                 n_heads: int = 4, mlp_ratio: float = 4.0, n_classes: int = 0,
                 mlp_factory: Optional[MLPFactory] = None, frozen: bool = False, weights_id: str = "random"):
        super().__init__(frozen)
        if image_size % patch:
            raise ValueError(f"vit: image_size={image_size} is not a multiple of patch={patch}")
        self.patch, self.stride, self.out_dim = patch, patch, width
        self.base_grid = image_size // patch
        self.weights_id = weights_id
        self.patch_embed = nn.Conv2d(3, width, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, self.base_grid ** 2, width) * 0.02)
        factory = mlp_factory or gelu_mlp
        d_ff = int(width * mlp_ratio)
        self.blocks = nn.ModuleList(ViTBlock(width, n_heads, factory(i, width, d_ff)) for i in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes) if n_classes else None
        self._finish_init()

    def set_naive(self, naive: bool = True) -> None:
        for blk in self.blocks:
            blk.naive = naive

    def pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """(1, gh·gw, d): the learnt table, bilinearly resized when the grid differs."""
        g = self.base_grid
        if (gh, gw) == (g, g):
            return self.pos
        p = self.pos.transpose(1, 2).reshape(1, -1, g, g)
        p = F.interpolate(p, size=(gh, gw), mode="bilinear", align_corners=False)
        return p.flatten(2).transpose(1, 2)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        gh, gw = self.grid(h, w)
        ph, pw = gh * self.patch - h, gw * self.patch - w
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph))
        x = self.patch_embed(images).flatten(2).transpose(1, 2)                 # (b, n, d)
        x = x + self.pos_embed(gh, gw).to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)                                                     # (b, n, d)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid(images.shape[2], images.shape[3])
        x = self.tokens(images)
        return x.transpose(1, 2).reshape(x.shape[0], self.out_dim, gh, gw)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.tokens(images)                                          # (b, n, d)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise ValueError("vit: built with n_classes=0, so it has no classifier head")
        return self.head(self(images).mean(1))

    def aux_loss(self) -> torch.Tensor:
        """Sum of the `aux_loss` of every MLP that has one (MoE layers); 0 otherwise."""
        terms = [blk.mlp.aux_loss for blk in self.blocks if getattr(blk.mlp, "aux_loss", None) is not None]
        return torch.stack(terms).sum() if terms else torch.zeros(())
