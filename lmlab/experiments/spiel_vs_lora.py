"""SpIEL vs LoRA at equal trainable parameters (Ansell et al., 2024: SpIEL "matches or beats LoRA").

Setup (quick scale, synthetic so that the optimum is known and nothing downloads):
  * Task A: a sparse first-order Markov chain over a 64-token vocabulary (each token has 4 likely successors,
    Dirichlet weights). A 2-layer lmlab Decoder is pretrained on A once (cached per process and on disk).
  * Task B (the fine-tune): the same chain with the successor distributions of half of the tokens redrawn.
  * Arms fine-tune the frozen backbone on B with the same steps, batch, schedule and LR-grid protocol:
      lora       — LoRA r=4, α=8 on every linear of every block (q, k, v, o, gate, up, down);
      spiel      — SpIEL-AG on the same linears with exactly LoRA's trainable-parameter count
                   (cycle 15 steps, drop fraction 0.1 cosine-decayed, gradients accumulated over 5 steps);
      fixed_mask — ablation: the same sparse deltas on a random mask that never changes (drop fraction 0).
    Per seed: new adapter init / SpIEL index draw and a new fine-tune data order (shared by the arms of that
    seed, so arms are compared seed by seed); the backbone is shared.
    Hyper-parameters (LR for lora and spiel from {3e-3, 1e-2, 3e-2, 1e-1}, fixed_mask uses spiel's; SpIEL drop
    fraction from {0.1, 0.2, 0.3},
    cycle length, AG vs MA) were picked on a separate sweep seed (99), never on the reported seeds.
  * Metric: held-out next-token loss on B. The entropy rate of B (the best achievable loss) is reported too.

Verdict ("matches/approaches LoRA", fixed before the runs): a paired non-inferiority t-test over seeds (the arms
of a seed share the fine-tune data order), one-sided at α = 0.05: per seed dᵢ = loss(SpIEL) − loss(LoRA);
tol = 5% of LoRA's excess loss over the entropy rate (at least 0.01 nats).
  reproduced      if H1: mean d < tol is significant (the one-sided 95% upper bound of d is below tol);
  not reproduced  if H1: mean d > tol is significant (SpIEL is worse by more than tol);
  inconclusive    otherwise, or with fewer than 2 paired seeds.
The PEFT method arguments come from configs/peft/spiel_vs_lora.yaml (`extra.peft` for SpIEL, `extra.baseline_peft`
for LoRA); the sizes that depend on the scale (rank, SpIEL budget = LoRA's count, cycle length, total steps) are
set here.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from lmlab.experiments.base import (INCONCLUSIVE, ArmResult, Experiment, Verdict, arm_values, difference, mean_std,
                                    noninferior)
from lmlab.registry import EXPERIMENTS

VOCAB = 64
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate", "up", "down"]
SCALES = {
    "quick": {"d_model": 64, "n_layer": 2, "n_head": 4, "seq": 64, "batch": 16, "pre_steps": 300, "ft_steps": 150,
              "rows": 1500, "rank": 4},
    "full": {"d_model": 256, "n_layer": 4, "n_head": 8, "seq": 128, "batch": 32, "pre_steps": 3000, "ft_steps": 1000,
             "rows": 20000, "rank": 8},
}
# Best of {3e-3, 1e-2, 3e-2, 1e-1} for each arm on a held-out sweep seed (99); both picked 3e-2.
LR = {"lora": 3e-2, "spiel": 3e-2, "fixed_mask": 3e-2}


@dataclass
class SyntheticData:
    """The trainer's data interface: packed rows (N, t+1) and per-domain validation rows."""
    train: np.ndarray
    val: dict[str, np.ndarray]
    domains: list[str]
    tokenizer: None = None
    stats: dict = field(default_factory=dict)


def markov_chain(rng: np.random.Generator, vocab: int = VOCAB, fanout: int = 4) -> np.ndarray:
    """(v, v) transition matrix: each row puts Dirichlet mass on `fanout` random successors plus a 2% floor."""
    P = np.full((vocab, vocab), 0.02 / vocab)
    for i in range(vocab):
        succ = rng.choice(vocab, fanout, replace=False)
        P[i, succ] += 0.98 * rng.dirichlet(np.ones(fanout))
    return P / P.sum(1, keepdims=True)


