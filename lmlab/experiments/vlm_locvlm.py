"""LocVLM (Ranasinghe et al., 2024, "Learning to Localize Objects Improves Spatial Reasoning in Visual-LLMs"):
two claims on synthetic scenes, at our scale (a stand-in: a 2-layer byte-level decoder on frozen MobileNetV2
features, not a 7B LLaVA).

Setting: scenes of 2–4 objects rendered at 192 px (so raw pixel coordinates reach three digits), frozen
MobileNetV2 features at 128 px (cached), MLP projector, 2-layer d = 64 lmlab decoder with the byte tokenizer,
8 object kinds; projector + LM trained together (single stage, 300 steps of 16), the same steps, batch and LR
in every arm. Training scenes
are the train split; every probe is asked on held-out scenes (object pairs never seen together, objects in a
quadrant they never occupied). Per seed the arms share the scenes, the initialisation and the shuffling seed
(paired tests over seeds 0, 1, 2; one-sided, α = 0.05). Hyperparameters were set by hand with timing and
sanity runs on seed 100 only.

locvlm_objectives  (a) "location objectives improve spatial VQA and lower hallucination".
                   vqa_only: scene VQA (exists, count, region, relation).
                   loc: the same VQA pool plus LocPred, NegPred and RevLoc questions (bins100 coordinates);
                   loc_pseudo: loc plus location questions on as many extra scenes labelled only by our box
                   regressor (trained on the labelled scenes' features: LocVLM's pseudo-data); reported.
                   Equal steps, so the location arms see fewer VQA examples.
                   Metrics: spatial_acc = exact match on held-out region + relation questions; hallucination =
                   share of POPE probes about absent objects answered "yes".
                   Rule: combine(all) of loc > vqa_only on spatial_acc and loc < vqa_only on hallucination
                   (paired one-sided t-tests).
locvlm_formats     (b) "integer bins are the best textual coordinate format".
                   float2 / bins100 / bins1000 / pixels: the loc arm's data in each format.
                   Metric: grounding_acc = LocPred answers with IoU ≥ 0.5 on held-out scenes.
                   Rule: combine(all) of bins100 > float2 and bins100 > pixels (paired one-sided t-tests);
                   bins1000 is reported beside them.
"""
from __future__ import annotations

from pathlib import Path

from lmlab.experiments import _vlm as V
from lmlab.experiments.base import ArmResult, Experiment, Verdict, arm_values, combine, compare
from lmlab.registry import EXPERIMENTS

PAPER = "LocVLM: Learning to Localize Objects Improves Spatial Reasoning in Visual-LLMs (Ranasinghe et al., 2024)"
SCALE = {"quick": {"d_model": 64, "n_layer": 2, "n_head": 4, "n_train": 160, "n_eval": 24, "questions": 4,
                   "batch": 16, "steps": 300, "lr": 3e-3, "image_size": 192},
         "full": {"d_model": 256, "n_layer": 4, "n_head": 8, "n_train": 2000, "n_eval": 300, "questions": 6,
                  "batch": 32, "steps": 3000, "lr": 1e-3, "image_size": 192}}
VQA_KINDS = ["exists", "count", "region", "relation"]
VOCAB = ["cat", "dog", "apple", "car", "tree", "sun", "key", "bell"]   # 8 objects: learnable at this scale
PROMPT = "<image>\n{question}\nA:"
OBJECTIVE_ARMS = {"vqa_only": {"fmt": None, "pseudo": False}, "loc": {"fmt": "bins100", "pseudo": False},
                  "loc_pseudo": {"fmt": "bins100", "pseudo": True}}
FORMAT_ARMS = ["float2", "bins100", "bins1000", "pixels"]
BOXES = "box_samples.png"


def _scale(scale: str) -> dict:
    if scale not in SCALE:
        raise ValueError(f"scale={scale!r}: choose quick or full")
    return SCALE[scale]


def _vlm_cfg(scale: str, seed: int, name: str):
    sc = _scale(scale)
    stages = [V.stage("finetune", ["projector", "lm"], sc["steps"], sc, sc["lr"])]
    cfg = V.vlm_config(scale, seed, name, stages,
                        lm={"model": {"d_model": sc["d_model"], "n_layer": sc["n_layer"], "n_head": sc["n_head"],
                                      "max_seq_len": 192}},
                        data={"n_train": sc["n_train"], "n_eval": sc["n_eval"], "questions_per_scene": sc["questions"],
                              "image_size": sc["image_size"], "objects_per_scene": [2, 4], "kinds": VQA_KINDS,
                             "vocab": VOCAB})
    return cfg.model_copy(update={"prompt": PROMPT})


