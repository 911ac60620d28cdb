"""Softmax-bottleneck probes (Godey et al., 2024, "Why do small language models underperform?").

Notation: N = probed token positions, d = d_model, v = vocab.

    anisotropy(X)       mean pairwise cosine similarity of the rows of X (N, d), diagonal excluded;
                        0 for isotropic representations, → 1 when they collapse onto one direction
    singular_spectrum   singular values of a matrix, largest first, divided by the largest
    effective_rank(s)   exp(entropy(s / Σ s)) (Roy & Vetterli 2007): between 1 and min(shape)
Godey et al. report that small models' last hidden states become anisotropic and their LM-head spectrum
degenerates late in training (saturation), and that a head of rank below ~the model's needs costs loss.

`probe_model(model, idx)` works on any Decoder (rank-constrained heads included: their W = A·B);
`probe_checkpoint(path, idx)` rebuilds the model from a trainer checkpoint directory;
`probe_callback(model, idx)` returns a trainer callback that logs probes at eval steps.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch


def anisotropy(x: torch.Tensor) -> float:
    """Mean cosine similarity over all ordered pairs i ≠ j of rows of x (N, d), in O(N·d)."""
    u = torch.nn.functional.normalize(x.double(), dim=-1)
    n = u.shape[0]
    if n < 2:
        raise ValueError(f"anisotropy needs at least 2 vectors, got {n}")
    s = u.sum(0)
    return float((s @ s - n) / (n * (n - 1)))


def naive_anisotropy(x: torch.Tensor) -> float:
    """Reference: the explicit N × N cosine matrix."""
    u = torch.nn.functional.normalize(x.double(), dim=-1)
    c = u @ u.T
    n = c.shape[0]
    return float((c.sum() - c.diagonal().sum()) / (n * (n - 1)))


def singular_spectrum(w: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) normalised by the largest."""
    s = torch.linalg.svdvals(w.detach().double())
    return s / s[0]


def effective_rank(s: torch.Tensor) -> float:
    """exp of the Shannon entropy of the normalised singular values s (any scale)."""
    p = s.double() / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def head_weight(model) -> torch.Tensor:
    """(v, d) LM-head matrix; a rank-constrained head exposes its product A·B as `.weight`."""
    return model.head.weight


@torch.no_grad()
def probe_model(model, idx: torch.Tensor, max_tokens: int = 4096) -> dict[str, float]:
    """Run `idx` (b, t) through the model and measure last-layer and head geometry."""
    was_training = model.training
    model.eval()
    try:
        out = model(idx, return_hidden=True)
    finally:
        model.train(was_training)
    h = out.hidden.reshape(-1, out.hidden.shape[-1])[:max_tokens].float()      # (N, d) final-norm hidden states
    s_head = singular_spectrum(head_weight(model))
    s_hid = singular_spectrum(h - h.mean(0))
    d = h.shape[-1]
    return {
        "anisotropy": anisotropy(h),
        "hidden_eff_rank": effective_rank(s_hid),
        "hidden_eff_rank_frac": effective_rank(s_hid) / d,
        "head_eff_rank": effective_rank(s_head),
        "head_eff_rank_frac": effective_rank(s_head) / min(head_weight(model).shape),
        "head_sv_tail": float(s_head[-1]),                      # smallest / largest singular value
        "head_sv_median": float(s_head.median()),
    }


def load_checkpoint_model(path: str | Path):
    """A Decoder built from the config stored in a trainer checkpoint directory, weights loaded."""
    from lmlab.config import RunConfig, validate
    from lmlab.models.decoder import build_model
    from lmlab.train.checkpoint import latest_checkpoint, load_model_state

    path = Path(path)
    if not (path / "state.json").exists():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint at {str(path)!r} (state.json missing)")
        path = found
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if "config" not in meta:
        raise ValueError(f"checkpoint {str(path)!r}: state.json has no 'config'")
    cfg = validate(RunConfig, meta["config"], source=str(path / "state.json"))
    model = build_model(cfg.model)
    load_model_state(model, path / "model.safetensors")
    return model, cfg


def probe_checkpoint(path: str | Path, idx: torch.Tensor, max_tokens: int = 4096) -> dict[str, float]:
    model, _ = load_checkpoint_model(path)
    return probe_model(model, idx, max_tokens)


def probe_callback(model, idx: torch.Tensor, every: int = 50,
                   sink: Optional[list] = None) -> Callable[[int, dict], None]:
    """A `train(..., callback=)` hook: every `every` steps append {"step", **probes} to `sink` and the record."""
    sink = sink if sink is not None else []

    def cb(step: int, rec: dict) -> None:
        # the trainer logs several records per step (train, eval): probe once per step
        if step % every == 0 and not (sink and sink[-1]["step"] == step):
            p = probe_model(model, idx)
            rec.update({f"probe/{k}": v for k, v in p.items()})
            sink.append({"step": step, **p})

    cb.records = sink  # type: ignore[attr-defined]
    return cb


# ------------------------------------------------------------------------------------------------- CLI
def register(sub) -> None:
    """`lmlab probe CKPT`: softmax-bottleneck probes of a checkpoint on its own held-out data."""
    p = sub.add_parser("probe", help="softmax-bottleneck probes (anisotropy, spectra, effective rank) of a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint directory (step_*/) or a run's checkpoint folder")
    p.add_argument("--rows", type=int, default=4, help="held-out windows per domain (default 4)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    import numpy as np

    from lmlab.data.pipeline import load_data

    model, cfg = load_checkpoint_model(args.checkpoint)
    data = load_data(cfg.data)
    rows = np.concatenate([v[:args.rows] for v in data.val.values()])[:, :-1]
    res = probe_model(model, torch.as_tensor(rows, dtype=torch.long))
    print(json.dumps({k: round(v, 6) for k, v in res.items()}, indent=2))
    return 0
