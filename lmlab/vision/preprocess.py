"""Image preprocessing: PIL image -> normalised (3, S, S) tensor, with three ways to reach a square.

Notation: (W, H) = source size, S = target side, s = scale, (dx, dy) = offset of the resized image in the
S × S input, c = channel.

    resize      naive resize to S × S (aspect ratio not kept):   s_x = S/W, s_y = S/H, dx = dy = 0
    letterbox   keep aspect, fit the long side, pad to square:    s = S/max(W, H), dx = (S − round(sW))//2 …
                padding is the ImageNet mean colour, so it normalises to ≈ 0
    crop        keep aspect, fit the short side, centre crop:     s = S/min(W, H), dx = (S − round(sW))//2 ≤ 0
    x_c = (pixel_c / 255 − mean_c) / std_c                          ImageNet statistics

`input_box` maps a box in source pixels to input pixels with the same (s, dx, dy), so grounding targets follow
the image through any mode. Resampling is bilinear (Pillow), the same call for every image, so a given
image always yields the same tensor.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("resize", "letterbox", "crop")
_PAD = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)   # (124, 116, 104)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown preprocess mode {mode!r}; choose one of: {', '.join(MODES)}")


def geometry(src: tuple[int, int], size: int, mode: str) -> tuple[float, float, int, int, int, int]:
    """(s_x, s_y, dx, dy, w', h'): the source is resized to (w', h') and pasted at (dx, dy) in S × S."""
    _check_mode(mode)
    w, h = src
    if mode == "resize":
        return size / w, size / h, 0, 0, size, size
    s = size / (max(w, h) if mode == "letterbox" else min(w, h))
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    return nw / w, nh / h, (size - nw) // 2, (size - nh) // 2, nw, nh


def to_square(img: Image.Image, size: int, mode: str = "resize") -> Image.Image:
    """The S × S RGB image the encoder sees (before normalisation)."""
    img = img.convert("RGB")
    sx, sy, dx, dy, nw, nh = geometry(img.size, size, mode)
    if mode == "resize":
        return img.resize((size, size), Image.BILINEAR)
    resized = img.resize((nw, nh), Image.BILINEAR)
    out = Image.new("RGB", (size, size), _PAD)
    out.paste(resized, (dx, dy))   # crop mode: negative offsets, Pillow clips to the canvas
    return out


def to_tensor(img: Image.Image, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32, normalised."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0          # (H, W, 3)
    x = torch.from_numpy(a.copy()).permute(2, 0, 1)                        # (3, H, W)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


def preprocess(img: Image.Image, size: int = 224, mode: str = "resize") -> torch.Tensor:
    """PIL image -> (3, S, S) normalised tensor."""
    return to_tensor(to_square(img, size, mode))


def preprocess_batch(images: Sequence[Image.Image], size: int = 224, mode: str = "resize") -> torch.Tensor:
    """List of PIL images -> (B, 3, S, S)."""
    return torch.stack([preprocess(im, size, mode) for im in images])


def input_box(box: tuple[int, int, int, int], src: tuple[int, int], size: int,
              mode: str = "resize") -> tuple[float, float, float, float]:
    """A source-pixel box (x0, y0, x1, y1) in input-pixel coordinates (may fall outside in crop mode)."""
    sx, sy, dx, dy, _, _ = geometry(src, size, mode)
    x0, y0, x1, y1 = box
    return x0 * sx + dx, y0 * sy + dy, x1 * sx + dx, y1 * sy + dy