def objectives_config(arm: str, scale: str, seed: int = 0) -> dict:
    if arm not in OBJECTIVE_ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {list(OBJECTIVE_ARMS)}")
    return {"vlm": _vlm_cfg(scale, seed, f"locvlm_objectives/{arm}"), **OBJECTIVE_ARMS[arm]}


def formats_config(arm: str, scale: str, seed: int = 0) -> dict:
    if arm not in FORMAT_ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {FORMAT_ARMS}")
    return {"vlm": _vlm_cfg(scale, seed, f"locvlm_formats/{arm}"), "fmt": arm, "pseudo": False}


def run_locvlm(spec: dict, out_dir, title: str = "") -> ArmResult:
    """Train one arm (spec = objectives_config / formats_config) and score it on the held-out probes."""
    import torch

    from lmlab.data.locvlm import build_probes, parse_box
    from lmlab.data.scenes import scene_dataset
    from lmlab.eval.locvlm import answer_all, score_probes
    from lmlab.models.vlm import build_vlm
    from lmlab.train.locvlm import detection_quality, loc_training_data, pseudo_label, train_box_regressor
    from lmlab.train.vlm import image_inputs, train_vlm

    cfg, fmt = spec["vlm"], spec["fmt"]
    torch.set_num_threads(1)
    d = cfg.data
    opts = dict(size=d.image_size, objects_per_scene=tuple(d.objects_per_scene), background=d.background,
                vocab=d.vocab)
    rows = scene_dataset(d.seed, d.n_train, "train", d.questions_per_scene, **opts)
    held = scene_dataset(d.seed, d.n_eval, "heldout", None, **opts)
    vlm = build_vlm(cfg)
    info: dict = {"seed": cfg.seed, "format": fmt}
    extra = []
    if spec["pseudo"]:
        unl = scene_dataset(d.seed, d.n_train, "train", 0, start=d.n_train, **opts)
        feats = image_inputs(vlm, [s.image for s, _ in rows])["features"]
        reg = train_box_regressor(feats, [s for s, _ in rows], d.vocab, steps=400, seed=cfg.seed)
        f_unl = image_inputs(vlm, [s.image for s, _ in unl])["features"]
        extra = pseudo_label(reg, f_unl, [s for s, _ in unl], d.vocab)
        f_held = image_inputs(vlm, [s.image for s, _ in held])["features"]
        info["detector_heldout"] = detection_quality(reg, f_held, [s for s, _ in held], d.vocab)
    data = loc_training_data(rows, fmt, VQA_KINDS, vocab=d.vocab, extra_scenes=extra)
    res = train_vlm(cfg, None, vlm=vlm, data=data)
    probes = build_probes(held, fmt if fmt is not None else None, ["region", "relation"],
                          objectives=("locpred", "negpred") if fmt else (), pope=1, vocab=d.vocab)
    outputs = answer_all(res.model, probes)
    metrics = score_probes(outputs, probes, fmt)
    metrics.update({"train_loss": res.final_loss, "train_seconds": res.seconds, "n_probes": len(probes)})
    info.update({"train_examples": len(data), "train_kinds": {k: data.kinds.count(k) for k in sorted(set(data.kinds))},
                 "steps": sum(s.steps for s in cfg.stages), "stage_losses": res.stage_losses})
    if out_dir is not None and fmt is not None:
        from lmlab.vlm_figures import plot_box_samples

        samples = []
        for i, (k, o) in enumerate(zip(probes.kinds, outputs)):
            if k == "locpred" and len(samples) < 8:
                s = probes.scenes[probes.image_of[i]]
                samples.append({"image": s.image, "name": probes.questions[i].split("of the ")[-1].rstrip("."),
                                "box": probes.boxes[i], "output": o,
                                "pred": parse_box(o, fmt, s.size if fmt == "pixels" else None)})
        p = plot_box_samples(samples, Path(out_dir) / BOXES,
                             title=f"{title} (seed {cfg.seed}): held-out LocPred, green = truth, red = model")
        info["images"] = [p.name]
    curve = [(float(h["step"]), float(h["train_loss"])) for h in res.history if "train_loss" in h]
    return ArmResult(metrics, {"train_loss": curve}, info)


