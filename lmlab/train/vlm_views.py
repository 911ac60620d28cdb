"""Training a FerretVLM (lmlab.models.vlm_ferret) on examples over precomputed feature views, stage by stage,
in one visible loop: `train_views(vlm, stages, examples, views, regions, seed)`.

Each example asks one question about one image (a row of every view tensor) and may refer to regions (rows
of the region-feature tensor). A step draws a batch, builds the extra-embedding table of the batch's images
and regions through the projectors (so they receive gradients), maps the placeholder codes onto it (`place`),
and takes an AdamW step on the answer-token loss. Stages (lmlab.models.vlm.StageSpec) name what trains:
"projector" (every view projector and the region projector) and "lm". Examples may differ per stage (Ferret-
v2's dense-alignment stage has its own data): `examples` is one list for all stages or a dict by stage name.

    ViewExample(ids, targets, image, regions)      ids with IMAGE/REGION codes, from encode_views_example
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from lmlab.models.vlm_ferret import FerretVLM, place
from lmlab.train.schedules import lr_at
from lmlab.train.trainer import param_groups, seed_everything


@dataclass
class ViewExample:
    ids: list[int]
    targets: list[int]
    image: int
    regions: list[int] = field(default_factory=list)


def batch_inputs(vlm: FerretVLM, batch: Sequence[ViewExample], views: Sequence[torch.Tensor],
                 regions: Optional[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids (b, t), targets (b, t), table): the batch's distinct images then its regions, right-padded."""
    imgs = sorted({e.image for e in batch})
    slot = {i: s for s, i in enumerate(imgs)}
    regs = sorted({r for e in batch for r in e.regions})
    rslot = {r: s for s, r in enumerate(regs)}
    n, V = vlm.n_image_tokens, vlm.vocab
    idx = torch.tensor(imgs)
    table = vlm.table([v[idx] for v in views], regions[torch.tensor(regs)] if regs else None)
    rows = [place(e.ids, slot[e.image], [rslot[r] for r in e.regions], n, V, len(imgs) * n) for e in batch]
    T = max(len(r) for r in rows)
    ids = torch.full((len(batch), T), pad, dtype=torch.long)
    tgt = torch.full((len(batch), T), -100, dtype=torch.long)
    for i, (r, e) in enumerate(zip(rows, batch)):
        ids[i, :len(r)] = torch.tensor(r)
        tgt[i, :len(e.targets)] = torch.tensor(e.targets)
    return ids, tgt, table


def set_parts(vlm: FerretVLM, parts: Sequence[str]) -> None:
    for p in vlm.parameters():
        p.requires_grad_(False)
    if "projector" in parts:
        for m in [*vlm.projectors, vlm.region_projector]:
            if m is not None:
                for p in m.parameters():
                    p.requires_grad_(True)
    if "lm" in parts:
        for p in vlm.lm.parameters():
            p.requires_grad_(True)


def train_views(vlm: FerretVLM, stages, examples, views: Sequence[torch.Tensor],
                regions: Optional[torch.Tensor] = None, seed: int = 0) -> list[dict]:
    """Run the stages; returns the history [{"stage", "step", "train_loss", "lr", "examples_per_s"}]."""
    seed_everything(seed)
    pad = vlm.tokenizer.eos_id
    history: list[dict] = []
    total = 0
    for si, stage in enumerate(stages):
        data = examples[stage.name] if isinstance(examples, dict) else examples
        if not data:
            raise ValueError(f"stage {stage.name!r}: no examples")
        set_parts(vlm, stage.train)
        vlm.train()
        opt = torch.optim.AdamW(param_groups(vlm, stage.weight_decay), lr=stage.lr, foreach=False)
        rng = np.random.default_rng([seed, si])
        order, pos, recent, t0 = rng.permutation(len(data)), 0, [], time.time()
        for step in range(stage.steps):
            lr = lr_at(stage, step)
            for g in opt.param_groups:
                g["lr"] = lr
            if pos + stage.batch_size > len(order):
                order, pos = np.concatenate([order[pos:], rng.permutation(len(data))]), 0
            batch = [data[i] for i in order[pos:pos + stage.batch_size]]
            pos += stage.batch_size
            ids, tgt, table = batch_inputs(vlm, batch, views, regions, pad)
            loss = vlm(ids, table, targets=tgt).loss
            if not torch.isfinite(loss.detach()):
                raise ValueError(f"stage {stage.name!r}: loss is not finite at step {step + 1}; lower lr ({stage.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in vlm.parameters() if p.requires_grad],
                                           stage.grad_clip if stage.grad_clip > 0 else 1e30)
            opt.step()
            total += 1
            recent.append(float(loss.detach()))
            if (step + 1) % stage.log_interval == 0 or step + 1 == stage.steps:
                now = time.time()
                history.append({"stage": stage.name, "step": total, "train_loss": float(np.mean(recent)), "lr": lr,
                                "examples_per_s": len(recent) * stage.batch_size / max(now - t0, 1e-9)})
                recent, t0 = [], now
    vlm.eval()
    return history


__all__ = ["ViewExample", "batch_inputs", "set_parts", "train_views"]
