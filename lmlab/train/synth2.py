"""Training Synth²'s generators (lmlab.models.synth2) on (caption, target) pairs of a limited real set, in one
visible loop: `train_generator(gen, captions, targets, steps, batch_size, lr, seed)`.

Targets are standardised per channel with the real set's statistics (mean, std over images and grid tokens)
so the MSE weighs every channel alike; `Standardizer` maps generated grids back to encoder units.

    TextToGrid    targets: encoder feature grids (m, n, c)
    TextToPixels  targets: normalised images (m, 3, S, S)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from lmlab.models.synth2 import byte_batch


@dataclass
class Standardizer:
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Standardizer":
        """Per-channel statistics of (m, n, c) grids (channel last) or (m, c, h, w) images (channel second)."""
        if x.dim() == 3:
            return cls(x.mean((0, 1), keepdim=True)[0], x.std((0, 1), keepdim=True)[0].clamp(min=1e-4))
        return cls(x.mean((0, 2, 3), keepdim=True)[0], x.std((0, 2, 3), keepdim=True)[0].clamp(min=1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


def train_generator(gen, captions: Sequence[str], targets: torch.Tensor, steps: int, batch_size: int = 16,
                    lr: float = 1e-3, seed: int = 0) -> dict:
    """AdamW with linear warm-up (10 %) then cosine decay on MSE to standardised targets. Returns
    {"losses": [...], "standardizer", "samples_per_s"} (samples per CPU second of the training steps alone)."""
    torch.manual_seed(seed)
    std = Standardizer.fit(targets)
    z = std.forward(targets)
    ids, pad = byte_batch(captions, gen.max_len)
    opt = torch.optim.AdamW(gen.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng([seed, 2])
    warm = max(steps // 10, 1)
    losses, t0 = [], time.process_time()
    gen.train()
    for step in range(steps):
        f = (step + 1) / warm if step < warm else 0.5 * (1 + np.cos(np.pi * (step - warm) / max(steps - warm, 1)))
        for g in opt.param_groups:
            g["lr"] = lr * f
        idx = torch.from_numpy(rng.choice(len(captions), size=min(batch_size, len(captions)), replace=False))
        loss = torch.nn.functional.mse_loss(gen(ids[idx], pad[idx]), z[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    secs = time.process_time() - t0
    gen.eval()
    return {"losses": losses, "standardizer": std, "samples_per_s": steps * min(batch_size, len(captions)) / secs}


__all__ = ["Standardizer", "train_generator"]
