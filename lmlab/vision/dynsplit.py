"""MM1.5's dynamic image splitting: pick the tile grid that fits the image best, cut the tiles, add an overview.

Zhang et al. 2024, "MM1.5: Methods, Analysis & Insights from Multimodal LLM Fine-tuning", §dynamic image
splitting (after LLaVA-NeXT's any-resolution grid selection): among grids of c columns × r rows with
n_min ≤ c·r ≤ n_max tiles of S × S pixels, choose the one with the least resolution loss when the image is fit
into the c·S × r·S canvas, ties broken by the least padding; the image also enters as one downscaled
overview tile; each tile's position is marked in the sequence.

Notation: (W, H) image size, S tile side, (c, r) grid (columns, rows), canvas (C_w, C_h) = (c·S, r·S).

    s          = min(C_w / W, C_h / H)                    fit inside the canvas, aspect ratio kept
    effective  = W·H · min(1, s²)                          pixels of the image that survive (upscaling adds none)
    loss       = W·H − effective                           resolution loss
    padding    = C_w·C_h − effective                        canvas area wasted (LLaVA-NeXT's `select_best_resolution`:
                                                           an upscaled image wastes what it does not bring)
    choice     = argmin over grids of (loss, padding, c·r, c)   (last two: deterministic ties, fewer tiles first)

The fitted image (W·s × H·s, rounded down, at least 1 px) is centred on the canvas, padded with the ImageNet
mean colour (as letterbox in lmlab.vision.preprocess), and cut into row-major tiles. `naive_select_grid`
is the brute-force twin (exact rational arithmetic over every c, r ≤ n_max); tests compare them.
A fixed square grid (LLaVA-1.5-HD style static splitting) is `fixed_grid(n)`: ⌊√n⌋ × ⌊√n⌋ for every image.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional

from PIL import Image

_PAD = (124, 116, 104)   # ImageNet mean colour, as lmlab.vision.preprocess pads
TILE_MARKER = "<image>"


def candidate_grids(n_max: int, n_min: int = 1) -> list[tuple[int, int]]:
    """Every (c, r) with n_min ≤ c·r ≤ n_max, in order of tiles then columns."""
    if n_max < 1 or not 1 <= n_min <= n_max:
        raise ValueError(f"dynamic splitting: need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    return sorted(((c, n // c) for n in range(n_min, n_max + 1) for c in range(1, n + 1) if n % c == 0),
                  key=lambda g: (g[0] * g[1], g[0]))


def fit_cost(size: tuple[int, int], grid: tuple[int, int], tile: int) -> tuple[float, float]:
    """(resolution loss, padding) in pixels of fitting an image of `size` into `grid` (see the module doc)."""
    W, H = size
    cw, ch = grid[0] * tile, grid[1] * tile
    s = min(cw / W, ch / H)
    area = float(W) * H
    effective = area * min(1.0, s * s)
    return area - effective, cw * ch - effective


def select_grid(size: tuple[int, int], n_max: int, tile: int, n_min: int = 1) -> tuple[int, int]:
    """The (columns, rows) grid MM1.5 picks for an image of `size` = (W, H)."""
    if min(size) < 1:
        raise ValueError(f"dynamic splitting: image size {size} must be positive")
    best, key = None, None
    for g in candidate_grids(n_max, n_min):
        loss, pad = fit_cost(size, g, tile)
        area = float(size[0]) * size[1]
        # relative rounding: costs equal up to 1e-9 of the image area count as ties
        k = (round(loss / area, 9), round(pad / area, 9), g[0] * g[1], g[0])
        if key is None or k < key:
            best, key = g, k
    assert best is not None
    return best


def naive_select_grid(size: tuple[int, int], n_max: int, tile: int, n_min: int = 1) -> tuple[int, int]:
    """Brute-force twin of `select_grid`: every c, r in 1..n_max, exact fractions, one sort."""
    W, H = size
    rows = []
    for c in range(1, n_max + 1):
        for r in range(1, n_max + 1):
            if not n_min <= c * r <= n_max:
                continue
            s = min(Fraction(c * tile, W), Fraction(r * tile, H))
            effective = min(Fraction(W * H), W * H * s * s)
            rows.append((W * H - effective, c * r * tile * tile - effective, c * r, c, r))
    rows.sort()
    return rows[0][3], rows[0][4]


def fixed_grid(n_max: int) -> tuple[int, int]:
    """The static square grid with at most n_max tiles."""
    g = math.isqrt(n_max)
    return g, g


def fit_to_canvas(img: Image.Image, grid: tuple[int, int], tile: int) -> Image.Image:
    """The image resized with its aspect ratio kept to fit the grid's canvas, centred, padded."""
    W, H = img.size
    cw, ch = grid[0] * tile, grid[1] * tile
    s = min(cw / W, ch / H)
    nw, nh = max(1, min(cw, int(W * s))), max(1, min(ch, int(H * s)))
    canvas = Image.new("RGB", (cw, ch), _PAD)
    canvas.paste(img.convert("RGB").resize((nw, nh), Image.BILINEAR), ((cw - nw) // 2, (ch - nh) // 2))
    return canvas


def split_tiles(img: Image.Image, grid: tuple[int, int], tile: int) -> list[Image.Image]:
    """Row-major S × S tiles of the fitted canvas: tile (i, j) covers canvas pixels [j·S, (j+1)·S) × [i·S, …)."""
    canvas = fit_to_canvas(img, grid, tile)
    return [canvas.crop((j * tile, i * tile, (j + 1) * tile, (i + 1) * tile))
            for i in range(grid[1]) for j in range(grid[0])]


def overview(img: Image.Image, tile: int) -> Image.Image:
    """The downscaled whole image as one tile (aspect ratio kept, padded: a 1 × 1 grid)."""
    return fit_to_canvas(img, (1, 1), tile)


def tile_prompt(grid: tuple[int, int], markers: bool = True) -> str:
    """The image part of the prompt: the overview, then every tile with its (row, column) marker, one text
    line per grid row; without markers only the image placeholders (and line breaks between rows)."""
    lines = [("overview " if markers else "") + TILE_MARKER]
    for i in range(grid[1]):
        lines.append(" ".join((f"({i + 1},{j + 1}) " if markers else "") + TILE_MARKER for j in range(grid[0])))
    return "\n".join(lines)


def dynamic_split(img: Image.Image, n_max: int, tile: int, n_min: int = 1, fixed: bool = False,
                  markers: bool = True) -> tuple[list[Image.Image], str, tuple[int, int]]:
    """(images = [overview, tiles row-major], the prompt's image part with one `<image>` per image, grid).
    fixed=True uses the static square grid instead of selecting one."""
    grid = fixed_grid(n_max) if fixed else select_grid(img.size, n_max, tile, n_min)
    return [overview(img, tile)] + split_tiles(img, grid, tile), tile_prompt(grid, markers), grid


__all__ = ["candidate_grids", "fit_cost", "select_grid", "naive_select_grid", "fixed_grid", "fit_to_canvas",
           "split_tiles", "overview", "tile_prompt", "dynamic_split", "TILE_MARKER"]
