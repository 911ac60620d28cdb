"""Ferret-v2 (Zhang et al., 2024, arXiv:2404.07973): any-resolution grounding and referring, multi-granularity
encoding (two encoders) and the dense-alignment stage, on small objects — three claims, each its own verdict.

Setting (a small-scale stand-in): 256 × 256 scene canvases (lmlab.data.scenes) with 2–4 small objects
(longer side 5–9 % of the canvas, 13–23 px) from 12 object kinds on plain backgrounds; frozen ImageNet
encoders at their 128-px native input with cached features: EfficientNet-Lite0 in the global role (the
paper's CLIP) and MobileNetV2 in the tile role (the paper's DINOv2); a FerretVLM (lmlab.models.vlm_ferret:
one MLP projector per view, one for regions) in front of a 2-layer d = 64 byte-level lmlab decoder.

    lowres        the canvas downscaled to 128 px, encoder A only: 16 image tokens; regions pooled on its 4×4 map
    anyres        global view (A, 16 tokens) + 2 × 2 tiles of 128 px through B, stitched to an 8×8 map (64 tokens);
                  regions pooled on the merged map (stitched B map + upsampled A map), lmlab.vision.anyres
    anyres_single the same with encoder A for the tiles too (one encoder, two granularities)

Tasks (coordinates as text: lmlab.data.coords "bins100", the 0–99 integer bins):
    referring   "What is the object at [x0, y0, x1, y1] <region>?" (box text + the box's pooled feature) and
                "What is the object in <region>?" (free-form mask: the object's glyph silhouette only) -> name
    grounding   "Where is the <name>? Give its box." -> "[x0, y0, x1, y1]"   (objects that occur once)
Stages (equal total steps in every arm): align (projectors only, captions: "Describe the image."), dense
alignment (projectors + LM: every object of every training scene, box -> name and name -> box), instruction
tuning (projectors + LM: per scene one box-referring, one mask-referring, one grounding and one existence
question). Without dense alignment, instruction tuning runs the dense stage's steps too.

Metrics on held-out scenes (same distribution, unseen images): referring accuracy (exact name, box and mask
questions together), grounding accuracy (IoU ≥ 0.5 of the parsed box; unparseable = wrong), and the metric the
verdicts use, `score` = (referring + grounding) / 2. Rules, fixed before any run: paired one-sided t-test over
seeds 0, 1, 2 (α = 0.05) that the technique's score is higher —
    ferret_resolution   anyres (two encoders, dense)  vs lowres (two-encoder recipe's global encoder, dense)
    ferret_encoders     anyres (A global + B tiles)   vs anyres_single (A global + A tiles)
    ferret_dense        anyres with dense alignment   vs anyres without (dense steps moved to instruction tuning)
Step counts and the learning rate were set from timing and loss checks on seed 100, never on reported seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from lmlab.experiments.base import ArmResult, Experiment, Verdict, arm_values, compare
from lmlab.registry import EXPERIMENTS

PAPER = "Ferret-v2 (Zhang et al., 2024)"
CANVAS, NATIVE = 256, 128
VOCAB = ["cat", "fish", "frog", "tree", "sunflower", "apple", "banana", "car", "rocket", "key", "sun", "soccer ball"]
SCALE_RANGE = (0.05, 0.09)
FMT = "bins100"
ENC_A, ENC_B = "efficientnet_lite0", "mobilenet_v2"
ARMS = {  # arm -> (resolution, tile encoder, dense stage)
    "lowres": ("low", None, True),
    "anyres": ("any", ENC_B, True),
    "anyres_single": ("any", ENC_A, True),
    "anyres_nodense": ("any", ENC_B, False),
}
SCALES = {
    "quick": {"n_train": 160, "n_eval": 40, "d_model": 64, "n_layer": 2, "n_head": 4, "batch": 16, "lr": 3e-3,
              "align": 60, "dense": 150, "instruct": 150},
    "full": {"n_train": 1600, "n_eval": 300, "d_model": 256, "n_layer": 4, "n_head": 8, "batch": 32, "lr": 1e-3,
             "align": 600, "dense": 1500, "instruct": 1500},
}
PROMPT = "<image>\nQuestion: {question}\nAnswer:"
SAMPLES = "ferret_samples.png"


def _scale(scale: str) -> dict:
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: choose quick or full")
    return SCALES[scale]


def arm_config(arm: str, scale: str, seed: int = 0) -> dict:
    """Everything one run depends on, as data (the run key hashes it)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {list(ARMS)}")
    sc = _scale(scale)
    res, tile_enc, dense = ARMS[arm]
    stages = [("align", ["projector"], sc["align"])]
    if dense:
        stages += [("dense", ["projector", "lm"], sc["dense"]), ("instruct", ["projector", "lm"], sc["instruct"])]
    else:
        stages += [("instruct", ["projector", "lm"], sc["dense"] + sc["instruct"])]
    return {"arm": arm, "seed": seed, "scale": scale, "canvas": CANVAS, "native": NATIVE, "vocab": VOCAB,
            "object_scale": list(SCALE_RANGE), "format": FMT, "global_encoder": ENC_A,
            "tile_encoder": tile_enc if res == "any" else None, "stages": stages, "sizes": sc}


