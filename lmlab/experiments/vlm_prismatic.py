"""Prismatic VLMs (Karamcheti et al., 2024): three design-space claims on the synthetic-scene VQA task.

Setting (lmlab.experiments._vlm): frozen encoders with cached features, MLP projector, a 2-layer d = 64 lmlab
decoder with the byte tokenizer, 200 training scenes × 4 questions (exists, count, region, group), metric =
exact match on 50 held-out scenes. Per seed the arms share the scenes, the LM/projector init and the example
order; the tests are paired over seeds 0, 1, 2 (one-sided, α = 0.05). Every arm trains the same total number
of optimizer steps at the same batch size and LR. The learning rate (3e-3) and step count were set by hand
(only timing checks on seed 100), never by looking at the reported seeds.

prismatic_stages     (a) "single-stage training (skip the projector-only alignment stage) is as good as the
                     two-stage recipe": two_stage = 25% align [projector] + 75% finetune [projector, lm];
                     single_stage = 100% finetune [projector, lm]. Rule: TOST equivalence of exact match
                     within ±0.05 (reproduced iff the 90% CI of single − two lies inside ±0.05).
prismatic_fused      (b) "fusing two encoders' features helps": fused = EfficientNet-Lite0 + MobileNetV2
                     (channel concat per patch on one grid) vs each encoder alone. Rule: combine(all) of two
                     paired t-tests, fused > mobilenet_v2 and fused > efficientnet_lite0.
prismatic_preprocess (c) "naive resize is as good as letterbox and better than crop": scenes rendered 2:1
                     wide (256 × 128) reach the 128 × 128 input by naive resize, letterbox (pad) or centre
                     crop (drops the sides). Rule: combine(all) of non-inferiority resize vs letterbox
                     (margin 0.05) and resize > crop (paired t).
"""
from __future__ import annotations

from pathlib import Path

from lmlab.experiments import _vlm as V
from lmlab.experiments.base import ArmResult, Experiment, Verdict, arm_values, combine, compare, equivalent, \
    noninferior
from lmlab.registry import EXPERIMENTS

TOL_STAGES = 0.05
TOL_PREPROCESS = 0.05
ENCODERS = {"mobilenet_v2": {"name": "mobilenet_v2"},
            "efficientnet_lite0": {"name": "efficientnet_lite0"},
            "fused": {"name": "fused", "args": {"a": "efficientnet_lite0", "b": "mobilenet_v2"}}}
MODES = ["resize", "letterbox", "crop"]
WIDE = (256, 128)


# ------------------------------------------------------------------------------------------ (a) stages
def stages_config(arm: str, scale: str, seed: int = 0):
    sc = V.check_scale(scale)
    if arm == "two_stage":
        st = V.two_stage(sc)
    elif arm == "single_stage":
        st = [V.stage("finetune", ["projector", "lm"], sc["steps"], sc, sc["lr"])]
    else:
        raise ValueError(f"unknown arm {arm!r}; choose two_stage or single_stage")
    return V.vlm_config(scale, seed, f"prismatic_stages/{arm}", st)


