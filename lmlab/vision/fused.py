"""Fused visual features (Prismatic VLMs, Karamcheti et al., 2024): two encoders see the same image, their
feature grids are resampled to one grid and concatenated per patch along channels.

Notation: b = batch, c_a, c_b = channels of encoders A and B, (gh, gw) = target grid (A's grid by default),
(ih, iw) = a source grid, n = gh·gw.

    F_A: (b, c_a, ih_a, iw_a),  F_B: (b, c_b, ih_b, iw_b)
    R(F)[i, j] = mean of F over source cells [⌊i·ih/gh⌋, ⌈(i+1)·ih/gh⌉) × [⌊j·iw/gw⌋, ⌈(j+1)·iw/gw⌉)
                                                        (adaptive average pooling: exact area mean when the
                                                        source grid is a multiple of the target, the nearest
                                                        cell repeated when the target is finer)
    fused = concat_c(R(F_A), R(F_B))                    (b, c_a + c_b, gh, gw) -> (b, n, c_a + c_b)

`resample` is F.adaptive_avg_pool2d; `naive_resample` computes every target cell with explicit index
bounds, and the two are tested against each other. Both encoders take the same preprocessed input; the
projector after this module sees one token of c_a + c_b channels per patch (Prismatic's DINOv2 ⊕ SigLIP).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from lmlab.registry import VISION_ENCODERS
from lmlab.vision.base import VisionEncoder


def resample(f: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(b, c, ih, iw) -> (b, c, gh, gw) by adaptive average pooling."""
    if tuple(f.shape[-2:]) == (gh, gw):
        return f
    return F.adaptive_avg_pool2d(f, (gh, gw))


def naive_resample(f: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Reference: one target cell at a time, mean over its source window."""
    ih, iw = f.shape[-2:]
    out = f.new_empty(*f.shape[:2], gh, gw)
    for i in range(gh):
        r0, r1 = (i * ih) // gh, -((-(i + 1) * ih) // gh)
        for j in range(gw):
            c0, c1 = (j * iw) // gw, -((-(j + 1) * iw) // gw)
            out[:, :, i, j] = f[:, :, r0:r1, c0:c1].mean((2, 3))
    return out


@VISION_ENCODERS.register("fused")
class FusedEncoder(VisionEncoder):
    """Prismatic fused encoder: two encoders, grids resampled to one, channels concatenated per patch."""

    def __init__(self, a: "str | VisionEncoder" = "efficientnet_lite0", b: "str | VisionEncoder" = "mobilenet_v2",
                 a_args: Optional[dict] = None, b_args: Optional[dict] = None, grid_from: str = "a",
                 frozen: Optional[bool] = None):
        super().__init__(bool(frozen))
        if grid_from not in ("a", "b"):
            raise ValueError(f"fused: grid_from={grid_from!r}; choose 'a' or 'b'")
        self.a = VISION_ENCODERS.get(a)(**(a_args or {})) if isinstance(a, str) else a
        self.b = VISION_ENCODERS.get(b)(**(b_args or {})) if isinstance(b, str) else b
        self.grid_from = grid_from
        self.out_dim = self.a.out_dim + self.b.out_dim
        self.stride = (self.a if grid_from == "a" else self.b).stride
        self.weights_id = f"fused({self.a.weights_id}|{self.b.weights_id}|grid={grid_from})"
        if frozen is None and self.a.frozen and self.b.frozen:
            self._freeze_on_init = True
        self._finish_init()

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return (self.a if self.grid_from == "a" else self.b).grid(h, w)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid(images.shape[2], images.shape[3])
        fa = resample(self.a.features(images), gh, gw)                 # (b, c_a, gh, gw)
        fb = resample(self.b.features(images), gh, gw)                 # (b, c_b, gh, gw)
        return torch.cat([fa, fb], dim=1)                              # (b, c_a + c_b, gh, gw)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            f = self.features(images)
        return f.flatten(2).transpose(1, 2)