# ------------------------------------------------------------------------------------------------- data
@dataclass
class Item:
    """One question: prompt text, answer, kind, image row, region rows (into the region table)."""
    question: str
    answer: str
    kind: str
    image: int
    regions: list
    box: Optional[tuple] = None      # the gold normalised box (referring and grounding)


def _scenes(seed: int, start: int, n: int):
    from lmlab.data.scenes import SceneGenerator

    gen = SceneGenerator(seed=seed, size=CANVAS, objects_per_scene=(2, 4), background="plain", vocab=VOCAB,
                         scale=SCALE_RANGE)
    return gen, [gen.scene(i) for i in range(start, start + n)]


def _glyph_mask(obj, size: int):
    """(size, size) bool: the object's pasted silhouette (the glyph's alpha, resized to its box as pasted)."""
    import torch
    from PIL import Image

    from lmlab.data.scenes import emoji_tile

    x0, y0, x1, y1 = obj.box
    alpha = np.asarray(emoji_tile(obj.name).resize((x1 - x0, y1 - y0), Image.LANCZOS).getchannel("A")) > 127
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = torch.from_numpy(alpha.copy())
    if not bool(m.any()):
        m[y0:y1, x0:x1] = True
    return m


def build_items(gen, scenes, mode: str, rng: np.random.Generator):
    """Questions of a list of scenes. mode: align (captions), dense (every object), instruct (four per scene)
    or eval (every unique object: box referring, mask referring, grounding). Returns (items, region specs);
    a region spec is ("box", image, normalised box) or ("mask", image, (H, W) mask)."""
    from lmlab.data.coords import format_box, normalise_box
    from lmlab.data.scenes import _article

    items, specs = [], []

    def region(kind, i, val):
        specs.append((kind, i, val))
        return [len(specs) - 1]

    for i, s in enumerate(scenes):
        count: dict = {}
        for o in s.objects:
            count[o.name] = count.get(o.name, 0) + 1
        unique = [o for o in s.objects if count[o.name] == 1]

        def ref_box(o):
            b = normalise_box(o.box, s.size)
            return Item(f"What is the object at {format_box(b, FMT)} <region>?", o.name, "refer_box", i,
                        region("box", i, b), b)

        def ref_mask(o):
            return Item("What is the object in <region>?", o.name, "refer_mask", i,
                        region("mask", i, _glyph_mask(o, CANVAS)), normalise_box(o.box, s.size))

        def ground(o):
            b = normalise_box(o.box, s.size)
            return Item(f"Where is the {o.name}? Give its box.", format_box(b, FMT), "ground", i, [], b)

        if mode == "align":
            items.append(Item("Describe the image.", gen.caption(s), "caption", i, []))
        elif mode == "dense":
            items += [ref_box(o) for o in s.objects] + [ground(o) for o in unique]
        elif mode == "instruct":
            objs = list(s.objects)
            pick = lambda pool: pool[int(rng.integers(len(pool)))]  # noqa: E731
            items += [ref_box(pick(objs)), ref_mask(pick(objs))]
            if unique:
                items.append(ground(pick(unique)))
            absent = [v for v in VOCAB if v not in count]
            name = pick(absent + list(count)) if absent else pick(list(count))
            items.append(Item(f"Is there {_article(name)} in the image?", "yes" if name in count else "no",
                              "exists", i, []))
        elif mode == "eval":
            for o in unique:
                items += [ref_box(o), ref_mask(o), ground(o)]
        else:
            raise ValueError(f"unknown item mode {mode!r}")
    return items, specs


