"""Plots of vision-language runs (report layer, beside report.py): a grid of VQA samples.

    plot_vqa_samples(evaluate_vqa(vlm)["samples"], "reports/vqa_samples.png")
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional


def plot_vqa_samples(samples: list[dict], path: "str | Path", cols: int = 4, title: Optional[str] = None) -> Path:
    """A grid of images, each titled with its question, the gold answer and the model's output (green when
    they match after normalisation, red otherwise). samples: dicts with image (PIL), question, answer, output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmlab.eval.vlm import normalize_answer

    if not samples:
        raise ValueError("plot_vqa_samples: no samples")
    cols = min(cols, len(samples))
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        ax.imshow(s["image"])
        ok = normalize_answer(s["output"]) == normalize_answer(s["answer"])
        q = "\n".join(textwrap.wrap(s["question"], 34))
        ax.set_title(f"{q}\ngold: {s['answer'][:40]}\nmodel: {s['output'][:40]}", fontsize=8,
                     color="darkgreen" if ok else "firebrick", loc="left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_box_samples(samples: list[dict], path: "str | Path", cols: int = 4, title: Optional[str] = None) -> Path:
    """A grid of images with the gold box (green) and the model's predicted box (red; none when the output did
    not parse), titled with the question and the output. samples: dicts with image (PIL), question, gold
    (normalised xyxy), pred (normalised xyxy or None), output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not samples:
        raise ValueError("plot_box_samples: no samples")
    cols = min(cols, len(samples))
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        W, H = s["image"].size
        ax.imshow(s["image"])
        for box, colour in ((s["gold"], "limegreen"), (s.get("pred"), "red")):
            if box is not None:
                x0, y0, x1, y1 = box
                ax.add_patch(Rectangle((x0 * W, y0 * H), (x1 - x0) * W, (y1 - y0) * H, fill=False, lw=1.6,
                                       edgecolor=colour))
        q = "\n".join(textwrap.wrap(s["question"], 34))
        ax.set_title(f"{q}\nmodel: {s['output'][:40]}", fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
