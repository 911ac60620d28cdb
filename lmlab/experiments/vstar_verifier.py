"""V-STaR (Hosseini et al. 2024): best-of-k by a DPO verifier vs majority vote vs the first sample.

One V-STaR run per seed (generator SFT -> 2 STaR iterations collecting correct ≻ incorrect pairs -> DPO
verifier); the three arms are three selection rules applied to the SAME k held-out samples, so they differ
only by how the answer is picked. The run is cached per (seed, scale) in-process so the arms share it.
Task: sorting 5 digits (lmlab.align.envs.SortingTask), exact checker.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from lmlab.experiments.base import ArmResult, Experiment, Verdict, arm_values, compare, mean_std
from lmlab.registry import EXPERIMENTS

_CACHE: dict = {}


def _setup(scale: str):
    from lmlab.align.vstar import VStarConfig

    quick = scale == "quick"
    n_train, n_sft, n_test, d, layers = (2048, 256, 200, 64, 2) if quick else (8192, 1024, 1000, 128, 4)
    cfg = dict(iterations=2, k=8, max_new_tokens=10, sft_steps=300 if quick else 2000,
               star_steps=150 if quick else 1000, dpo_epochs=6,
               max_pairs_per_prompt=1)
    return n_train, n_sft, n_test, d, layers, cfg, VStarConfig


def _vstar_once(seed: int, scale: str) -> dict:
    from lmlab.align.envs import SortingTask
    from lmlab.align.vstar import CharCodec, evaluate_selection, run_vstar
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    key = (seed, scale)
    if key in _CACHE:
        return _CACHE[key]
    torch.set_num_threads(1)
    n_train, n_sft, n_test, d, layers, kw, VStarConfig = _setup(scale)
    task, codec = SortingTask(n=5, hi=9), CharCodec()
    rng = random.Random(seed)
    train = [task.sample(rng) for _ in range(n_train)]
    test = [task.sample(rng) for _ in range(n_test)]
    torch.manual_seed(seed)
    gen = Decoder(ModelConfig(vocab_size=codec.vocab_size, d_model=d, n_layer=layers, n_head=2, max_seq_len=48))
    cfg = VStarConfig(seed=seed, **kw)
    t0 = time.time()
    res = run_vstar(task, gen, codec, train, [(p, p.answer) for p in train[:n_sft]], cfg)
    ev = evaluate_selection(task, res, codec, test, cfg, seed + 10_000)
    dpo = res.history[-1]["dpo"]
    out = {"eval": ev, "pairs": len(res.pairs), "seconds": time.time() - t0,
           "train_acc": [(h["iteration"], h["train_sample_acc"]) for h in res.history[:-1]],
           "dpo_loss": [(i, h["loss"]) for i, h in enumerate(dpo)]}
    _CACHE.clear()                       # keep only the current seed
    _CACHE[key] = out
    return out


def _run(arm: str, seed: int, scale: str, out_dir: Path) -> ArmResult:
    o = _vstar_once(seed, scale)
    ev = o["eval"]
    return ArmResult(metrics={"heldout_acc": ev[arm], **{f"{k}_acc" if k in ("first", "majority", "verifier")
                                                           else k: v for k, v in ev.items()},
                              "pairs": float(o["pairs"]), "vstar_seconds": o["seconds"]},
                     curves={"train_sample_acc": o["train_acc"], "dpo_loss": o["dpo_loss"]})


def _verdict(exp: Experiment, results: dict) -> Verdict:
    """Paired one-sided t-test over seeds (the arms are selection rules applied to the SAME k samples of one
    V-STaR run per seed), α = 0.05; the first-sample baseline and the verifier's ranking accuracy are reported
    beside it."""
    maj, ver = arm_values(results, "majority", "verifier", "heldout_acc", paired=True)
    v = compare(maj, ver, "higher", paired=True)
    diffs = [b - a for a, b in zip(maj, ver)]
    first = mean_std([r.metrics["heldout_acc"] for r in results["first"]])
    rank = mean_std([r.metrics["verifier_rank_acc"] for r in results["verifier"]])
    v.rule += (f"; {sum(d > 0 for d in diffs)}/{len(diffs)} seeds with verifier > majority; first sample "
               f"{first[0]:.3f}±{first[1]:.3f}; held-out verifier ranking accuracy {rank[0]:.3f}±{rank[1]:.3f}")
    v.extra.update({"paired_gain": mean_std(diffs), "first": first, "verifier_rank_acc": rank})
    return v


EXPERIMENTS.register("vstar", Experiment(
    name="vstar", paper="V-STaR: Training Verifiers for Self-Taught Reasoners (Hosseini et al. 2024)",
    claim="best-of-k by a DPO verifier trained on correct ≻ incorrect self-generated solutions beats "
          "majority vote over the same k samples",
    metric="heldout_acc", direction="higher", arms=["first", "majority", "verifier"], baseline="majority",
    technique="verifier", run=_run, verdict=_verdict, paired=True, plots=["train_sample_acc", "dpo_loss"],
    description="Sorting 5 digits (exact checker); char-level 2-layer d=64 lmlab Decoder; SFT on 256 gold "
                "solutions, 2 STaR iterations (k = 8 samples per problem, fine-tune on SFT ∪ "
                "correct samples) on 2048 training problems; all iterations' (correct, incorrect) pairs (1 per "
                "problem per iteration, ≈ 3000) train a DPO verifier (β = 0.1, 6 epochs) from the SFT model, which is also π_ref. Held-out: "
                "200 problems, k = 8 samples from the final generator; arms = first sample / majority vote / "
                "argmax β·(log π_V − log π_ref)."))