def task_pair(seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    A = markov_chain(rng)
    B = A.copy()
    changed = rng.choice(VOCAB, VOCAB // 2, replace=False)
    B[changed] = markov_chain(rng)[changed]
    return A, B


def sample_rows(P: np.ndarray, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    cdf = np.cumsum(P, 1)
    x = np.empty((n, length), np.int64)
    x[:, 0] = rng.integers(0, P.shape[0], n)
    for t in range(1, length):
        u = rng.random(n)
        x[:, t] = np.minimum((cdf[x[:, t - 1]] < u[:, None]).sum(1), P.shape[0] - 1)
    return x


def entropy_rate(P: np.ndarray) -> float:
    """Expected next-token entropy under the stationary distribution (the best achievable loss, nats)."""
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi = pi / pi.sum()
    H = -(P * np.log(P)).sum(1)
    return float(pi @ H)


def make_data(P: np.ndarray, name: str, sc: dict, seed: int) -> SyntheticData:
    rng = np.random.default_rng(seed)
    train = sample_rows(P, sc["rows"], sc["seq"] + 1, rng)
    val = sample_rows(P, 128, sc["seq"] + 1, np.random.default_rng(seed + 999))
    return SyntheticData(train, {name: val}, [name])


def _run_cfg(scale: str, steps: int, lr: float, seed: int, name: str):
    from lmlab.experiments.common import run_config

    sc = SCALES[scale]
    return run_config(scale, {
        "model": {"vocab_size": VOCAB, "d_model": sc["d_model"], "n_layer": sc["n_layer"], "n_head": sc["n_head"],
                  "max_seq_len": sc["seq"]},
        "data": {"seq_len": sc["seq"]},
        "train": {"steps": steps, "batch_size": sc["batch"], "lr": lr, "warmup_steps": max(steps // 10, 1),
                  "weight_decay": 0.0, "eval_interval": max(steps // 5, 1), "eval_batches": 8, "seed": seed,
                  "device": "cpu" if scale == "quick" else "auto"}}, name=name)


_BACKBONE: dict = {}


def pretrained_backbone(scale: str):
    """Decoder pretrained on task A (deterministic: seed 0); cached in-process and under $LMLAB_CACHE."""
    import torch

    from lmlab.models.decoder import Decoder
    from lmlab.train.checkpoint import load_model_file, load_state_into, save_model
    from lmlab.train.trainer import train

    if scale in _BACKBONE:
        return _BACKBONE[scale]
    sc = SCALES[scale]
    cfg = _run_cfg(scale, sc["pre_steps"], 3e-3, 0, f"peft_backbone_{scale}")
    cache = Path(os.environ.get("LMLAB_CACHE", Path.home() / ".cache" / "lmlab")) / f"peft_backbone_{scale}_v1.safetensors"
    model = Decoder(cfg.model)
    A, _ = task_pair()
    if cache.exists():
        load_state_into(model, load_model_file(cache)[0], f"backbone cache {cache}")
    else:
        torch.manual_seed(0)
        model = Decoder(cfg.model)
        train(cfg, None, model=model, data=make_data(A, "A", sc, 0))
        save_model(model, cache, {"model_config": cfg.model.model_dump(mode="json")})
    _BACKBONE[scale] = (cfg.model, model.state_dict())
    return _BACKBONE[scale]


def lora_budget(model, rank: int) -> int:
    from torch import nn

    from lmlab.nn.peft.lora import find_linears
    return sum(rank * (m.in_features + m.out_features)
               for n in find_linears(model, LINEARS) for m in [model.get_submodule(n)] if isinstance(m, nn.Linear))


def peft_args(arm: str, scale: str, seed: int, budget: int) -> dict:
    """The arm's apply_peft arguments: the recipe's method arguments with this scale's sizes."""
    from lmlab.experiments.common import recipe

    sc, r = SCALES[scale], recipe("peft/spiel_vs_lora.yaml")["extra"]
    if arm == "lora":
        return {**r["baseline_peft"], "r": sc["rank"], "alpha": 2 * sc["rank"]}
    if arm in ("spiel", "fixed_mask"):
        return {**r["peft"], "n_trainable": budget, "update_interval": max(sc["ft_steps"] // 10, 2),
                "drop_fraction": 0.0 if arm == "fixed_mask" else r["peft"]["drop_fraction"],
                "total_steps": sc["ft_steps"], "seed": seed,
                "init": "random" if arm == "fixed_mask" else "grad"}   # fixed_mask keeps a random mask
    raise ValueError(f"unknown arm {arm!r}; choose lora, spiel or fixed_mask")


def arm_config(arm: str, scale: str, seed: int = 0):
    """The fine-tune's RunConfig (the model is the pretrained backbone with the arm's PEFT applied)."""
    if arm not in LR:
        raise ValueError(f"unknown arm {arm!r}; choose lora, spiel or fixed_mask")
    return _run_cfg(scale, SCALES[scale]["ft_steps"], LR[arm], seed, f"peft_ft/{arm}")


def build_arm(arm: str, scale: str, seed: int):
    """The pretrained backbone with this arm's PEFT applied; returns (model, handle)."""
    import torch

    from lmlab.models.decoder import Decoder
    from lmlab.nn.peft import apply_peft

    mcfg, sd = pretrained_backbone(scale)
    sc = SCALES[scale]
    model = Decoder(mcfg)
    model.load_state_dict(sd)
    torch.manual_seed(seed)
    budget = lora_budget(model, sc["rank"])
    h = apply_peft(model, peft_args(arm, scale, seed, budget))
    if h.n_trainable() != budget:
        raise AssertionError(f"{arm}: {h.n_trainable()} trainable params != budget {budget}")
    return model, h


def run_arm(arm: str, seed: int, scale: str, out_dir: Optional[Path]) -> ArmResult:
    from lmlab.experiments.common import train_arm

    sc = SCALES[scale]
    _, B = task_pair()
    model, h = build_arm(arm, scale, seed)
    cfg = arm_config(arm, scale, seed)
    res = train_arm(cfg, seed, out_dir, model=model, data=make_data(B, "B", sc, 100 + seed))
    res.metrics["entropy_rate"] = entropy_rate(B)
    res.metrics["excess_loss"] = res.metrics["val_loss"] - res.metrics["entropy_rate"]
    res.info["trainable_params"] = h.n_trainable()
    res.info["seed"] = seed
    if h.spiel is not None:
        res.info["prune_regrow_cycles"] = len(h.spiel.history)
    return res


def matches_or_approaches(exp: Experiment, results: dict[str, list[ArmResult]]) -> Verdict:
    """Paired non-inferiority of SpIEL to LoRA within tol (see the module docstring)."""
    lo_all = [r.metrics["val_loss"] for r in results["lora"]]
    sp_all = [r.metrics["val_loss"] for r in results["spiel"]]
    (ml, sl), (ms, ss) = mean_std(lo_all), mean_std(sp_all)
    lo, sp = arm_values(results, "lora", "spiel", "val_loss", paired=True)
    if len(lo) < 2 or math.isnan(ml) or math.isnan(ms):
        return Verdict(INCONCLUSIVE, f"needs ≥2 paired seeds (got {len(lo)})", (ml, sl), (ms, ss))
    H = float(np.mean([r.metrics["entropy_rate"] for r in results["lora"]]))
    tol = max(0.05 * (ml - H), 0.01)
    v = noninferior(lo, sp, tol, "lower", paired=True)
    d, se = -v.extra["gain"], v.extra["se"]
    extra = {"d": d, "se": se, "tol": tol, "entropy_rate": H, "df": v.extra["df"], "p": v.extra["p"]}
    ablation = ""
    fs, fx = arm_values(results, "spiel", "fixed_mask", "val_loss", paired=True)
    if fs:
        f = difference(fs, fx, "higher", paired=True)          # gain = fixed_mask − SpIEL
        extra.update({"fixed_minus_spiel": f.gain, "fixed_minus_spiel_se": f.se})
        ablation = f"; ablation fixed_mask − SpIEL = {f.gain:+.4f} ± {f.se:.4f} (SE)"
    rule = (f"paired SpIEL − LoRA val loss d = {d:+.4f} ± {se:.4f} (SE, n={len(lo)}), tol = {tol:.4f} (5% of "
            f"LoRA's excess {ml - H:.4f} over entropy rate {H:.4f}, ≥ 0.01); {v.rule}{ablation}")
    return Verdict(v.verdict, rule, (ml, sl), (ms, ss), extra)


EXPERIMENTS.register("spiel_vs_lora", Experiment(
    name="spiel_vs_lora", paper="SpIEL (Ansell et al., 2024)",
    claim="sparse fine-tuning with prune/regrow matches/approaches LoRA at equal trainable parameters",
    metric="val_loss", direction="lower", arms=["lora", "spiel", "fixed_mask"], baseline="lora", technique="spiel",
    run=run_arm, arm_config=arm_config, paired=True, verdict=matches_or_approaches, plots=["val_loss", "train_loss"],
    description="Pretrain a 2-layer Decoder on a synthetic Markov chain, fine-tune (frozen base) on a chain with "
                "half its rows redrawn; LoRA r=4 on all block linears vs SpIEL-AG with the same parameter count "
                "(plus a fixed random sparse mask as ablation)."))