def _run_stages(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    return V.run_vqa(stages_config(arm, scale, seed), out, title=f"prismatic {arm}")


def _stages_verdict(exp: Experiment, results) -> Verdict:
    b, t = arm_values(results, "two_stage", "single_stage", "accuracy", paired=True)
    return equivalent(b, t, TOL_STAGES, paired=True)


# ------------------------------------------------------------------------------------------ (b) fused
def fused_config(arm: str, scale: str, seed: int = 0):
    if arm not in ENCODERS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {list(ENCODERS)}")
    sc = V.check_scale(scale)
    return V.vlm_config(scale, seed, f"prismatic_fused/{arm}", V.two_stage(sc), encoder=ENCODERS[arm])


def _run_fused(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    return V.run_vqa(fused_config(arm, scale, seed), out, title=f"prismatic encoder {arm}")


def _fused_verdict(exp: Experiment, results) -> Verdict:
    parts = {}
    for single in ("mobilenet_v2", "efficientnet_lite0"):
        b, t = arm_values(results, single, "fused", "accuracy", paired=True)
        parts[f"fused > {single}"] = compare(b, t, "higher", paired=True)
    return combine(parts, "all", "fused features beat each encoder alone")


# ------------------------------------------------------------------------------------- (c) preprocess
def preprocess_config(arm: str, scale: str, seed: int = 0):
    if arm not in MODES:
        raise ValueError(f"unknown arm {arm!r}; choose one of {MODES}")
    sc = V.check_scale(scale)
    return V.vlm_config(scale, seed, f"prismatic_preprocess/{arm}", V.two_stage(sc), encoder={"mode": arm},
                        data={"image_size": WIDE[0]})


def _run_preprocess(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    cfg = preprocess_config(arm, scale, seed)
    data, held = V.scenes(cfg, size=WIDE)
    r = V.run_vqa(cfg, out, data, held, title=f"prismatic preprocess {arm} ({WIDE[0]}×{WIDE[1]} scenes)")
    r.info["scene_size"] = list(WIDE)
    return r


def _preprocess_verdict(exp: Experiment, results) -> Verdict:
    b, t = arm_values(results, "letterbox", "resize", "accuracy", paired=True)
    c, r = arm_values(results, "crop", "resize", "accuracy", paired=True)
    return combine({"resize ≥ letterbox − 0.05": noninferior(b, t, TOL_PREPROCESS, "higher", paired=True),
                    "resize > crop": compare(c, r, "higher", paired=True)},
                   "all", "naive resize matches letterbox and beats crop")


def _same_scenes_and_steps(cfgs: dict) -> dict:
    """Arms of one experiment: equal total steps, batch and the same scenes (data spec)."""
    ref = next(iter(cfgs.values()))
    facts = {}
    for arm, cfg in cfgs.items():
        steps = sum(s.steps for s in cfg.stages)
        if steps != sum(s.steps for s in ref.stages) or {s.batch_size for s in cfg.stages} != \
                {s.batch_size for s in ref.stages} or cfg.data != ref.data or cfg.seed != ref.seed:
            raise AssertionError(f"{cfg.name}: steps/batch/scenes/seed differ from {ref.name}")
        facts[arm] = {"steps": steps, "batch": cfg.stages[0].batch_size}
    return facts


_COMMON = dict(metric="accuracy", direction="higher", paired=True, plots=["train_loss"], seeds=3)
PAPER = "Prismatic VLMs (Karamcheti et al., 2024)"

EXPERIMENTS.register("prismatic_stages", Experiment(
    name="prismatic_stages", paper=PAPER,
    claim="single-stage training (no projector-only alignment) is as good as two-stage at equal total steps",
    arms=["two_stage", "single_stage"], baseline="two_stage", technique="single_stage", run=_run_stages, arm_config=stages_config,
    verdict=_stages_verdict, invariants=_same_scenes_and_steps, **_COMMON,
    description="Tiny VLM (frozen MobileNetV2 features, MLP projector, 2-layer d=64 decoder) on synthetic-scene "
                "VQA; two-stage = 25% projector-only alignment + 75% projector+LM vs projector+LM for all steps. "
                f"Verdict: paired TOST on held-out exact match within ±{TOL_STAGES}."))

EXPERIMENTS.register("prismatic_fused", Experiment(
    name="prismatic_fused", paper=PAPER, claim="fused encoder features (two encoders, channel concat) beat either "
                                               "encoder alone",
    arms=["mobilenet_v2", "efficientnet_lite0", "fused"], baseline="mobilenet_v2", technique="fused",
    run=_run_fused, arm_config=fused_config, verdict=_fused_verdict, invariants=_same_scenes_and_steps, **_COMMON,
    description="The same tiny VLM and two-stage recipe with frozen MobileNetV2, frozen EfficientNet-Lite0 or "
                "both fused per patch (Prismatic's DINOv2+SigLIP recipe with the encoders we ship). Verdict: "
                "fused > each single encoder, paired one-sided t-tests, all must hold."))

EXPERIMENTS.register("prismatic_preprocess", Experiment(
    name="prismatic_preprocess", paper=PAPER,
    claim="naive resize of non-square images matches letterbox padding and beats centre crop",
    arms=["letterbox", "resize", "crop"], baseline="letterbox", technique="resize", run=_run_preprocess, arm_config=preprocess_config,
    verdict=_preprocess_verdict, invariants=_same_scenes_and_steps, **_COMMON,
    description=f"Scenes rendered {WIDE[0]}×{WIDE[1]} reach the 128-px MobileNetV2 input by naive resize, "
                "letterbox or centre crop (which cuts off objects near the sides). Verdict: resize non-inferior "
                f"to letterbox (margin {TOL_PREPROCESS}) and resize > crop, paired one-sided tests, all must hold."))