def _run_objectives(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    return run_locvlm(objectives_config(arm, scale, seed), out, f"locvlm {arm}")


def _run_formats(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    return run_locvlm(formats_config(arm, scale, seed), out, f"locvlm format {arm}")


def _objectives_verdict(exp: Experiment, results) -> Verdict:
    b, t = arm_values(results, "vqa_only", "loc", "spatial_acc", paired=True)
    hb, ht = arm_values(results, "vqa_only", "loc", "hallucination", paired=True)
    return combine({"spatial_acc: loc > vqa_only": compare(b, t, "higher", paired=True),
                    "hallucination: loc < vqa_only": compare(hb, ht, "lower", paired=True)},
                   "all", "location objectives improve held-out spatial VQA and lower hallucination")


def _formats_verdict(exp: Experiment, results) -> Verdict:
    parts = {}
    for other in ("float2", "pixels"):
        b, t = arm_values(results, other, "bins100", "grounding_acc", paired=True)
        parts[f"bins100 > {other}"] = compare(b, t, "higher", paired=True)
    return combine(parts, "all", "integer bins (0–99) ground better than normalised floats and raw pixels")


def _same_scenes_and_steps(cfgs: dict) -> dict:
    """Arms of one experiment: equal total steps, batch, LR schedule, scenes and seed."""
    ref = next(iter(cfgs.values()))["vlm"]
    facts = {}
    for arm, spec in cfgs.items():
        cfg = spec["vlm"]
        steps = sum(s.steps for s in cfg.stages)
        same = ([(s.steps, s.batch_size, s.lr, s.train) for s in cfg.stages] ==
                [(s.steps, s.batch_size, s.lr, s.train) for s in ref.stages])
        if not same or cfg.data != ref.data or cfg.seed != ref.seed or cfg.lm != ref.lm:
            raise AssertionError(f"{cfg.name}: stages/scenes/seed/LM differ from {ref.name}")
        facts[arm] = {"steps": steps, "batch": cfg.stages[0].batch_size, "format": spec["fmt"]}
    return facts


_COMMON = dict(paired=True, plots=["train_loss"], seeds=3)

EXPERIMENTS.register("locvlm_objectives", Experiment(
    name="locvlm_objectives", paper=PAPER,
    claim="location objectives (LocPred, NegPred, RevLoc) improve held-out spatial VQA and lower hallucination",
    metric="spatial_acc", direction="higher", arms=list(OBJECTIVE_ARMS), baseline="vqa_only", technique="loc",
    run=_run_objectives, arm_config=objectives_config, verdict=_objectives_verdict,
    invariants=_same_scenes_and_steps, **_COMMON,
    description="Tiny VLM (frozen MobileNetV2, MLP projector, 2-layer d=64 byte-level decoder; a stand-in for the "
                "paper's LLaVA) finetuned on scene VQA only, or on VQA + LocPred/NegPred/RevLoc (bins100), or "
                "with pseudo-labelled extra scenes from our box regressor, at equal steps. Probes on held-out "
                "scenes: region/relation exact match (spatial_acc) and POPE absent-object probes answered yes "
                "(hallucination). Verdict: loc > vqa_only on spatial_acc and loc < vqa_only on hallucination, "
                "paired one-sided t-tests, both must hold."))

EXPERIMENTS.register("locvlm_formats", Experiment(
    name="locvlm_formats", paper=PAPER, claim="integer-bin coordinates ground objects better than floats or pixels",
    metric="grounding_acc", direction="higher", arms=FORMAT_ARMS, baseline="float2", technique="bins100",
    run=_run_formats, arm_config=formats_config, verdict=_formats_verdict, invariants=_same_scenes_and_steps,
    **_COMMON,
    description="The loc arm of locvlm_objectives with its boxes written as normalised floats (2 decimals), "
                "integer bins over [0, 100) or [0, 1000), or raw pixels of the 192-px scene. Metric: held-out "
                "LocPred answers with IoU ≥ 0.5. Verdict: bins100 > float2 and bins100 > pixels, paired "
                "one-sided t-tests, both must hold; bins1000 reported."))
