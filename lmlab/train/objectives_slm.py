"""Rho-1 — Selective Language Modeling (Lin et al., 2024, "Not All Tokens Are What You Need").

Notation: b = batch, t = tokens, V = vocab; n = number of valid (non-ignored) target tokens in the batch.

    L_θ(x_i)   = −log p_θ(x_i | x_<i)            per-token loss of the model being trained
    L_ref(x_i) = −log p_ref(x_i | x_<i)          per-token loss of a reference model trained on the target
    Δ(x_i)     = L_θ(x_i) − L_ref(x_i)            excess loss (signed)
    I_k%(x_i)  = 1 if Δ(x_i) is among the top ⌈k%·n⌉ excess losses of the *batch*, else 0
    L_SLM      = Σ_i I_k%(x_i)·L_θ(x_i) / ⌈k%·n⌉ (paper Eq. 3: mean over the selected tokens only)

Selection is a non-differentiable mask (no gradient flows through Δ's ranking); the gradient is that of the
mean CE over the selected tokens. At k = 100% every token is selected and L_SLM is exactly the CLM loss.

Reference scores come either online (a forward pass of the frozen reference each step) or offline (per-token
reference losses computed once with `score_windows` and stored beside the data as an (N, seq_len) array; the
objective finds each batch row's scores by a hash of its token ids, so it works with any batch order).

The control `random_tokens` keeps the same ⌈k%·n⌉ tokens per batch chosen uniformly at random (a seeded
generator), so SLM can be compared against "any k% of the tokens" at the same budget.

Token dynamics (paper Fig. 2): on a fixed probe batch, a token is H (high loss) or L (low loss) w.r.t. a
threshold, at the first step and now; the fractions of L→L, H→H, H→L and L→H are logged.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.registry import OBJECTIVES

IGNORE = -100


def _logits(model, idx: torch.Tensor) -> torch.Tensor:
    out = model(idx)
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)


def per_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(b, t, V), (b, t) -> (b, t) cross-entropy in fp32 (fp64 kept); ignored targets give 0."""
    b, t, v = logits.shape
    if logits.dtype != torch.float64:
        logits = logits.float()
    loss = F.cross_entropy(logits.reshape(b * t, v), targets.reshape(b * t), ignore_index=IGNORE,
                           reduction="none")
    return loss.view(b, t)


def n_selected(ratio: float, n_tokens: int) -> int:
    """⌈ratio·n⌉, robust to float error (0.6·10 is 6.000000000000001 in binary floating point)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"slm ratio must be in (0, 1], got {ratio}")
    return min(n_tokens, math.ceil(round(ratio * n_tokens, 9)))


def select_top_k(excess: torch.Tensor, valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """(b, t) excess, (b, t) bool valid -> (b, t) bool mask with exactly ⌈ratio·n_valid⌉ True, all on valid
    tokens with the largest excess (ties broken by position, as torch.topk does)."""
    n = int(valid.sum())
    k = n_selected(ratio, n)
    flat = excess.detach().reshape(-1).masked_fill(~valid.reshape(-1), float("-inf"))
    idx = torch.topk(flat, k, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[idx] = True
    return mask.view_as(excess)


def slm_loss(logits: torch.Tensor, targets: torch.Tensor, ref_loss: torch.Tensor, ratio: float):
    """Rho-1 loss for one batch. Returns (loss, mask, per-token L_θ)."""
    loss_tok = per_token_loss(logits, targets)           # (b, t)
    valid = targets != IGNORE
    mask = select_top_k(loss_tok.detach() - ref_loss.to(loss_tok), valid, ratio)
    loss = (loss_tok * mask).sum() / mask.sum().clamp_min(1)
    return loss, mask, loss_tok


def naive_slm_loss(logits: torch.Tensor, targets: torch.Tensor, ref_loss: torch.Tensor, ratio: float):
    """Readable twin: per-token loss by hand (log-softmax, pick), sort all valid tokens by excess in Python,
    keep the first ⌈ratio·n⌉, average their losses."""
    b, t, _ = logits.shape
    logp = torch.log_softmax(logits.double(), dim=-1)
    items = []
    for i in range(b):
        for j in range(t):
            y = int(targets[i, j])
            if y == IGNORE:
                continue
            l_theta = -logp[i, j, y]
            items.append((float(l_theta.detach()) - float(ref_loss[i, j]), i * t + j, l_theta))
    items.sort(key=lambda z: (-z[0], z[1]))
    k = math.ceil(round(ratio * len(items), 9))
    chosen = items[:k]
    loss = sum(z[2] for z in chosen) / k
    mask = torch.zeros(b * t, dtype=torch.bool)
    for z in chosen:
        mask[z[1]] = True
    return loss, mask.view(b, t)


def token_dynamics(loss_before: torch.Tensor, loss_after: torch.Tensor, threshold: float,
                   valid: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Fractions of tokens by (before, after) loss level: H = loss > threshold, L otherwise."""
    if valid is None:
        valid = torch.ones_like(loss_before, dtype=torch.bool)
    hb, ha = loss_before[valid] > threshold, loss_after[valid] > threshold
    n = max(int(valid.sum()), 1)
    return {"L->L": float((~hb & ~ha).sum()) / n, "H->H": float((hb & ha).sum()) / n,
            "H->L": float((hb & ~ha).sum()) / n, "L->H": float((~hb & ha).sum()) / n}


