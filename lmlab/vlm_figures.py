"""Figures of the grounding and any-resolution VLM experiments (report layer, beside lmlab/vlm_plots.py): images
with the true and the predicted box drawn on them, and accuracy per bucket (e.g. aspect ratio) per arm.

    plot_box_samples([{"image", "name", "box", "pred", "output"}, ...], "reports/boxes.png")
    plot_accuracy_by_bucket({"dynamic": {"1-2": [0.8, 0.7, 0.9]}, ...}, "reports/by_aspect.png", ["1-2", ...])
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def plot_box_samples(samples: list[dict], path: "str | Path", cols: int = 4, title: Optional[str] = None) -> Path:
    """Images with the true box (green, dashed) and the model's box (red; none drawn when its output does not
    parse), titled with the object, the model's text and the IoU. samples: dicts with image (PIL), name,
    box (normalised xyxy), pred (normalised xyxy or None), output (str)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    from lmlab.data.coords import box_iou

    if not samples:
        raise ValueError("plot_box_samples: no samples")
    cols = min(cols, len(samples))
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        W, H = s["image"].size
        ax.imshow(s["image"])
        x0, y0, x1, y1 = s["box"]
        ax.add_patch(patches.Rectangle((x0 * W, y0 * H), (x1 - x0) * W, (y1 - y0) * H, fill=False,
                                       edgecolor="limegreen", linewidth=2, linestyle="--"))
        iou = 0.0
        if s.get("pred") is not None:
            p = s["pred"]
            iou = box_iou(p, s["box"])
            ax.add_patch(patches.Rectangle((p[0] * W, p[1] * H), (p[2] - p[0]) * W, (p[3] - p[1]) * H, fill=False,
                                           edgecolor="red", linewidth=2))
        ax.set_title(f"{s['name']}: {s['output'][:28]}\nIoU {iou:.2f}", fontsize=8, loc="left",
                     color="darkgreen" if iou >= 0.5 else "firebrick")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_accuracy_by_bucket(per_arm: dict[str, dict[str, list[float]]], path: "str | Path", buckets: list[str],
                            title: str = "", ylabel: str = "exact match") -> Path:
    """Grouped bars: for each bucket (e.g. aspect-ratio range), each arm's mean over seeds with the seeds as
    dots. per_arm = {arm: {bucket: [value per seed]}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = list(per_arm)
    if not arms:
        raise ValueError("plot_accuracy_by_bucket: no arms")
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(buckets), 3.6))
    for a, arm in enumerate(arms):
        xs = np.arange(len(buckets)) + (a - (len(arms) - 1) / 2) * width
        vals = [per_arm[arm].get(b, []) for b in buckets]
        ax.bar(xs, [float(np.mean(v)) if v else np.nan for v in vals], width, label=arm, alpha=0.8)
        for x, v in zip(xs, vals):
            ax.scatter([x] * len(v), v, color="black", s=8, zorder=3)
    ax.set_xticks(np.arange(len(buckets)))
    ax.set_xticklabels(buckets)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
