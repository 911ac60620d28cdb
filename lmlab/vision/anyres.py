"""Any-resolution, multi-granularity encoding (Ferret-v2, Zhang et al., 2024, arXiv:2404.07973, §3.2):
a large image is seen twice — whole, downscaled to the encoder's native side by encoder A (the paper's CLIP:
"global" view), and as a grid of native-size tiles by encoder B (the paper's DINOv2: "local" view). The tile
feature grids are stitched back into one high-resolution map, and the global map, upsampled to that size, is
added to it; the visual sampler (lmlab.vision.region) pools region features from the merged map.

Notation: b = batch, c = channels, S = native input side, (H, W) = canvas = (R·S, C·S), R × C tiles in
row-major order (tile t = (t // C, t % C)), g = S / stride = grid side of one tile (and of the global view).

    global   G = A(resize(x, S))                                  (b, c, g, g)
    tiles    T = B(split(x))                                      (b·R·C, c, g, g)   one batched call
    stitch   L[:, :, r·g:(r+1)·g, k·g:(k+1)·g] = T[b·R·C + r·C + k]
                                                                  (b, c, R·g, C·g)
    merge    M = L + up(G)                                        up = bilinear (align_corners=False) to (R·g, C·g)

`stitch` is one reshape/permute; `naive_stitch` copies tile by tile, and `naive_encode` runs encoder B once
per tile position (the per-tile loop that benchmarks/vlm.py times against the batched call). With an
identity encoder (stride 1, features = pixels) the stitched map is the full-resolution image exactly; with a
real CNN the tiles' borders see zero padding, which is what the paper accepts.

Authors' code: github.com/apple/ml-ferret (Ferret-v2 is described in the paper; its merge follows LLaVA-NeXT's
any-res tiling); this module follows the paper's text, not that code.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from lmlab.registry import VISION_ENCODERS
from lmlab.vision.base import VisionEncoder


def tile_grid(h: int, w: int, size: int) -> tuple[int, int]:
    """(R, C) tiles of side `size` covering an (h, w) canvas; h and w must be multiples of size."""
    if h % size or w % size:
        raise ValueError(f"any-res: canvas {w}×{h} is not a multiple of the native side {size}")
    return h // size, w // size


def split_tiles(x: torch.Tensor, size: int) -> torch.Tensor:
    """(b, ch, R·S, C·S) -> (b·R·C, ch, S, S), tiles in row-major order within each image."""
    b, ch, h, w = x.shape
    R, C = tile_grid(h, w, size)
    return x.reshape(b, ch, R, size, C, size).permute(0, 2, 4, 1, 3, 5).reshape(b * R * C, ch, size, size)


def stitch(tiles: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(b·R·C, c, gh, gw) tile feature grids -> (b, c, R·gh, C·gw) one map (inverse of split_tiles)."""
    n, c, gh, gw = tiles.shape
    if n % (rows * cols):
        raise ValueError(f"stitch: {n} tiles is not a multiple of {rows}×{cols}")
    b = n // (rows * cols)
    return tiles.reshape(b, rows, cols, c, gh, gw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * gh, cols * gw)


def naive_stitch(tiles: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Reference for `stitch`: copy each tile into its place."""
    n, c, gh, gw = tiles.shape
    b = n // (rows * cols)
    out = tiles.new_zeros(b, c, rows * gh, cols * gw)
    for i in range(b):
        for r in range(rows):
            for k in range(cols):
                out[i, :, r * gh:(r + 1) * gh, k * gw:(k + 1) * gw] = tiles[i * rows * cols + r * cols + k]
    return out


def upsample_to(f: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(b, c, h, w) -> (b, c, gh, gw), bilinear (the paper's interpolation of the global features)."""
    if tuple(f.shape[-2:]) == (gh, gw):
        return f
    return F.interpolate(f, size=(gh, gw), mode="bilinear", align_corners=False)


def merge(local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
    """Ferret-v2's merge: the high-resolution local map plus the upsampled global map (equal channels)."""
    if local.shape[1] != global_.shape[1]:
        raise ValueError(f"any-res merge: local map has {local.shape[1]} channels, global {global_.shape[1]}; "
                         "project them to one width first")
    return local + upsample_to(global_, *local.shape[-2:])


def downscale(x: torch.Tensor, size: int) -> torch.Tensor:
    """(b, ch, H, W) -> (b, ch, S, S): the global view (bilinear with antialiasing)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@VISION_ENCODERS.register("anyres")
class AnyResEncoder(VisionEncoder):
    """Ferret-v2 any-resolution encoder: global view by encoder A, tiles by encoder B, stitched and merged."""

    def __init__(self, a: "str | VisionEncoder" = "efficientnet_lite0", b: "str | VisionEncoder" = "mobilenet_v2",
                 native: int = 128, a_args: Optional[dict] = None, b_args: Optional[dict] = None,
                 frozen: Optional[bool] = None):
        super().__init__(bool(frozen))
        self.a = VISION_ENCODERS.get(a)(**(a_args or {})) if isinstance(a, str) else a
        self.b = VISION_ENCODERS.get(b)(**(b_args or {})) if isinstance(b, str) else b
        if self.a.out_dim != self.b.out_dim:
            raise ValueError(f"anyres: encoders A ({self.a.out_dim}) and B ({self.b.out_dim}) need equal channels "
                             "for the merge")
        self.native, self.out_dim, self.stride = native, self.b.out_dim, self.b.stride
        self.weights_id = f"anyres({self.a.weights_id}|{self.b.weights_id}|S={native})"
        if frozen is None and self.a.frozen and self.b.frozen:
            self._freeze_on_init = True
        self._finish_init()

    def grid(self, h: int, w: int) -> tuple[int, int]:
        R, C = tile_grid(h, w, self.native)
        gh, gw = self.b.grid(self.native, self.native)
        return R * gh, C * gw

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global (b, c, g, g), stitched local map (b, c, R·g, C·g)), tiles through B in one batched call."""
        R, C = tile_grid(images.shape[2], images.shape[3], self.native)
        g = self.a.features(downscale(images, self.native))
        local = stitch(self.b.features(split_tiles(images, self.native)), R, C)
        return g, local

    def naive_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference for `views`: encoder B called once per tile position, tiles copied into place."""
        S = self.native
        R, C = tile_grid(images.shape[2], images.shape[3], S)
        g = self.a.features(downscale(images, S))
        rows = [torch.cat([self.b.features(images[:, :, r * S:(r + 1) * S, k * S:(k + 1) * S]) for k in range(C)],
                          dim=3) for r in range(R)]
        return g, torch.cat(rows, dim=2)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        g, local = self.views(images)
        return merge(local, g)                                           # (b, c, R·g, C·g)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            f = self.features(images)
        return f.flatten(2).transpose(1, 2)


__all__ = ["tile_grid", "split_tiles", "stitch", "naive_stitch", "upsample_to", "merge", "downscale",
           "AnyResEncoder"]