def row_key(row) -> str:
    a = np.ascontiguousarray(np.asarray(row, dtype=np.int64))
    return hashlib.blake2b(a.tobytes(), digest_size=12).hexdigest()


@torch.no_grad()
def score_windows(ref_model, windows: np.ndarray, batch_size: int = 32, device="cpu") -> np.ndarray:
    """Offline scoring: (N, seq_len+1) packed windows -> (N, seq_len) float32 reference per-token losses."""
    ref_model.eval()
    out = np.zeros((len(windows), windows.shape[1] - 1), dtype=np.float32)
    for s in range(0, len(windows), batch_size):
        w = torch.as_tensor(windows[s:s + batch_size], dtype=torch.long, device=device)
        out[s:s + batch_size] = per_token_loss(_logits(ref_model, w[:, :-1]), w[:, 1:]).cpu().numpy()
    return out


def save_reference_scores(path, windows: np.ndarray, scores: np.ndarray) -> None:
    """Store offline scores beside the data: the windows' ids (to match rows) and the (N, t) losses."""
    np.savez_compressed(path, windows=windows, scores=scores)


def load_reference_model(ref):
    """A torch module as is; a path to a model file written by `lmlab.train.checkpoint.save_model`
    (.safetensors + .json), or to a trainer checkpoint (a run dir, its checkpoints/ dir, or one step_* dir)."""
    if isinstance(ref, torch.nn.Module):
        return ref
    p = Path(ref)
    if not p.exists():
        raise FileNotFoundError(f"slm reference {ref}: no such file or folder")
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    if p.is_dir():
        import json

        from lmlab.train import checkpoint as ckpt

        step_dir = p if (p / "state.json").exists() else (ckpt.latest_checkpoint(p / "checkpoints")
                                                         or ckpt.latest_checkpoint(p))
        if step_dir is None:
            raise FileNotFoundError(f"slm reference {ref}: no checkpoint found")
        meta = json.loads((step_dir / "state.json").read_text())
        m = Decoder(ModelConfig(**meta["config"]["model"]))
        ckpt.load_model_state(m, step_dir / "model.safetensors")
        return m
    from lmlab.train.checkpoint import load_model_file, load_state_into

    sd, meta = load_model_file(p)
    if "model_config" not in meta:
        raise ValueError(f"slm reference {ref}: {p.with_suffix('.json').name} with a model_config is missing")
    m = Decoder(ModelConfig(**meta["model_config"]))
    load_state_into(m, sd, f"slm reference {ref}")
    return m


