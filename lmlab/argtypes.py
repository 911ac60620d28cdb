"""argparse `type=` validators shared by every command: a bad number or text fails in argparse's one line
(`lmlab <cmd>: error: argument --x: ...`) before anything is loaded.

    p.add_argument("--max-tokens", type=int_range(1, 1 << 20), default=128)
    p.add_argument("--top-p", type=float_range(0.0, 1.0, lo_open=False), default=1.0)
    p.add_argument("--prompt", type=text)                 # valid UTF-8, no NUL
This module imports nothing from lmlab: every layer may use it.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Optional

__all__ = ["int_range", "float_range", "text", "path_text", "positive_int", "nonneg_int", "port", "out_path", "in_path"]


def _bounds(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"{'<' if hi_open else '<='} {hi}"


def int_range(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s.strip().replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is out of range (must be {_bounds(lo, hi)})")
        return v
    parse.__name__ = "integer"
    return parse


def float_range(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
                hi_open: bool = False) -> Callable[[str], float]:
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{s!r} is not a finite number")
        if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and (v > hi or (hi_open and v == hi)):
            raise argparse.ArgumentTypeError(f"{v:g} is out of range (must be {_bounds(lo, hi, lo_open, hi_open)})")
        return v
    parse.__name__ = "number"
    return parse


def text(s: str) -> str:
    """Command-line text that is valid UTF-8 (undecodable bytes reach Python as lone surrogates) and has no NUL."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = s[e.start].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(f"not valid UTF-8 (byte {bad!r} at character {e.start})") from None
    if "\x00" in s:
        raise argparse.ArgumentTypeError("contains a NUL character")
    return s


def path_text(s: str) -> str:
    """A path argument: non-empty text (see `text`)."""
    if not s.strip():
        raise argparse.ArgumentTypeError("empty path")
    return text(s)


positive_int = int_range(1)
nonneg_int = int_range(0)
port = int_range(0, 65535)


def out_path(s: str) -> "Path":
    """An output path that can be created: neither it nor any existing ancestor is a regular file (checked
    when the command line is parsed, before any work)."""
    from pathlib import Path

    p = Path(path_text(s))
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{s} exists and is not a directory")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{parent} is a file, not a directory")
            break
    return p


def in_path(s: str) -> "Path":
    """An input path that exists."""
    from pathlib import Path

    p = Path(path_text(s))
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{s}: no such file or directory")
    return p
