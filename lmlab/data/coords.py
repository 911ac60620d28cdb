"""Coordinates as text: one formatter/parser pair for boxes and points, in four formats.

Used on its own (no model, no scenes): `format_box` turns a normalised box into the text a model is taught to
write, `parse_box` reads it back from model output and returns None — never raises — when the output is not a
well-formed box of that format.

Notation: box = (x0, y0, x1, y1) normalised to [0, 1] (x right, y down, x0 ≤ x1, y0 ≤ y1);
point = (x, y) normalised; size = (W, H) in pixels (only the "pixels" format needs it); N = number of bins.

Formats (text is always "[a, b, c, d]" for a box and "[a, b]" for a point):
    float2    normalised floats with 2 decimals, "[0.12, 0.40, 0.56, 0.93]"    (LocVLM's best-known textual form)
    bins100   integers in [0, 100): bin = min(N − 1, ⌊v·N⌋), read back as the bin centre (bin + 0.5)/N
    bins1000  the same with N = 1000 (the 0–999 range of MM1.5 and Ferret)
    pixels    integers round(v·W) / round(v·H) in [0, W] / [0, H], read back as px/W, px/H

Round trip: |parse(format(v)) − v| ≤ 0.005 (float2), ≤ 1/(2N) (bins), ≤ 1/(2W) or 1/(2H) (pixels).

Parsing model output: the first "[...]" group in the text is taken (text around it is ignored, e.g. "It is at
[12, 40, 56, 93]."); it is rejected (None) when it has the wrong number of entries, an entry that is not a
plain ASCII number of the format's kind (a float in an integer format, NaN, inf, signs, exponents), a
value out of range, or an inverted box (x0 > x1 or y0 > y1). A caller error — an unknown format, or "pixels"
without a size — raises ValueError, because that is a bug in the program, not bad model output.

Refs: Ranasinghe et al. 2024, "Learning to Localize Objects Improves Spatial Reasoning in Visual-LLMs"
(LocVLM: normalised-float and integer-bin textual coordinates); Zhang et al. 2024, "MM1.5" and You et al.
2024, "Ferret-v2" (coordinates as integers in 0–999).
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

FORMATS = ("float2", "bins100", "bins1000", "pixels")

Box = tuple[float, float, float, float]
Point = tuple[float, float]

_GROUP = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"[0-9]+")
_FLOAT2 = re.compile(r"[0-9]+\.[0-9]+|[0-9]+")   # "0.12"; also "1", "0" or "0.125" (a number, whatever its decimals)


def _check(fmt: str, size: Optional[Sequence[int]]) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"coords: unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "pixels":
        if size is None or len(size) != 2 or min(int(size[0]), int(size[1])) < 1:
            raise ValueError(f"coords: format 'pixels' needs size=(W, H) with W, H >= 1, got size={size!r}")


def _bins(fmt: str) -> int:
    return {"bins100": 100, "bins1000": 1000}[fmt]


def _encode(v: float, fmt: str, extent: Optional[int]) -> str:
    v = min(1.0, max(0.0, float(v)))
    if fmt == "float2":
        return f"{v:.2f}"
    if fmt == "pixels":
        assert extent is not None
        return str(int(round(v * extent)))
    n = _bins(fmt)
    return str(min(n - 1, int(math.floor(v * n))))


def _decode(tok: str, fmt: str, extent: Optional[int]) -> Optional[float]:
    tok = tok.strip()
    if fmt == "float2":
        if not _FLOAT2.fullmatch(tok):
            return None
        v = float(tok)
        return v if 0.0 <= v <= 1.0 else None
    if not _INT.fullmatch(tok):
        return None
    i = int(tok)
    if fmt == "pixels":
        assert extent is not None
        return i / extent if i <= extent else None
    n = _bins(fmt)
    return (i + 0.5) / n if i < n else None


def _extents(fmt: str, size: Optional[Sequence[int]], k: int) -> list[Optional[int]]:
    if fmt != "pixels":
        return [None] * k
    assert size is not None
    W, H = int(size[0]), int(size[1])
    return [W, H] * (k // 2)


def _format(values: Sequence[float], fmt: str, size) -> str:
    _check(fmt, size)
    return "[" + ", ".join(_encode(v, fmt, e) for v, e in zip(values, _extents(fmt, size, len(values)))) + "]"


def _parse(text, fmt: str, size, k: int) -> Optional[tuple[float, ...]]:
    _check(fmt, size)
    if not isinstance(text, str):
        return None
    m = _GROUP.search(text)
    if m is None:
        return None
    parts = m.group(1).split(",")
    if len(parts) != k:
        return None
    out = []
    for tok, e in zip(parts, _extents(fmt, size, k)):
        v = _decode(tok, fmt, e)
        if v is None:
            return None
        out.append(v)
    return tuple(out)


def format_box(box_xyxy_norm: Sequence[float], fmt: str, size: Optional[Sequence[int]] = None) -> str:
    """Text of a normalised (x0, y0, x1, y1) box in format `fmt` (values are clipped to [0, 1])."""
    if len(box_xyxy_norm) != 4:
        raise ValueError(f"coords: a box has 4 values (x0, y0, x1, y1), got {len(box_xyxy_norm)}")
    return _format(box_xyxy_norm, fmt, size)


def parse_box(text, fmt: str, size: Optional[Sequence[int]] = None) -> Optional[Box]:
    """Normalised (x0, y0, x1, y1) from model output, or None when it is not a well-formed box of `fmt`."""
    v = _parse(text, fmt, size, 4)
    if v is None or v[0] > v[2] or v[1] > v[3]:
        return None
    return (v[0], v[1], v[2], v[3])


def format_point(point_xy_norm: Sequence[float], fmt: str, size: Optional[Sequence[int]] = None) -> str:
    """Text of a normalised (x, y) point in format `fmt`."""
    if len(point_xy_norm) != 2:
        raise ValueError(f"coords: a point has 2 values (x, y), got {len(point_xy_norm)}")
    return _format(point_xy_norm, fmt, size)


def parse_point(text, fmt: str, size: Optional[Sequence[int]] = None) -> Optional[Point]:
    """Normalised (x, y) from model output, or None when it is not a well-formed point of `fmt`."""
    v = _parse(text, fmt, size, 2)
    return None if v is None else (v[0], v[1])


def round_trip_tolerance(fmt: str, size: Optional[Sequence[int]] = None) -> tuple[float, float]:
    """Largest |parse(format(v)) − v| along x and along y for format `fmt` (see the notation block)."""
    _check(fmt, size)
    if fmt == "float2":
        return (0.005, 0.005)
    if fmt == "pixels":
        assert size is not None
        return (0.5 / int(size[0]), 0.5 / int(size[1]))
    n = _bins(fmt)
    return (0.5 / n, 0.5 / n)


# ---- helpers shared by the grounding tasks ---------------------------------------------------------------

def normalise_box(box_px: Sequence[float], size: Sequence[int]) -> Box:
    """Pixel box (x0, y0, x1, y1), x1/y1 exclusive, in an image of size (W, H) → normalised box."""
    W, H = float(size[0]), float(size[1])
    return (box_px[0] / W, box_px[1] / H, box_px[2] / W, box_px[3] / H)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (any common unit); 0 when both are empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
