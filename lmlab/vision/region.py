"""Visual sampler for referring (Ferret, You et al., 2023, §3.2; Ferret-v2 applies it to the merged
high-resolution map): the features of a referred region — a box or a free-form mask — pooled into one vector
that the VLM inserts at a `<region>` token.

Notation: b = images, c = channels, (gh, gw) = feature grid, r = regions, (hm, wm) = mask resolution, box =
(x0, y0, x1, y1) normalised to [0, 1] (x1, y1 exclusive), cell (i, j) = [j/gw, (j+1)/gw) × [i/gh, (i+1)/gh).

    box weight    w[i, j] = |[x0, x1) ∩ cell_x(j)| · gw  ·  |[y0, y1) ∩ cell_y(i)| · gh   (fraction of the cell
                                                                                          the box covers)
    mask weight   w[i, j] = mean of the mask over the pixels of cell (i, j)   (hm, wm multiples of gh, gw)
    pool          v = Σ_ij w[i, j] · F[:, i, j] / Σ_ij w[i, j]                (r, c)

This is a stand-in for Ferret's sampler, named as one: Ferret samples N points inside the region, reads
features at those points, and fuses them with learned kNN/PointNet-style layers before pooling. Area-
weighted pooling is the limit of uniform point sampling with nearest-cell reads (each cell contributes in
proportion to the region's area inside it), without the learned fusion; the region projector after it is
learned. `naive_region_pool` computes each box's overlaps with explicit loops, for the float64 test.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def box_weights(boxes: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(r, 4) normalised boxes -> (r, gh, gw) fraction of each cell covered by the box."""
    edges_x = torch.arange(gw + 1, dtype=boxes.dtype, device=boxes.device) / gw
    edges_y = torch.arange(gh + 1, dtype=boxes.dtype, device=boxes.device) / gh
    x0, y0, x1, y1 = boxes.unbind(-1)
    ox = (torch.minimum(x1[:, None], edges_x[None, 1:]) - torch.maximum(x0[:, None], edges_x[None, :-1]))
    oy = (torch.minimum(y1[:, None], edges_y[None, 1:]) - torch.maximum(y0[:, None], edges_y[None, :-1]))
    return (oy.clamp(min=0) * gh)[:, :, None] * (ox.clamp(min=0) * gw)[:, None, :]   # (r, gh, gw)


def mask_weights(masks: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(r, hm, wm) masks (bool or [0, 1]) -> (r, gh, gw) mean mask value per cell."""
    hm, wm = masks.shape[-2:]
    if hm % gh or wm % gw:
        raise ValueError(f"region mask {wm}×{hm} is not a multiple of the feature grid {gw}×{gh}")
    return F.avg_pool2d(masks.to(torch.get_default_dtype() if not masks.is_floating_point() else masks.dtype)
                        [:, None], (hm // gh, wm // gw))[:, 0]


def region_pool(fmap: torch.Tensor, image_index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of fmap (b, c, gh, gw) over each region's weights (r, gh, gw); region k reads image
    image_index[k]. Returns (r, c). A region with zero total weight is an error."""
    tot = weights.sum((1, 2))                                              # (r,)
    if bool((tot <= 0).any()):
        k = int((tot <= 0).nonzero()[0])
        raise ValueError(f"visual sampler: region {k} covers no feature cell (empty box or mask)")
    f = fmap[image_index]                                                  # (r, c, gh, gw)
    return torch.einsum("rhw,rchw->rc", weights.to(f.dtype), f) / tot.to(f.dtype)[:, None]


def pool_boxes(fmap: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(r, c) region features of normalised boxes (r, 4) on fmap (b, c, gh, gw)."""
    return region_pool(fmap, image_index, box_weights(boxes.to(fmap.dtype), *fmap.shape[-2:]))


def pool_masks(fmap: torch.Tensor, image_index: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(r, c) region features of free-form masks (r, hm, wm) on fmap (b, c, gh, gw)."""
    return region_pool(fmap, image_index, mask_weights(masks, *fmap.shape[-2:]).to(fmap.dtype))


def naive_region_pool(fmap: torch.Tensor, image_index, boxes) -> torch.Tensor:
    """Reference for pool_boxes: one box at a time, one cell at a time, overlaps from scalar arithmetic."""
    b, c, gh, gw = fmap.shape
    out = []
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        acc, tot = torch.zeros(c, dtype=fmap.dtype), 0.0
        for i in range(gh):
            for j in range(gw):
                ox = max(0.0, min(x1, (j + 1) / gw) - max(x0, j / gw)) * gw
                oy = max(0.0, min(y1, (i + 1) / gh) - max(y0, i / gh)) * gh
                if ox * oy > 0:
                    acc = acc + ox * oy * fmap[int(image_index[k]), :, i, j]
                    tot += ox * oy
        out.append(acc / tot)
    return torch.stack(out)


def box_mask(box, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool mask of a pixel box (x0, y0, x1, y1) on a (W, H) canvas."""
    W, H = size
    m = torch.zeros(H, W, dtype=torch.bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    m[max(y0, 0):min(y1, H), max(x0, 0):min(x1, W)] = True
    return m


__all__ = ["box_weights", "mask_weights", "region_pool", "pool_boxes", "pool_masks", "naive_region_pool",
           "box_mask"]
