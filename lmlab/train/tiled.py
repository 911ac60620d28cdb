"""Training and answering with several images per example (MM1.5's overview + tiles), on cached features.

Each example is (prompt with k `<image>` markers, answer, its k images' features (k, n, c)); k varies per
example (the chosen grid). The batch's features are concatenated in example order, (Σk, n, c), which is the
order `lmlab.models.vlm.splice` fills the image positions in. The loop is train_vlm's (AdamW, the stage's LR
schedule, gradient clipping, loss on answer tokens only), written out here because train_vlm indexes one
image per example.

    feats = tile_features(vlm, [[overview, tile, tile, ...], ...])      # frozen encoder: feature cache
    history = train_tiled(vlm, prompts, answers, feats, stage, seed)
    outputs = answer_tiled(vlm, prompts, feats)        # lmlab.infer.tiled: greedy, lmlab's Engine
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from lmlab.models.vlm import collate, encode_example, set_trainable
from lmlab.train.schedules import lr_at
from lmlab.train.trainer import param_groups
from lmlab.train.vlm import image_inputs


def tile_features(vlm, images: Sequence[Sequence], cache_dir: Optional[str] = None) -> list[torch.Tensor]:
    """[(k_i, n, c)] features of each example's images, through the feature cache for a frozen encoder."""
    flat = [im for row in images for im in row]
    f = image_inputs(vlm, flat, cache_dir)["features"]
    out, i = [], 0
    for row in images:
        out.append(f[i:i + len(row)])
        i += len(row)
    return out


def train_tiled(vlm, prompts: list[str], answers: list[str], feats: list[torch.Tensor], stage, seed: int,
                log_every: int = 25) -> list[dict]:
    """`stage.steps` AdamW steps over shuffled examples (prompts carry their `<image>` markers); returns the
    logged {"step", "train_loss"} records."""
    tok, n = vlm.tokenizer, vlm.n_image_tokens
    encoded = [encode_example(tok, p, a, n) for p, a in zip(prompts, answers)]
    for e, f in zip(encoded, feats):
        if sum(e[1]) != f.shape[0] * n:
            raise ValueError(f"an example has {sum(e[1]) // n} image markers for {f.shape[0]} images")
    set_trainable(vlm, list(stage.train))
    vlm.train()
    opt = torch.optim.AdamW(param_groups(vlm, stage.weight_decay), lr=stage.lr, foreach=False)
    rng = np.random.default_rng([seed, 0])
    order, pos, hist, recent = rng.permutation(len(encoded)), 0, [], []
    for step in range(stage.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(stage, step)
        if pos + stage.batch_size > len(order):
            order, pos = np.concatenate([order[pos:], rng.permutation(len(encoded))]), 0
        idx = order[pos:pos + stage.batch_size]
        pos += stage.batch_size
        batch = collate([encoded[i] for i in idx], tok.eos_id)
        f = torch.cat([feats[i] for i in idx])                               # (Σk, n, c), example order
        res = vlm(batch["input_ids"], batch["image_mask"], features=f, targets=batch["targets"])
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in vlm.parameters() if p.requires_grad], stage.grad_clip or 1e30)
        opt.step()
        recent.append(float(res.loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == stage.steps:
            hist.append({"step": step + 1, "train_loss": float(np.mean(recent))})
            recent = []
    vlm.eval()
    return hist


__all__ = ["tile_features", "train_tiled"]