# --------------------------------------------------------------------------------------------- features
def _cache(name: str):
    from lmlab.data.sources import default_data_dir
    from lmlab.vision import build_encoder
    from lmlab.vision.cache import FeatureCache

    enc = build_encoder(name, frozen=True)
    return FeatureCache(default_data_dir() / "vlm_features", enc, name, "resize", NATIVE)


def scene_views(images, res: str, tile_enc: Optional[str]):
    """(views [(m, n_v, c)], region map (m, c, gh, gw)) of PIL canvases; features through the disk cache."""
    import torch

    from lmlab.vision.anyres import merge, stitch
    from lmlab.vision.base import unflatten_grid

    g = _cache(ENC_A).encode(images)                                       # (m, 16, c): resized to 128
    gmap = unflatten_grid(g, NATIVE // 32, NATIVE // 32)                    # (m, c, 4, 4)
    if res == "low":
        return [g], gmap
    R = C = CANVAS // NATIVE
    tiles = [im.crop((k * NATIVE, r * NATIVE, (k + 1) * NATIVE, (r + 1) * NATIVE))
             for im in images for r in range(R) for k in range(C)]
    t = _cache(tile_enc).encode(tiles)                                     # (m·R·C, 16, c)
    local = stitch(unflatten_grid(t, NATIVE // 32, NATIVE // 32), R, C)    # (m, c, 8, 8)
    return [g, local.flatten(2).transpose(1, 2).contiguous()], merge(local, gmap)


def region_features(fmap, specs):
    """(r, c) pooled region features (box weights or mask weights) on the region map."""
    import torch

    from lmlab.vision.region import box_weights, mask_weights, region_pool

    if not specs:
        return torch.zeros(0, fmap.shape[1])
    gh, gw = fmap.shape[-2:]
    w = torch.stack([box_weights(torch.tensor([v], dtype=torch.float32), gh, gw)[0] if kind == "box"
                     else mask_weights(v[None], gh, gw)[0] for kind, _, v in specs])
    idx = torch.tensor([i for _, i, _ in specs])
    return region_pool(fmap, idx, w)


# ---------------------------------------------------------------------------------------------- running
def _examples(vlm, items, offset: int = 0):
    from lmlab.models.vlm_ferret import encode_views_example
    from lmlab.train.vlm_views import ViewExample

    out = []
    for it in items:
        ids, tgt = encode_views_example(vlm.tokenizer, PROMPT.replace("{question}", it.question), it.answer,
                                        vlm.n_image_tokens)
        out.append(ViewExample(ids, tgt, it.image, [r + offset for r in it.regions]))
    return out


def score(items, outputs) -> dict:
    """referring (exact name), grounding (IoU ≥ 0.5 of the parsed box), their mean, and details."""
    from lmlab.data.coords import box_iou, parse_box
    from lmlab.eval.vlm import normalize_answer

    ref, ref_box, ref_mask, ground, centre, parsed = [], [], [], [], [], []
    for it, out in zip(items, outputs):
        if it.kind.startswith("refer"):
            ok = normalize_answer(out) == normalize_answer(it.answer)
            ref.append(ok)
            (ref_box if it.kind == "refer_box" else ref_mask).append(ok)
        elif it.kind == "ground":
            b = parse_box(out, FMT)
            parsed.append(b is not None)
            ground.append(b is not None and box_iou(b, it.box) >= 0.5)
            cx, cy = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) if b is not None else (-1, -1)
            centre.append(it.box[0] <= cx <= it.box[2] and it.box[1] <= cy <= it.box[3])
    m = lambda x: float(np.mean(x)) if x else float("nan")  # noqa: E731
    r, g = m(ref), m(ground)
    return {"score": (r + g) / 2, "referring": r, "grounding": g, "refer_box": m(ref_box), "refer_mask": m(ref_mask),
            "ground_centre": m(centre), "ground_parsed": m(parsed), "n_refer": len(ref), "n_ground": len(ground)}


def run_arm(arm: str, seed: int, scale: str, out_dir: Optional[Path]) -> ArmResult:
    import torch

    from lmlab.config import ModelConfig
    from lmlab.infer.vlm_views import answer_views
    from lmlab.models.decoder import Decoder
    from lmlab.models.vlm import ByteTokenizer, StageSpec
    from lmlab.models.vlm_ferret import encode_views_prompt, FerretVLM
    from lmlab.train.vlm_views import train_views

    cfg = arm_config(arm, scale, seed)
    sc = cfg["sizes"]
    res, tile_enc, _ = ARMS[arm]
    torch.set_num_threads(1)
    gen, train_scenes = _scenes(seed, 0, sc["n_train"])
    _, eval_scenes = _scenes(seed, sc["n_train"], sc["n_eval"])
    rng = np.random.default_rng([seed, 17])
    per_stage = {name: build_items(gen, train_scenes, name, rng) for name, _, _ in cfg["stages"]}
    eval_items, eval_specs = build_items(gen, eval_scenes, "eval", rng)
    views, fmap = scene_views([s.image for s in train_scenes], res, tile_enc)
    eviews, efmap = scene_views([s.image for s in eval_scenes], res, tile_enc)
    # one region table for training: the regions of every stage, stage after stage
    offsets, tables, off = {}, [], 0
    for name, (items, specs) in per_stage.items():
        offsets[name] = off
        tables.append(region_features(fmap, specs))
        off += len(specs)
    regions = torch.cat(tables)
    eregions = region_features(efmap, eval_specs)

    torch.manual_seed(seed)
    lm = Decoder(ModelConfig(d_model=sc["d_model"], n_layer=sc["n_layer"], n_head=sc["n_head"], max_seq_len=256,
                             vocab_size=257))
    vlm = FerretVLM(lm, ByteTokenizer(), [v.shape[-1] for v in views], [v.shape[1] for v in views],
                    region_dim=regions.shape[-1])
    stages = [StageSpec(name=name, train=parts, steps=steps, batch_size=sc["batch"], lr=sc["lr"],
                        warmup_steps=max(steps // 10, 1), log_interval=max(steps // 6, 1))
              for name, parts, steps in cfg["stages"]]
    examples = {name: _examples(vlm, per_stage[name][0], offsets[name]) for name in per_stage}
    hist = train_views(vlm, stages, examples, views, regions, seed)
    prompts = [(encode_views_prompt(vlm.tokenizer, PROMPT.replace("{question}", it.question), vlm.n_image_tokens),
                it.image, it.regions) for it in eval_items]
    outputs = answer_views(vlm, prompts, eviews, eregions, max_new_tokens=22)
    metrics = score(eval_items, outputs)
    metrics["train_loss"] = hist[-1]["train_loss"]
    info = {"seed": seed, "image_tokens": vlm.n_image_tokens, "steps": sum(s.steps for s in stages),
            "stages": [(s.name, s.steps) for s in stages], "train_items": {k: len(v[0]) for k, v in per_stage.items()},
            "eval_items": len(eval_items)}
    if out_dir is not None:
        from lmlab.vlm_figures import plot_box_samples

        samples = _samples(eval_scenes, eval_items, outputs)
        p = plot_box_samples(samples, Path(out_dir) / SAMPLES,
                             title=f"Ferret-v2 {arm} (seed {seed}): green = gold box, red = predicted")
        info["images"] = [p.name]
    curve = [(float(h["step"]), float(h["train_loss"])) for h in hist]
    return ArmResult(metrics, {"train_loss": curve}, info)


def _samples(scenes, items, outputs, n: int = 8) -> list[dict]:
    from lmlab.data.coords import parse_box

    out, seen = [], set()
    for it, o in zip(items, outputs):
        if it.kind != "ground" or it.image in seen:
            continue
        seen.add(it.image)
        out.append({"image": scenes[it.image].image, "name": it.question, "box": it.box,
                    "pred": parse_box(o, FMT), "output": o.strip()})
        if len(out) == n:
            break
    return out


# ---------------------------------------------------------------------------------------------- verdicts
def _verdict(base: str, tech: str):
    def v(exp: Experiment, results) -> Verdict:
        b, t = arm_values(results, base, tech, "score", paired=True)
        return compare(b, t, "higher", paired=True)
    return v


def _equal_steps(cfgs: dict) -> dict:
    steps = {arm: sum(s[2] for s in c["stages"]) for arm, c in cfgs.items()}
    if len(set(steps.values())) != 1:
        raise AssertionError(f"ferret arms train different step counts: {steps}")
    return {arm: {"steps": s} for arm, s in steps.items()}


_COMMON = dict(paper=PAPER, metric="score", direction="higher", paired=True, plots=["train_loss"], seeds=3,
               run=run_arm, arm_config=arm_config, invariants=_equal_steps)
_SETTING = ("256-px canvases with 13–23 px objects; frozen EfficientNet-Lite0 (global, CLIP role) and MobileNetV2 "
            "(tiles, DINOv2 role) at 128 px; FerretVLM with a 2-layer d=64 byte decoder; align → dense alignment "
            "→ instruction tuning at equal total steps. score = (referring exact match + grounding IoU≥0.5 "
            "accuracy) / 2 on held-out scenes; paired one-sided t over 3 seeds.")

EXPERIMENTS.register("ferret_resolution", Experiment(
    name="ferret_resolution", claim="any-resolution encoding (global view + stitched 2×2 tiles) beats a fixed low "
                                    "resolution on referring and grounding of small objects",
    arms=["lowres", "anyres"], baseline="lowres", technique="anyres", verdict=_verdict("lowres", "anyres"),
    description="lowres: the 256-px canvas downscaled to the 128-px input (16 tokens, regions pooled on 4×4); "
                "anyres: + 2×2 tiles stitched to an 8×8 map (64 more tokens, regions pooled on the merged map). "
                + _SETTING, **_COMMON))

EXPERIMENTS.register("ferret_encoders", Experiment(
    name="ferret_encoders", claim="multi-granularity encoding with a second encoder for the tiles (DINOv2 role) "
                                  "beats one encoder for both views",
    arms=["anyres_single", "anyres"], baseline="anyres_single", technique="anyres",
    verdict=_verdict("anyres_single", "anyres"),
    description="anyres_single: EfficientNet-Lite0 for the global view and the tiles; anyres: MobileNetV2 for the "
                "tiles. " + _SETTING, **_COMMON))

EXPERIMENTS.register("ferret_dense", Experiment(
    name="ferret_dense", claim="a dense-alignment stage (every object: box → name, name → box) before "
                               "instruction tuning improves referring and grounding at equal steps",
    arms=["anyres_nodense", "anyres"], baseline="anyres_nodense", technique="anyres",
    verdict=_verdict("anyres_nodense", "anyres"),
    description="anyres_nodense: align then instruction tuning for the dense stage's steps too; anyres: align, "
                "dense alignment, instruction tuning. " + _SETTING, **_COMMON))
