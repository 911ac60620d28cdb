"""What the vision-language experiments share: one VLM config per scale, one run (train the stages, evaluate
held-out VQA exact match, save a grid of sample answers), and the scene data both sides of an arm see.

Quick scale (minutes on a CPU for all arms × 3 seeds): frozen encoders with cached features at 128 px, an MLP
projector, a 2-layer d = 64 lmlab decoder with the byte tokenizer, 200 training scenes × 4 questions, 50
held-out scenes. Full scale: the same shape at d = 256 × 4 layers, 10× the scenes and steps.

Per seed, the arms share the scenes (training and held-out scenes are drawn from the seed), the LM and
projector initialisation and the order of examples within each stage; only the arm's difference changes. So
arms are compared seed by seed (paired tests).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lmlab.experiments.base import ArmResult

SCALES = {
    "quick": {"d_model": 64, "n_layer": 2, "n_head": 4, "n_train": 200, "n_eval": 50, "questions": 4,
              "batch": 16, "steps": 240, "align_frac": 0.25, "lr": 3e-3},
    "full": {"d_model": 256, "n_layer": 4, "n_head": 8, "n_train": 2000, "n_eval": 300, "questions": 6,
             "batch": 32, "steps": 2400, "align_frac": 0.25, "lr": 1e-3},
}
KINDS = ["exists", "count", "region", "group"]
SAMPLES = "vqa_samples.png"


def check_scale(scale: str) -> dict:
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: choose quick or full")
    return SCALES[scale]


def stage(name: str, train: list[str], steps: int, sc: dict, lr: float, **kw: Any) -> dict:
    return {"name": name, "train": train, "steps": steps, "batch_size": sc["batch"], "lr": lr,
            "warmup_steps": max(steps // 10, 1), "log_interval": max(steps // 12, 1), **kw}


def two_stage(sc: dict, total: Optional[int] = None) -> list[dict]:
    """LLaVA's recipe: projector-only alignment, then projector + LM, `total` steps in all."""
    total = total or sc["steps"]
    a = int(round(total * sc["align_frac"]))
    return [stage("align", ["projector"], a, sc, sc["lr"]), stage("finetune", ["projector", "lm"], total - a, sc,
                                                                   sc["lr"])]


def vlm_config(scale: str, seed: int, name: str, stages: list[dict], encoder: Optional[dict] = None,
               lm: Optional[dict] = None, data: Optional[dict] = None):
    """The VLMConfig of one arm: the scale's sizes, then the arm's encoder / LM / data / stages."""
    from lmlab.config import validate
    from lmlab.models.vlm import VLMConfig

    sc = check_scale(scale)
    cfg = {
        "name": name, "seed": seed, "device": "cpu" if scale == "quick" else "auto",
        "encoder": {"name": "mobilenet_v2", "mode": "resize", "size": 128, "frozen": True, **(encoder or {})},
        "projector": {"kind": "mlp"},
        "lm": lm or {"model": {"d_model": sc["d_model"], "n_layer": sc["n_layer"], "n_head": sc["n_head"],
                               "max_seq_len": 128}},
        "data": {"seed": seed, "n_train": sc["n_train"], "n_eval": sc["n_eval"], "eval_split": "heldout",
                 "questions_per_scene": sc["questions"], "image_size": 128, "objects_per_scene": [1, 3],
                 "background": "plain", "kinds": KINDS, **(data or {})},
        "stages": stages,
    }
    return validate(VLMConfig, cfg, source=f"experiment {name}")


def scenes(cfg, size: Optional[tuple[int, int]] = None):
    """(train, held-out) VQAData of cfg.data; `size` = (W, H) renders non-square scenes."""
    from lmlab.train.vlm import scene_vqa

    spec = cfg.data
    if size is None:
        return scene_vqa(spec, "train", spec.n_train), scene_vqa(spec, "heldout", spec.n_eval)
    return tuple(_scene_vqa_sized(spec, split, n, size)
                 for split, n in (("train", spec.n_train), ("heldout", spec.n_eval)))


def _scene_vqa_sized(spec, split: str, n: int, size: tuple[int, int]):
    from lmlab.data.scenes import scene_dataset
    from lmlab.train.vlm import vqa_from_rows

    rows = scene_dataset(spec.seed, n, split, spec.questions_per_scene, size=tuple(size),
                         objects_per_scene=tuple(spec.objects_per_scene), background=spec.background,
                         words=spec.words, vocab=spec.vocab)
    return vqa_from_rows(rows, spec.kinds)


def run_vqa(cfg, out_dir: Optional[Path], data=None, eval_data=None, title: str = "", vlm=None,
            after=None) -> ArmResult:
    """Train cfg's stages, evaluate held-out VQA exact match, save the sample grid into out_dir.

    metrics: accuracy, acc/<kind>, final train loss, seconds; curves: train_loss over optimizer steps;
    info: seed, stage losses, trainable parameters per stage, expert load (MoE), the sample plot's file.
    `after(result, metrics)` may add metrics from the trained model (e.g. a text loss)."""
    import torch

    from lmlab.eval.vlm import evaluate_vqa
    from lmlab.train.vlm import train_vlm
    from lmlab.vlm_plots import plot_vqa_samples

    if cfg.device == "cpu":
        torch.set_num_threads(1)
    if data is None:
        data, eval_data = scenes(cfg)
    res = train_vlm(cfg, None, vlm=vlm, data=data)
    m = evaluate_vqa(res.model, eval_data, n_samples=8)
    metrics = {"accuracy": m["accuracy"], **{f"acc/{k}": v for k, v in m["by_kind"].items()},
               "train_loss": res.final_loss, "train_seconds": res.seconds, "n_eval": m["n"]}
    if after is not None:
        after(res, metrics)
    curve = [(float(h["step"]), float(h["train_loss"])) for h in res.history if "train_loss" in h]
    info: dict = {"seed": cfg.seed, "stage_losses": res.stage_losses,
                  "trainable": {h["stage"]: h["trainable"] for h in res.history if "trainable" in h},
                  "steps": sum(s.steps for s in cfg.stages), "train_scenes": len(data.images),
                  "eval_scenes": len(eval_data.images)}
    if res.expert_load:
        info["expert_load"] = res.expert_load
    if out_dir is not None:
        p = plot_vqa_samples(m["samples"], Path(out_dir) / SAMPLES,
                             title=f"{title} (seed {cfg.seed}): held-out exact match {m['accuracy']:.2f}")
        info["images"] = [p.name]
    return ArmResult(metrics, {"train_loss": curve}, info)
