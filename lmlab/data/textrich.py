"""Text-rich synthetic images at extreme aspect ratios (MM1.5's dynamic-splitting experiment): banners (wide),
receipts (tall) and signs (near square), words drawn with matplotlib's DejaVu Sans Bold, answers exact.

Notation: a = W / H aspect ratio, L = long side in pixels, k = words in reading order (left to right on a
banner or sign, top to bottom on a receipt); rng = numpy Generator seeded by SeedSequence([seed, split, i, 11]).

    |log a| ~ U[0, log a_max], orientation wide or tall with probability ½      a ∈ [1/a_max, a_max]
    kind    = sign if max(a, 1/a) < 2, banner if wide, receipt if tall
    W, H    = L, L / a (wide) or L·a, L (tall); words: 1 (sign) to 3, distinct, from lmlab.data.scenes.WORDS
    layout  = the words side by side (banner, sign) or stacked (receipt), each in its own equal slot along
              the long side; the font size is the largest (≤ 0.6 of the short side) at which every word fits
              0.85 of its slot; dark ink on one of a few light paper colours

Questions: "What is word j?" (j = 1 … k) with the word as the answer; and "How many words are written?".
Aspect buckets (for reporting): by max(a, 1/a): "1–2", "2–4", "4–8".
Same (seed, split, index, options) → the same image bytes and questions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from lmlab.data.scenes import QA, SPLITS, WORDS, _NUM, _word_font

PAPER = {"white": (255, 255, 255), "cream": (250, 244, 225), "light blue": (215, 232, 250),
         "light yellow": (252, 246, 200)}
INK = {"black": (20, 20, 20), "navy": (20, 30, 110), "dark red": (130, 20, 20)}
BUCKETS = ("1–2", "2–4", "4–8")


@dataclass
class TextScene:
    image: Image.Image
    words: list[str]                              # reading order
    boxes: list[tuple[int, int, int, int]]        # word boxes in pixels (x1, y1 exclusive)
    kind: str                                     # sign | banner | receipt
    size: tuple[int, int]
    aspect: float                                 # W / H
    seed: int
    index: int
    split: str = "train"


def aspect_bucket(aspect: float) -> str:
    r = max(aspect, 1 / aspect)
    return BUCKETS[0] if r < 2 else BUCKETS[1] if r < 4 else BUCKETS[2]


class TextRichGenerator:
    """Seeded, indexable text-rich images: scene(i) is a pure function of (seed, split, i, options)."""

    def __init__(self, seed: int = 0, split: str = "train", long_side: int = 512, max_aspect: float = 8.0,
                 max_words: int = 3, vocab: Optional[list[str]] = None):
        if split not in SPLITS:
            raise ValueError(f"textrich: unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        if max_aspect < 1 or long_side < 32 or not 1 <= max_words <= 6:
            raise ValueError(f"textrich: need max_aspect >= 1, long_side >= 32, 1 <= max_words <= 6 "
                             f"(got {max_aspect}, {long_side}, {max_words})")
        self.vocab = list(vocab) if vocab else list(WORDS)
        bad = [w for w in self.vocab if w not in WORDS]
        if bad or len(self.vocab) < max_words:
            raise ValueError(f"textrich: vocab must hold at least {max_words} words of scenes.WORDS (bad: {bad})")
        self.seed, self.split, self.L, self.max_aspect, self.max_words = seed, split, long_side, max_aspect, max_words

    def scene(self, index: int) -> TextScene:
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index, 11])
        r = math.exp(rng.uniform(0, math.log(self.max_aspect)))
        wide = bool(rng.random() < 0.5)
        aspect = r if wide else 1 / r
        W, H = (self.L, max(8, int(round(self.L / r)))) if wide else (max(8, int(round(self.L / r))), self.L)
        kind = "sign" if r < 2 else "banner" if wide else "receipt"
        k = 1 + int(rng.integers(0, self.max_words)) if kind != "sign" else 1 + int(rng.integers(0, min(2, self.max_words)))
        words = [self.vocab[j] for j in rng.permutation(len(self.vocab))[:k]]
        paper = list(PAPER)[int(rng.integers(len(PAPER)))]
        ink = INK[list(INK)[int(rng.integers(len(INK)))]]
        img = Image.new("RGB", (W, H), PAPER[paper])
        draw = ImageDraw.Draw(img)
        stacked = not wide and kind == "receipt"
        slot = (H if stacked else W) / k                       # slot length along the long side
        short = W if stacked else H
        size = max(6, int(0.6 * min(short, slot)))
        while size > 6:
            font = _word_font(size)
            ext = [draw.textbbox((0, 0), w, font=font) for w in words]
            if all((b[2] - b[0]) <= 0.85 * (short if stacked else slot) and
                   (b[3] - b[1]) <= 0.85 * (slot if stacked else short) for b in ext):
                break
            size = int(size * 0.9)
        font = _word_font(size)
        boxes = []
        for j, w in enumerate(words):
            l, t, rr, b = draw.textbbox((0, 0), w, font=font)
            tw, th = rr - l, b - t
            if stacked:
                cx, cy = W / 2, (j + 0.5) * slot
            else:
                cx, cy = (j + 0.5) * slot, H / 2
            x0, y0 = int(round(cx - tw / 2)), int(round(cy - th / 2))
            draw.text((x0 - l, y0 - t), w, font=font, fill=ink)
            boxes.append((x0, y0, x0 + tw, y0 + th))
        return TextScene(img, words, boxes, kind, (W, H), aspect, self.seed, index, self.split)

    def questions(self, scene: TextScene) -> list[QA]:
        """Every question the image answers exactly (see the module doc)."""
        qa = [QA(f"What is word {j + 1}?", w, "text") for j, w in enumerate(scene.words)]
        qa.append(QA("How many words are written?", _NUM[len(scene.words)], "count"))
        return qa


def textrich_dataset(seed: int, n: int, split: str = "train", start: int = 0, **kwargs) -> list[tuple[TextScene, list[QA]]]:
    """Scenes start … start+n−1 of TextRichGenerator(seed, split, **kwargs), each with its questions."""
    gen = TextRichGenerator(seed=seed, split=split, **kwargs)
    return [(s, gen.questions(s)) for s in (gen.scene(i) for i in range(start, start + n))]


__all__ = ["TextRichGenerator", "TextScene", "textrich_dataset", "aspect_bucket", "BUCKETS"]