@OBJECTIVES.register("slm")
class SelectiveLM:
    """Objective args: ratio (k as a fraction, paper: 0.6 at 1B, 0.7 at 7B), mode "online" | "offline",
    reference (module or path; online), scores (path to .npz from save_reference_scores, or an
    {"windows", "scores"} dict; offline), dynamics_every (steps; 0 = off), dynamics_threshold (nats; None =
    median initial probe loss)."""

    def __init__(self, ratio: float = 0.6, mode: str = "online", reference=None, scores=None,
                 dynamics_every: int = 0, dynamics_threshold: Optional[float] = None):
        n_selected(ratio, 1)
        if mode not in ("online", "offline"):
            raise ValueError(f"slm mode must be 'online' or 'offline', got {mode!r}")
        if mode == "online" and reference is None:
            raise ValueError("slm mode 'online' needs objective_args.reference (a model or checkpoint path)")
        if mode == "offline" and scores is None:
            raise ValueError("slm mode 'offline' needs objective_args.scores (.npz from save_reference_scores)")
        self.ratio, self.mode = ratio, mode
        self.ref = load_reference_model(reference) if reference is not None else None
        if self.ref is not None:
            self.ref.eval().requires_grad_(False)
        self._scores = None
        if scores is not None:
            d = np.load(scores) if isinstance(scores, (str, Path)) else scores
            self._scores = {row_key(w[:-1]): s for w, s in zip(d["windows"], d["scores"])}
        self.dynamics_every, self.dyn_threshold = dynamics_every, dynamics_threshold
        self._probe = None

    def setup(self, model, data, cfg, device) -> None:
        if self.ref is not None:
            self.ref.to(device)

    def reference_loss(self, batch: dict) -> torch.Tensor:
        if "ref_loss" in batch:
            return batch["ref_loss"]
        idx = batch["input_ids"]
        if self.mode == "online":
            with torch.no_grad():
                return per_token_loss(_logits(self.ref, idx), batch["targets"])
        rows = idx.cpu().numpy()
        try:
            arr = np.stack([self._scores[row_key(r)] for r in rows])
        except KeyError:
            raise ValueError("slm offline: a batch row has no stored reference score (scores built from other "
                             "data?)") from None
        return torch.as_tensor(arr, device=idx.device)

    def __call__(self, model, batch: dict, step: int):
        idx, tgt = batch["input_ids"], batch["targets"]
        logits = _logits(model, idx)
        ref = self.reference_loss(batch)
        loss, mask, loss_tok = slm_loss(logits, tgt, ref, self.ratio)
        valid = tgt != IGNORE
        with torch.no_grad():
            ex = (loss_tok - ref)[valid]
            metrics = {"slm/selected_frac": float(mask.sum()) / max(int(valid.sum()), 1),
                       "slm/clm_loss": float(loss_tok[valid].mean()),
                       "slm/ref_loss": float(ref[valid].mean()),
                       "slm/excess_mean": float(ex.mean()),
                       "slm/excess_selected": float((loss_tok - ref)[mask].mean())}
        if self.dynamics_every:
            metrics |= self._dynamics(model, batch, step)
        return loss, metrics

    @torch.no_grad()
    def _dynamics(self, model, batch, step) -> dict:
        if self._probe is None:
            idx, tgt = batch["input_ids"][:4].clone(), batch["targets"][:4].clone()
            l0 = per_token_loss(_logits(model, idx), tgt)
            thr = self.dyn_threshold if self.dyn_threshold is not None else float(l0[tgt != IGNORE].median())
            self._probe = (idx, tgt, l0, thr)
        if (step + 1) % self.dynamics_every:  # the trainer logs after optimizer step `step + 1`
            return {}
        idx, tgt, l0, thr = self._probe
        now = per_token_loss(_logits(model, idx), tgt)
        return {f"slm/dyn/{k}": v for k, v in token_dynamics(l0, now, thr, tgt != IGNORE).items()}


def random_k_mask(valid: torch.Tensor, ratio: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(b, t) bool valid -> (b, t) bool mask with exactly ⌈ratio·n_valid⌉ True, uniformly at random over the
    valid tokens."""
    scores = torch.rand(valid.shape, generator=generator).to(valid.device)
    return select_top_k(scores, valid, ratio)


@OBJECTIVES.register("random_tokens")
class RandomTokens:
    """Control for SLM: mean CE over a uniformly random ⌈k%·n⌉ of each batch's valid tokens. Objective args:
    ratio (k as a fraction), seed (of the selection generator)."""

    def __init__(self, ratio: float = 0.6, seed: int = 0):
        n_selected(ratio, 1)
        self.ratio = ratio
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, model, batch: dict, step: int):
        idx, tgt = batch["input_ids"], batch["targets"]
        loss_tok = per_token_loss(_logits(model, idx), tgt)
        valid = tgt != IGNORE
        mask = random_k_mask(valid, self.ratio, self.gen)
        loss = (loss_tok * mask).sum() / mask.sum().clamp_min(1)
        return loss, {"random/selected_frac": float(mask.sum()) / max(int(valid.sum()), 1),
                      "random/clm_loss": float(loss_tok.detach()[valid].mean())}
