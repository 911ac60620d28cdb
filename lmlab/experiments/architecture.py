"""Architecture claims: HGRN2 state expansion, Griffin hybrid, hyper-connections, softmax bottleneck.

All arms train on the embedded multi-domain corpus with the same data, steps and LR; the metric is mean
held-out loss over domains (lower is better) unless stated. Quick scale is sized for a free 2-core CPU
(each experiment, all arms × 3 seeds, about 5 minutes when the machine is free).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from lmlab.experiments.base import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, ArmResult, Experiment, Verdict,
                                    compare, mean_std, trend_verdict)
from lmlab.experiments.common import run_config, train_arm
from lmlab.registry import EXPERIMENTS


# Quick scale on a shared 2-core CPU: 120 steps of 8 × 128 tokens, one mid-run and one final evaluation.
QUICK_TRAIN = {"steps": 120, "batch_size": 8, "warmup_steps": 10, "eval_interval": 60, "eval_batches": 4}


def _cfg(scale: str, name: str, model: dict[str, Any], train: dict | None = None):
    tr = dict(QUICK_TRAIN) if scale == "quick" else {}
    tr.update(train or {})
    return run_config(scale, {"model": model, "train": tr}, name=name)


def _params(model_cfg) -> int:
    from lmlab.models.decoder import Decoder

    return Decoder(model_cfg).num_params()


# ------------------------------------------------------------------------------------ HGRN2 expand ratio
def _hgrn2(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    expand = {"expand1": 1, "expand8": 8}[arm]
    model = {"layer_pattern": ["hgrn2"], "mixer_args": {"hgrn2": {"expand": expand, "chunk": 32}}}
    if scale == "quick":
        model.update({"d_model": 64, "n_layer": 2, "n_head": 4})
    cfg = _cfg(scale, f"hgrn2_expand/{arm}", model)
    res = train_arm(cfg, seed, out)
    res.info["non_embedding_params"] = _params(cfg.model)
    return res


EXPERIMENTS.register("hgrn2_expand", Experiment(
    name="hgrn2_expand", paper="HGRN2 (Qin et al., 2024)",
    claim="outer-product state expansion (expand 8) beats the HGRN1-like expand 1 at equal parameters",
    metric="val_loss", direction="lower", arms=["expand1", "expand8"], baseline="expand1", technique="expand8",
    run=_hgrn2, plots=["val_loss", "train_loss"],
    description="All-HGRN2 decoders; W_q, W_f, W_i, W_o are d×d for any expand ratio, so the parameter counts "
                "are identical; only the recurrent state grows (d·E numbers per layer)."))


# ------------------------------------------------------------------------------ Griffin vs transformer
def _griffin_model(d: int, layers: int, heads: int, window: int, lru_width: int) -> dict[str, Any]:
    return {"d_model": d, "n_layer": layers, "n_head": heads, "layer_pattern": ["rglru", "rglru", "local_attn"],
            "mixer_args": {"rglru": {"lru_width": lru_width}, "local_attn": {"window": window}}}


@functools.lru_cache(maxsize=None)
def matched_lru_width(d: int, layers: int, heads: int, window: int) -> int:
    """RG-LRU width (a multiple of heads) giving the hybrid the non-embedding parameter count closest to the
    all-attention decoder's (the recurrent block has 3·d·w + 2·w²/heads weights, attention 4·d²)."""
    from lmlab.config import ModelConfig

    small = {"vocab_size": 2, "max_seq_len": 8}  # the non-embedding count does not depend on these
    target = _params(ModelConfig(d_model=d, n_layer=layers, n_head=heads, **small))
    return min(range(heads * max(1, d // (2 * heads)), 2 * d + 1, heads),
               key=lambda w: abs(_params(ModelConfig(**_griffin_model(d, layers, heads, window, w), **small))
                                 - target))


def _griffin(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    d, layers, heads = (64, 3, 4) if scale == "quick" else (512, 9, 8)
    window = 32 if scale == "quick" else 512
    if arm == "transformer":
        model = {"d_model": d, "n_layer": layers, "n_head": heads, "layer_pattern": ["attn"]}
    else:
        model = _griffin_model(d, layers, heads, window, matched_lru_width(d, layers, heads, window))
    cfg = _cfg(scale, f"griffin_hybrid/{arm}", model)
    res = train_arm(cfg, seed, out)
    res.info["non_embedding_params"] = _params(cfg.model)
    return res


def _griffin_verdict(exp: Experiment, results: dict[str, list[ArmResult]], tol: float = 0.05) -> Verdict:
    """Parity claim: reproduced if the hybrid's mean loss is within `tol` nats of the transformer's (or below);
    not reproduced if it is worse by more than tol + 2·SE."""
    b = [r.metrics["val_loss"] for r in results["transformer"]]
    t = [r.metrics["val_loss"] for r in results["griffin"]]
    (mb, sb), (mt, st) = mean_std(b), mean_std(t)
    if len(b) < 2 or len(t) < 2:
        return Verdict(INCONCLUSIVE, "needs ≥2 seeds per arm", (mb, sb), (mt, st))
    se = math.sqrt(sb ** 2 / len(b) + st ** 2 / len(t))
    diff = mt - mb
    v = REPRODUCED if diff <= tol else NOT_REPRODUCED if diff - 2 * se > tol else INCONCLUSIVE
    return Verdict(v, f"hybrid − transformer = {diff:+.4f} nats, tolerance {tol}, 2·SE = {2 * se:.4f} -> {v}",
                   (mb, sb), (mt, st), {"diff": diff, "se": se})


EXPERIMENTS.register("griffin_hybrid", Experiment(
    name="griffin_hybrid", paper="Griffin / RecurrentGemma (De et al., 2024)",
    claim="a (recurrent, recurrent, local-MQA) hybrid matches a transformer's held-out loss at equal parameters",
    metric="val_loss", direction="lower", arms=["transformer", "griffin"], baseline="transformer",
    technique="griffin", run=_griffin, verdict=_griffin_verdict, plots=["val_loss", "train_loss"],
    description="RG-LRU width chosen so the hybrid's non-embedding parameter count matches the transformer's; "
                "local attention window 32 of 128 tokens at quick scale; decode memory is constant in context "
                "(benchmarks/results/mixers.md)."))


# ------------------------------------------------------------------------------------ hyper-connections
def _hyper(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    model: dict[str, Any] = {"d_model": 64, "n_layer": 3, "n_head": 4} if scale == "quick" else {}
    if arm != "residual":
        model.update({"residual": "hyper", "residual_args": {"n": int(arm[2:]), "dynamic": True}})
    cfg = _cfg(scale, f"hyper_connections/{arm}", model)
    return train_arm(cfg, seed, out)


def _hyper_verdict(exp: Experiment, results: dict[str, list[ArmResult]]) -> Verdict:
    base = [r.metrics["val_loss"] for r in results["residual"]]
    parts = {a: compare(base, [r.metrics["val_loss"] for r in results[a]], "lower") for a in ("hc2", "hc4")}
    vs = {p.verdict for p in parts.values()}
    v = REPRODUCED if vs == {REPRODUCED} else NOT_REPRODUCED if vs == {NOT_REPRODUCED} else INCONCLUSIVE
    rule = "; ".join(f"{a}: {p.rule}" for a, p in parts.items()) + f" -> both must beat residual: {v}"
    return Verdict(v, rule, parts["hc4"].baseline, parts["hc4"].technique,
                   {a: p.technique for a, p in parts.items()})


EXPERIMENTS.register("hyper_connections", Experiment(
    name="hyper_connections", paper="Hyper-Connections (Zhu et al., 2024)",
    claim="dynamic hyper-connections with n = 2 and n = 4 streams beat the pre-norm residual on held-out loss",
    metric="val_loss", direction="lower", arms=["residual", "hc2", "hc4"], baseline="residual", technique="hc4",
    run=_hyper, verdict=_hyper_verdict, plots=["val_loss", "train_loss"],
    description="Same decoder; only the residual policy changes (DHC, tanh, s = 0.01). Both n = 2 and n = 4 "
                "must beat the residual baseline by 2·SE."))


# ------------------------------------------------------------------------------------ softmax bottleneck
def _rank(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    d = 64 if scale == "quick" else 768
    rank = None if arm == "full" else int(arm[4:])
    model = {"d_model": d, "n_layer": 2, "n_head": 4, "head_rank": rank} if scale == "quick" else \
        {"d_model": d, "head_rank": rank}
    cfg = _cfg(scale, f"bottleneck_rank/{arm}", model)
    res = train_arm(cfg, seed, out)
    res.metrics["head_rank"] = float(rank or d)
    return res


RANK_ARMS = ["rank4", "rank16", "full"]


def _rank_verdict(exp: Experiment, results: dict[str, list[ArmResult]]) -> Verdict:
    xs = [math.log2(results[a][0].metrics["head_rank"]) for a in RANK_ARMS]
    ys = [[r.metrics["val_loss"] for r in results[a]] for a in RANK_ARMS]
    v = trend_verdict(xs, ys, "lower", "val_loss vs log2(head rank)")
    v.extra.update({a: mean_std(y) for a, y in zip(RANK_ARMS, ys)})
    return v


EXPERIMENTS.register("bottleneck_rank", Experiment(
    name="bottleneck_rank", paper="Softmax bottleneck (Godey et al., 2024)",
    claim="held-out loss rises as the rank of the LM head (W = A·B) drops",
    metric="val_loss", direction="lower", arms=RANK_ARMS, baseline="rank4", technique="full",
    run=_rank, verdict=_rank_verdict, plots=["val_loss"],
    description="d = 64 decoder with a rank-r head, r ∈ {4, 16, 64 (full)}; verdict: least-squares slope "
                "of loss vs log2 r negative by > 2 SE."))


def _width(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    """Train with probes logged at every eval; final probes on held-out tokens."""
    import numpy as np
    import torch

    from lmlab.data import load_data
    from lmlab.eval.probes import probe_callback, probe_model
    from lmlab.models.decoder import build_model
    from lmlab.train.trainer import train

    d = {"small": 16, "large": 128}[arm] if scale == "quick" else {"small": 64, "large": 1024}[arm]
    model_args = {"d_model": d, "n_layer": 2, "n_head": 4} if scale == "quick" else {"d_model": d}
    cfg = _cfg(scale, f"bottleneck_width/{arm}", model_args, {"eval_interval": 30} if scale == "quick" else None)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
    data = load_data(cfg.data)
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    val = np.concatenate([v[:4] for v in data.val.values()])[:, :-1]
    idx = torch.as_tensor(val, dtype=torch.long)
    cb = probe_callback(model, idx, every=cfg.train.eval_interval)
    res = train(cfg, out, model=model, data=data, callback=cb)
    final = probe_model(res.model, idx)
    curves = dict(res.curves)
    for k in ("anisotropy", "head_eff_rank_frac", "hidden_eff_rank_frac"):
        curves[f"probe/{k}"] = [(r["step"], r[k]) for r in cb.records] + [(res.steps, final[k])]
    metrics = {"val_loss": res.val_loss, **final}
    return ArmResult(metrics=metrics, curves=curves, info={"d_model": d})


def _width_verdict(exp: Experiment, results: dict[str, list[ArmResult]]) -> Verdict:
    get = lambda a, k: [r.metrics[k] for r in results[a]]  # noqa: E731
    aniso = compare(get("large", "anisotropy"), get("small", "anisotropy"), "higher")
    rank = compare(get("large", "hidden_eff_rank_frac"), get("small", "hidden_eff_rank_frac"), "lower")
    vs = {aniso.verdict, rank.verdict}
    v = REPRODUCED if vs == {REPRODUCED} else NOT_REPRODUCED if NOT_REPRODUCED in vs else INCONCLUSIVE
    rule = (f"small vs large: anisotropy higher ({aniso.rule}); hidden effective-rank fraction lower "
            f"({rank.rule}) -> {v}")
    return Verdict(v, rule, aniso.baseline, aniso.technique,
                   {"eff_rank_frac_large": rank.baseline, "eff_rank_frac_small": rank.technique})


EXPERIMENTS.register("bottleneck_width", Experiment(
    name="bottleneck_width", paper="Softmax bottleneck (Godey et al., 2024)",
    claim="small hidden sizes degenerate: last-layer anisotropy higher and hidden effective rank (as a fraction "
          "of d) lower than in a wider model",
    metric="anisotropy", direction="higher", arms=["small", "large"], baseline="large", technique="small",
    run=_width, verdict=_width_verdict,
    plots=["val_loss", "probe/anisotropy", "probe/hidden_eff_rank_frac", "probe/head_eff_rank_frac"],
    description="d = 16 vs d = 128 (2 layers); probes on held-out tokens logged every eval (late-training "
                "saturation shows in the curves)."))
