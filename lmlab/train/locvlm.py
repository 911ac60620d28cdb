"""LocVLM training data: scene VQA mixed with the location objectives (lmlab.data.locvlm), and pseudo-labels from
our own box regressor (lmlab.models.box_regressor) for scenes whose boxes we pretend not to know.

    data = loc_training_data(rows, fmt="bins100", kinds=[...], objectives=("locpred", "negpred", "revloc"))
    reg = train_box_regressor(features, scenes, vocab, steps=300, seed=0)          # on cached encoder features
    pseudo = pseudo_label(reg, features_unlabelled, scenes_unlabelled, vocab)     # [Scene with detected objects]

The training loop itself is lmlab.train.vlm.train_vlm: the objectives only change what the examples say.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from lmlab.data.locvlm import OBJECTIVES, location_questions, pseudo_scene
from lmlab.models.box_regressor import BoxRegressor, box_loss, detect, encode_targets, grid_side
from lmlab.train.vlm import VQAData


def loc_training_data(rows, fmt: Optional[str], kinds: Sequence[str], objectives: Sequence[str] = OBJECTIVES,
                      vocab=None, extra_scenes: Sequence = ()) -> VQAData:
    """VQAData of the scene questions of `kinds` (rows = scene_dataset output) plus, when `fmt` is given, the
    location questions of `objectives` in that coordinate format; `extra_scenes` (e.g. pseudo-labelled) add
    location questions only (their VQA answers are not known)."""
    d = VQAData([], [], [], [], [], [])

    def add(i, qa):
        d.image_of.append(i)
        d.questions.append(qa.question)
        d.answers.append(qa.answer)
        d.kinds.append(qa.kind)

    for scene, qas in rows:
        i = len(d.images)
        d.images.append(scene.image)
        d.scenes.append(scene)
        for qa in qas:
            if qa.kind in kinds:
                add(i, qa)
        if fmt is not None:
            for qa in location_questions(scene, fmt, objectives, vocab):
                add(i, qa)
    for scene in extra_scenes:
        i = len(d.images)
        d.images.append(scene.image)
        d.scenes.append(scene)
        for qa in location_questions(scene, fmt, objectives, vocab) if fmt is not None else []:
            add(i, qa)
    return d


def _targets(scenes, vocab: Sequence[str]):
    index = {n: k for k, n in enumerate(vocab)}
    return [[(index[o.name], (o.box[0] / s.size[0], o.box[1] / s.size[1], o.box[2] / s.size[0], o.box[3] / s.size[1]))
             for o in s.objects] for s in scenes]


def train_box_regressor(features: torch.Tensor, scenes: Sequence, vocab: Sequence[str], steps: int = 300,
                        batch_size: int = 32, lr: float = 3e-3, seed: int = 0, hidden: int = 256) -> BoxRegressor:
    """A BoxRegressor trained on (b, n, c) frozen-encoder features of `scenes` and their true boxes."""
    torch.manual_seed(seed)
    g = grid_side(features.shape[1])
    obj, cls, reg = encode_targets(_targets(scenes, vocab), g)
    model = BoxRegressor(features.shape[-1], len(vocab), hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng([seed, 17])
    f = features.float()
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, f.shape[0], size=min(batch_size, f.shape[0])))
        loss = box_loss(model(f[idx]), obj[idx], cls[idx], reg[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for gp in opt.param_groups:
            gp["lr"] = lr * 0.5 * (1 + np.cos(np.pi * (step + 1) / steps))
    return model.eval()


def pseudo_label(model: BoxRegressor, features: torch.Tensor, scenes: Sequence, vocab: Sequence[str],
                 threshold: float = 0.5) -> list:
    """Scenes with their objects replaced by the regressor's detections (names from `vocab`)."""
    dets = detect(model, features, threshold)
    return [pseudo_scene(s, [(vocab[k], box) for k, box, _ in d]) for s, d in zip(scenes, dets)]


def detection_quality(model: BoxRegressor, features: torch.Tensor, scenes: Sequence, vocab: Sequence[str],
                      threshold: float = 0.5) -> dict[str, float]:
    """Precision and recall of the detections at IoU ≥ 0.5 with the right name (greedy one-to-one matching)."""
    from lmlab.data.coords import box_iou

    dets = detect(model, features, threshold)
    tp = n_det = n_gt = 0
    for d, gt in zip(dets, _targets(scenes, vocab)):
        n_det, n_gt = n_det + len(d), n_gt + len(gt)
        free = list(gt)
        for k, box, _ in sorted(d, key=lambda t: -t[2]):
            hit = next((t for t in free if t[0] == k and box_iou(t[1], box) >= 0.5), None)
            if hit is not None:
                free.remove(hit)
                tp += 1
    return {"precision": tp / max(n_det, 1), "recall": tp / max(n_gt, 1)}


__all__ = ["loc_training_data", "train_box_regressor", "pseudo_label", "detection_quality"]
