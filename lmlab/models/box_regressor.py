"""A small box regressor on frozen encoder features: the detector whose boxes label images that have no
ground truth (LocVLM's pseudo-data, made with a detector of our own instead of the paper's off-the-shelf one).

One-stage, YOLO-v1 style, on the encoder's row-major (g × g) grid. Notation: b = images, n = g·g cells,
c = encoder channels, K = classes; box = normalised (x0, y0, x1, y1); centre (cx, cy), size (w, h).

    out = MLP(F)                     (b, n, 1 + K + 4)     F: (b, n, c) features
    objectness  σ(out[..., 0])       a cell is responsible for the object whose centre falls in it
    class       softmax(out[..., 1:1+K])
    box         (col + σ(t_x)) / g, (row + σ(t_y)) / g, σ(t_w), σ(t_h)  -> centre and size

Targets (`encode_targets`): the responsible cell of each box (the larger box wins a shared cell) gets
objectness 1, its class and (cx·g − col, cy·g − row, w, h); loss = BCE(objectness over every cell)
+ CE(class) + L1(box) over responsible cells. `decode` inverts `encode_targets` exactly (tests check it).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Box = tuple[float, float, float, float]


class BoxRegressor(nn.Module):
    """(b, n, c) encoder features -> (b, n, 1 + K + 4) per-cell objectness, class and box logits."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 256):
        super().__init__()
        self.n_classes = n_classes
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, 1 + n_classes + 4))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


def grid_side(n: int) -> int:
    g = int(round(math.sqrt(n)))
    if g * g != n:
        raise ValueError(f"box regressor: {n} cells is not a square grid")
    return g


def encode_targets(objects: Sequence[Sequence[tuple[int, Box]]], g: int) -> tuple[torch.Tensor, ...]:
    """objects[i] = [(class index, normalised box)] of image i -> obj (b, n), cls (b, n) long (−100 where no
    object), reg (b, n, 4)."""
    b, n = len(objects), g * g
    obj = torch.zeros(b, n)
    cls = torch.full((b, n), -100, dtype=torch.long)
    reg = torch.zeros(b, n, 4)
    area = torch.full((b, n), -1.0)
    for i, objs in enumerate(objects):
        for k, (x0, y0, x1, y1) in objs:
            cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            col, row = min(g - 1, int(cx * g)), min(g - 1, int(cy * g))
            j = row * g + col
            if w * h <= area[i, j]:
                continue
            area[i, j] = w * h
            obj[i, j], cls[i, j] = 1.0, k
            reg[i, j] = torch.tensor([cx * g - col, cy * g - row, w, h])
    return obj, cls, reg


def box_loss(out: torch.Tensor, obj: torch.Tensor, cls: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """BCE(objectness) + CE(class) + L1(σ(box logits), reg) on responsible cells (see the module doc)."""
    K = out.shape[-1] - 5
    loss = F.binary_cross_entropy_with_logits(out[..., 0], obj)
    pos = obj > 0
    if bool(pos.any()):
        loss = loss + F.cross_entropy(out[..., 1:1 + K][pos], cls[pos])
        loss = loss + (torch.sigmoid(out[..., 1 + K:])[pos] - reg[pos]).abs().sum(-1).mean()
    return loss


def cell_boxes(reg: torch.Tensor, g: int) -> torch.Tensor:
    """(…, n, 4) cell-relative (dx, dy, w, h) -> (…, n, 4) normalised xyxy boxes."""
    n = g * g
    idx = torch.arange(n, device=reg.device)
    col, row = (idx % g).to(reg.dtype), (idx // g).to(reg.dtype)
    cx, cy = (col + reg[..., 0]) / g, (row + reg[..., 1]) / g
    w, h = reg[..., 2], reg[..., 3]
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, 1)


def decode(obj_prob: torch.Tensor, cls: torch.Tensor, reg: torch.Tensor, g: int,
           threshold: float = 0.5) -> list[list[tuple[int, Box, float]]]:
    """Per image, [(class index, normalised box, objectness)] for cells with objectness ≥ threshold.
    obj_prob (b, n) in [0, 1], cls (b, n) class indices, reg (b, n, 4) cell-relative boxes."""
    boxes = cell_boxes(reg, g)
    out = []
    for i in range(obj_prob.shape[0]):
        keep = (obj_prob[i] >= threshold).nonzero().flatten().tolist()
        out.append([(int(cls[i, j]), tuple(float(v) for v in boxes[i, j]), float(obj_prob[i, j])) for j in keep])
    return out


@torch.no_grad()
def detect(model: BoxRegressor, features: torch.Tensor, threshold: float = 0.5) -> list[list[tuple[int, Box, float]]]:
    """Detections of a trained regressor on (b, n, c) features (see `decode`)."""
    out = model(features.to(next(model.parameters()).dtype))
    K = model.n_classes
    g = grid_side(features.shape[1])
    return decode(torch.sigmoid(out[..., 0]), out[..., 1:1 + K].argmax(-1), torch.sigmoid(out[..., 1 + K:]), g,
                  threshold)


__all__ = ["BoxRegressor", "encode_targets", "box_loss", "decode", "detect", "cell_boxes", "grid_side"]
