"""Data-technique claims: model collapse with truncated tails, reasoning-path random walks, Rho-1 selective
language modeling, WRAP rephrasing. Each experiment's arms see equal training tokens; verdict rules are
written next to each registration.

Rho-1 (`rho1_slm`), in the paper's setting — design and rule fixed before any run of this version. (The
earlier version trained the reference on the target domain of a mixed corpus, so SLM mostly kept target-domain
tokens: it measured domain filtering, and its paired rule was adopted after seeing the data.)

Pool: the packed training windows (seq_len + 1 tokens each; a window is the pool's "document") of one mixed
distribution — docs + bible_web at quick scale, all five embedded domains at full scale. Synthetic noise is
injected into a fraction `noise_docs` of the windows, chosen by a generator seeded with `noise_seed` (the same
pool for every seed and arm): in a chosen window, spans of U[span] tokens are overwritten at random positions
until at least `noise_frac` of its tokens are noise; each span is, with probability 1/2, uniformly random token
ids (garbage) or else the start of a fixed tokenized boilerplate line (cookie banner / navigation text,
duplicated across the pool). Quick scale: half the windows, at least half of each chosen window's tokens.
The clean subset is the windows that received no noise; they are bitwise the pre-noise windows.

Reference: the same model trained with plain CLM on the clean subset only (`ref_steps` × batch windows),
once, shared by every seed and arm; its training tokens and the SLM arm's extra reference forward passes are
reported in the verdict's extra fields.

Arms (same model and config; the arms of one seed share model init and batch order over the pool):
  clm         CLM on every token of the noisy pool;
  slm         SLM, k = 60 %: the top ⌈k·n⌉ tokens of each batch by excess loss L_θ − L_ref (online reference);
  random      the same budget on a uniformly random ⌈k·n⌉ of each batch's tokens;
  clean_only  CLM on the reference's clean subset alone — an upper reference, reported, not claimed.
Equal training tokens: every arm runs the same steps × batch × seq_len tokens through its forward pass (the
token budget); slm and random take the gradient of exactly ⌈60 %⌉ of them, clm and clean_only of all.
Metric: held-out loss on the clean validation windows of the pool's domains (documents never in the pool),
mean over domains (`val_loss`).

Verdict rule: reproduced iff SLM's held-out loss is lower than CLM's AND lower than random-k's, each by a
one-sided paired t-test over seeds at α = 0.05 (compare(..., paired=True)), combined with combine(how="all");
not reproduced if either test is significant the other way; inconclusive otherwise. clean_only is reported.
Settings were fixed before any run (no tuning: a smoke run on seeds 100–101 only checked the wiring);
reported numbers come from seeds 0, 1, 2.

WRAP (`wrap_rephrase`) — rule fixed before the rerun. The claim is unchanged: real vs real + SmolLM2 rephrases
on held-out perplexity over KJV, WEB, BBE and docstrings, one-sided Welch t-test at α = 0.05; neither arm
trains on WEB or BBE. The stand-in arms train on WEB (real_medium) and BBE (real_easy), which were also
evaluation domains, so every comparison involving a stand-in arm is now scored on KJV + docstrings only
(`standin_ppl`); the stand-ins stay as reported extras, never the verdict.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np

from lmlab.experiments.base import ArmResult, Experiment, Verdict, arm_values, combine, compare, exceeds, mean_std
from lmlab.registry import EXPERIMENTS


def pack(seqs: list[list[int]], seq_len: int) -> np.ndarray:
    """Concatenate token sequences into one stream and cut it into (N, seq_len+1) windows."""
    stream = np.fromiter((t for s in seqs for t in s), dtype=np.int64)
    n = len(stream) // (seq_len + 1)
    return stream[:n * (seq_len + 1)].reshape(n, seq_len + 1)


def window_data(train: np.ndarray, val: dict[str, np.ndarray], vocab: int, tokenizer=None):
    """The minimal object the trainer needs (what lmlab.data.load_data returns, for hand-built corpora)."""
    return SimpleNamespace(train=train, val=val, domains=list(val), tokenizer=tokenizer,
                           stats={"train_windows": int(len(train)), "vocab": vocab})


# ============================================================================================================
# Tale of Tails — the memoriser of the theory, trained on clean vs tail-truncated synthetic Zipf data.
# ============================================================================================================
COLLAPSE = {"quick": dict(n=200_000, beta=2.0, top_k=100, t0=100_000, gens=3, top_p=0.995, mix=0.1,
                          Ts=np.unique(np.logspace(2, 6.5, 14).astype(int)).tolist()),
            "full": dict(n=2_000_000, beta=2.0, top_k=1000, t0=1_000_000, gens=3, top_p=0.995, mix=0.1,
                         Ts=np.unique(np.logspace(2, 7.5, 18).astype(int)).tolist())}


def _collapse_arm(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.data import zipf as Z
    from lmlab.eval import collapse as C

    c = COLLAPSE[scale]
    rng = np.random.default_rng(seed)
    p = Z.zipf_probs(c["n"], c["beta"])
    if arm == "clean":
        q = p
    elif arm == "topk":        # generation 1 with a top-k sampler (the paper's "tail cut" model)
        q = Z.generation(p, 1, c["t0"], rng, top_k=c["top_k"])
    elif arm == "gen_topp":    # generation k of top-p sampling: the tail erodes further each generation
        q = Z.generation(p, c["gens"], c["t0"], rng, top_p=c["top_p"])
    elif arm == "mixed":       # a small fraction of clean data mixed into the top-k synthetic data
        q = Z.mixed(p, Z.generation(p, 1, c["t0"], rng, top_k=c["top_k"]), c["mix"])
    else:
        raise ValueError(f"unknown arm {arm!r}")
    E = C.error_curve(p, q, c["Ts"], rng)
    late = len(c["Ts"]) // 2
    fit = C.fit_power_law(c["Ts"][late:], E[late:])
    return ArmResult(metrics={"test_error": E[-1], "late_exponent": fit["c"],
                              "plateau_theory": Z.tail_mass(p, c["top_k"]),
                              "support": int(np.count_nonzero(q))},
                     curves={"test_error": list(zip(map(float, c["Ts"]), E))},
                     info={"fit_late": fit, "theory_exponent": C.theory_exponent(c["beta"])})


def _collapse_verdict(exp: Experiment, res: dict[str, list[ArmResult]]) -> Verdict:
    """Four one-sided t-tests at α = 0.05, combined with how="all": (a) the clean error keeps scaling — mean
    late exponent > 0.5·(1 − 1/β); (b) the top-k arm plateaus — its mean late exponent < 0.25 × clean's mean
    and (c) its mean final error > 0.9·Σ_{i>k} p_i (one-sample t); (d) top-k's final error exceeds clean's
    (Welch, compare)."""
    cl, tk = res["clean"], res["topk"]
    get = lambda rs, k: [r.metrics[k] for r in rs]  # noqa: E731
    c_clean, c_topk = mean_std(get(cl, "late_exponent")), mean_std(get(tk, "late_exponent"))
    theory = cl[0].info["theory_exponent"]
    plateau = tk[0].metrics["plateau_theory"]
    gap = compare(get(cl, "test_error"), get(tk, "test_error"), "higher")
    parts = {"clean scales": exceeds(get(cl, "late_exponent"), 0.5 * theory, "higher", "clean late exponent"),
             "top-k flattens": exceeds(get(tk, "late_exponent"), 0.25 * c_clean[0], "lower", "top-k late exponent"),
             "top-k at plateau": exceeds(get(tk, "test_error"), 0.9 * plateau, "higher",
                                         "top-k final error (vs 0.9·Σ_(i>k) p_i)"),
             "top-k error > clean": gap}
    extra = {"clean_exponent": c_clean, "topk_exponent": c_topk, "theory_exponent": theory,
             "plateau_theory": plateau}
    for arm in ("gen_topp", "mixed"):
        if res.get(arm):
            extra[f"{arm}_error"] = mean_std(get(res[arm], "test_error"))
            extra[f"{arm}_exponent"] = mean_std(get(res[arm], "late_exponent"))
    return combine(parts, "all", f"theory exponent {theory:.2f}", gap.baseline, gap.technique, extra)


EXPERIMENTS.register("model_collapse_tails", Experiment(
    name="model_collapse_tails", paper="A Tale of Tails: Model Collapse as a Change of Scaling Laws",
    claim="training on tail-truncated synthetic data makes the error plateau instead of following the scaling law",
    metric="test_error", direction="higher", arms=["clean", "topk", "gen_topp", "mixed"], baseline="clean",
    technique="topk", run=_collapse_arm, verdict=_collapse_verdict, plots=["test_error"],
    description=("Hutter memoriser on Zipf(β=2) items (N=2·10^5): clean samples vs samples of a generation-1 "
                 "model with a top-k=100 sampler, generation 3 of a top-p=0.995 sampler, and top-k data mixed "
                 "with 10% clean data; test error vs training-set size T=10^2…3·10^6. Theory: clean error ∝ "
                 "T^−(1−1/β); truncated data plateaus at Σ_{i>k} p_i.")))


# ============================================================================================================
# Reasoning paths — an LM pre-trained on random walks vs on the triples alone, same tokens.
# ============================================================================================================
WALKS = {"quick": dict(n_entities=150, n_base=4, edge_prob=0.6, heldout=0.3, walk_len=4, seq_len=32,
                       steps=600, batch=32, d_model=64, n_layer=2, n_head=4, lr=4e-3),
         "full": dict(n_entities=2000, n_base=8, edge_prob=0.5, heldout=0.2, walk_len=8, seq_len=128,
                      steps=5000, batch=64, d_model=256, n_layer=4, n_head=8, lr=1e-3)}


def _walks_corpus(arm: str, seed: int, c: dict):
    from lmlab.data import random_walks as W

    kg = W.synthetic_kg(c["n_entities"], c["n_base"], edge_prob=c["edge_prob"], seed=1234)  # same KG all seeds
    train_kg, held = W.split_heldout(kg, c["heldout"], seed=1234)
    voc = W.KGVocab(kg)
    rng = random.Random(seed)
    n_tokens = (c["steps"] * c["batch"] + 64) * (c["seq_len"] + 1)   # identical budget for both arms
    seqs, total = [], 0
    triples = sorted(train_kg.triples)
    while total < n_tokens:
        if arm == "walks":
            s = voc.walk_ids(W.random_walks(train_kg, 1, c["walk_len"], rng)[0])
        elif arm == "triples":
            s = voc.triple_ids(*triples[rng.randrange(len(triples))])
        else:
            raise ValueError(f"unknown arm {arm!r}")
        seqs.append(s)
        total += len(s)
    return kg, train_kg, held, voc, pack(seqs, c["seq_len"])


def _query_logprobs(model, voc, queries) -> np.ndarray:
    """log p(t | '.', h, r) for each (h, r, t): the LM's belief in the tail after a sentence boundary."""
    import torch

    ctx = torch.tensor([[voc.dot, h, voc.E + r] for h, r, _ in queries], dtype=torch.long)
    with torch.no_grad():
        logp = torch.log_softmax(model(ctx).logits[:, -1].float(), -1)
    return logp[torch.arange(len(queries)), torch.tensor([t for _, _, t in queries])].numpy()


def walks_config(arm: str, scale: str, seed: int = 0, vocab: Optional[int] = None):
    """The LM both arms train (they differ by corpus only); vocab = the KG's (entities + relations + 2)."""
    from lmlab.data import random_walks as W
    from lmlab.experiments.common import run_config

    if arm not in ("triples", "walks"):
        raise ValueError(f"unknown arm {arm!r}")
    c = WALKS[scale]
    if vocab is None:
        vocab = W.KGVocab(W.synthetic_kg(c["n_entities"], c["n_base"], edge_prob=c["edge_prob"], seed=1234)).size
    return run_config(scale, {"model": {"vocab_size": vocab, "d_model": c["d_model"], "n_layer": c["n_layer"],
                                        "n_head": c["n_head"], "max_seq_len": c["seq_len"]},
                              "data": {"seq_len": c["seq_len"]},
                              "train": {"steps": c["steps"], "batch_size": c["batch"], "lr": c["lr"],
                                        "warmup_steps": 20, "eval_interval": c["steps"] // 4, "seed": seed}},
                      name=f"reasoning_paths/{arm}")


def _walks_arm(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.data import random_walks as W
    from lmlab.experiments.common import train_seeded

    c = WALKS[scale]
    kg, train_kg, held, voc, windows = _walks_corpus(arm, seed, c)
    # 20 True/False pairs per held-out query (each negative 80% plausible): less evaluation noise per seed
    exs = [e for k in range(20) for e in W.true_false_examples(kg, held, random.Random(99 + k), plausible_frac=0.8)]
    held_val = pack([voc.triple_ids(*t) for t in held], c["seq_len"])
    cfg = walks_config(arm, scale, seed, vocab=voc.size)
    res = train_seeded(cfg, seed, out, data=window_data(windows, {"heldout_triples": held_val}, voc.size))
    model = res.model.eval()
    pos = [e["triple"] for e in exs if e["label"]]
    neg = [e["triple"] for e in exs if not e["label"]]
    lp, ln = _query_logprobs(model, voc, pos), _query_logprobs(model, voc, neg)
    acc = float(np.mean(lp > ln))                            # True/False: is the true tail likelier?
    seen = sorted(train_kg.derived)[:len(held)]
    seen_neg = [e["triple"] for e in W.true_false_examples(kg, seen, random.Random(98)) if not e["label"]]
    acc_seen = float(np.mean(_query_logprobs(model, voc, seen) > _query_logprobs(model, voc, seen_neg)))
    return ArmResult(metrics={"heldout_acc": acc, "train_acc": acc_seen, "heldout_logp": float(np.mean(lp)),
                              "val_loss": res.val_loss},
                     curves=res.curves, info={"tokens": res.tokens, "n_heldout": len(held), "n_pairs": len(pos),
                                              "n_train_triples": len(train_kg.triples)})


EXPERIMENTS.register("reasoning_paths", Experiment(
    name="reasoning_paths", paper="Understanding Reasoning Ability of LMs From the Perspective of Reasoning Paths Aggregation",
    claim="pre-training on KG random walks beats the triples alone on held-out multi-hop relation queries",
    metric="heldout_acc", direction="higher", arms=["triples", "walks"], baseline="triples", technique="walks",
    run=_walks_arm, arm_config=walks_config, plots=["val_loss", "train_loss"],
    description=("Synthetic KG (150 entities, 4 base relations, 4 composed relations r_{4+i} = r_i ∘ r_{i+1}); "
                 "30% of the composed triples held out. A 2-layer LM (d=64) trained 600 steps × 32 × 32 tokens on random walks "
                 "(transition 1/out-degree, ≤4 edges) or on the training triples; metric: True/False accuracy "
                 "on held-out queries (20 pairs per query, true tail vs a negative tail, 80% plausible), "
                 "predicting True for the likelier tail. Verdict: one-sided Welch t-test of the accuracy gain, "
                 "α = 0.05.")))


# ============================================================================================================
# Rho-1 — selective LM on one noisy pool, a reference trained on the pool's clean subset, judged on clean
# held-out text of the same distribution.
# ============================================================================================================
RHO1 = {"quick": dict(domains=["docs", "bible_web"], seq_len=64, d_model=64, n_layer=2, n_head=4, steps=200,
                      ref_steps=200, batch=16, ratio=0.6, lr=3e-3, noise_docs=0.5, noise_frac=0.5, span=(4, 16),
                      noise_seed=1234),
        "full": dict(domains=["code", "docs", "bible_kjv", "bible_web", "bible_bbe"], seq_len=512, d_model=512,
                     n_layer=8, n_head=8, steps=5000, ref_steps=3000, batch=64, ratio=0.6, lr=1e-3,
                     noise_docs=0.5, noise_frac=0.5, span=(8, 64), noise_seed=1234)}
RHO1_ARMS = ["clm", "slm", "random", "clean_only"]
BOILERPLATE = ("Accept all cookies | Privacy policy | Terms of use | Subscribe to our newsletter | "
               "Share on Facebook | Tweet | Home > Blog > Archive | © All rights reserved. ")


def inject_noise(windows: np.ndarray, vocab: int, boilerplate: list[int], noise_docs: float, noise_frac: float,
                 span: tuple[int, int], seed: int):
    """(N, w) clean windows -> (noisy copy, (N, w) bool noise mask, (N,) bool corrupted). A fraction
    `noise_docs` of the windows is corrupted: spans of U[span] tokens at uniform positions, each garbage (uniform
    token ids) or boilerplate (a prefix of `boilerplate`) with probability 1/2, until ≥ noise_frac·w tokens of
    the window are noise. Deterministic in `seed`; uncorrupted windows are returned unchanged."""
    rng = np.random.default_rng(seed)
    n, w = windows.shape
    noisy, mask = windows.copy(), np.zeros((n, w), bool)
    corrupted = rng.random(n) < noise_docs
    bp = np.asarray(boilerplate, dtype=windows.dtype)
    for i in np.flatnonzero(corrupted):
        while mask[i].sum() < noise_frac * w:
            L = int(rng.integers(span[0], span[1] + 1))
            s = int(rng.integers(0, w - L + 1))
            fill = rng.integers(0, vocab, L) if rng.random() < 0.5 else np.resize(bp, L)
            noisy[i, s:s + L] = fill
            mask[i, s:s + L] = True
    return noisy, mask, corrupted


def rho1_pool(c: dict, data):
    """The noisy pool, its noise mask, and the clean subset (the windows left uncorrupted)."""
    bp = data.tokenizer.encode(BOILERPLATE)
    noisy, mask, corrupted = inject_noise(data.train, data.tokenizer.vocab_size, bp, c["noise_docs"],
                                          c["noise_frac"], tuple(c["span"]), c["noise_seed"])
    return SimpleNamespace(noisy=noisy, mask=mask, corrupted=corrupted, clean=data.train[~corrupted])


def _rho1_cfg(c: dict, scale: str, steps: int, name: str):
    from lmlab.experiments.common import run_config

    return run_config(scale, {"model": {"d_model": c["d_model"], "n_layer": c["n_layer"], "n_head": c["n_head"],
                                        "max_seq_len": c["seq_len"]},
                              "data": {"domains": c["domains"], "seq_len": c["seq_len"]},
                              "train": {"steps": steps, "batch_size": c["batch"], "lr": c["lr"],
                                        "eval_interval": max(steps // 4, 1)}}, name=name)


def rho1_reference(c: dict, scale: str, data, pool, ref_dir: Path):
    """The reference model: CLM on the pool's clean subset; saved once (keyed by the settings), shared by every
    seed and arm of the experiment, as the paper trains one reference."""
    import hashlib
    import json

    from lmlab.models.decoder import Decoder
    from lmlab.train.checkpoint import load_model_file, load_state_into, save_model

    key = hashlib.blake2b(json.dumps([c, scale], sort_keys=True, default=str).encode(), digest_size=6).hexdigest()
    path = Path(ref_dir) / f"reference-{key}.safetensors"
    cfg = _rho1_cfg(c, scale, c["ref_steps"], "rho1/reference")
    mcfg = cfg.model.model_copy(update={"vocab_size": data.tokenizer.vocab_size})
    if path.exists():
        m = Decoder(mcfg)
        sd, meta = load_model_file(path)
        load_state_into(m, sd, f"reference {path}")
        return m, meta
    from lmlab.train.trainer import train

    ref_data = window_data(pool.clean, data.val, data.tokenizer.vocab_size, data.tokenizer)
    res = train(cfg.model_copy(update={"model": mcfg}), Path(ref_dir) / f"run-{key}", data=ref_data)
    meta = {"model_config": mcfg.model_dump(mode="json"), "val_loss": res.val_loss, "train_tokens": res.tokens,
            "clean_windows": int(len(pool.clean))}
    save_model(res.model, path, meta)
    return res.model, meta


def rho1_config(arm: str, scale: str, seed: int = 0):
    """Every arm trains this config (plain CLM objective in the config; slm and random pass their objective,
    SelectiveLM with the trained reference or RandomTokens, to the trainer)."""
    from lmlab.experiments.common import with_seed

    if arm not in RHO1_ARMS:
        raise ValueError(f"unknown arm {arm!r}")
    return with_seed(_rho1_cfg(RHO1[scale], scale, RHO1[scale]["steps"], f"rho1/{arm}"), seed)


def _noise_in_selected(model, ref, pool, ratio: float, n: int = 32) -> dict:
    """Share of noise tokens among the tokens SLM selects on a fixed probe of corrupted windows (final model)."""
    import torch

    from lmlab.train.objectives_slm import per_token_loss, slm_loss

    rows = np.flatnonzero(pool.corrupted)[:n]
    w = torch.as_tensor(pool.noisy[rows])
    noise = torch.as_tensor(pool.mask[rows][:, 1:])
    model.eval()
    with torch.no_grad():
        ref_loss = per_token_loss(ref(w[:, :-1]).logits, w[:, 1:])
        _, sel, _ = slm_loss(model(w[:, :-1]).logits, w[:, 1:], ref_loss, ratio)
    return {"noise_share_probe": float(noise.float().mean()), "noise_share_selected": float(noise[sel].float().mean())}


def _rho1_arm(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.experiments.common import arm_result, cached_data, train_seeded
    from lmlab.train.objectives_slm import RandomTokens, SelectiveLM, n_selected

    c = RHO1[scale]
    cfg = rho1_config(arm, scale, seed)
    data = cached_data(cfg.data)
    pool = rho1_pool(c, data)
    ref, ref_meta = rho1_reference(c, scale, data, pool, Path(out).parent.parent / "_reference")
    rows = pool.clean if arm == "clean_only" else pool.noisy
    d = window_data(rows, data.val, data.tokenizer.vocab_size, data.tokenizer)
    obj = None
    if arm == "slm":
        obj = SelectiveLM(ratio=c["ratio"], mode="online", reference=ref, dynamics_every=50)
    elif arm == "random":
        obj = RandomTokens(ratio=c["ratio"], seed=seed)
    res = train_seeded(cfg, seed, out, data=d, objective=obj)
    r = arm_result(res)
    per_batch = c["batch"] * c["seq_len"]
    budget = c["steps"] * per_batch
    r.info.update(seed=seed, forward_tokens=budget,
                  gradient_tokens=budget if obj is None else c["steps"] * n_selected(c["ratio"], per_batch),
                  pool_windows=int(len(pool.noisy)), clean_windows=int(len(pool.clean)),
                  noise_token_share=float(pool.mask.mean()),
                  reference={"train_tokens": ref_meta.get("train_tokens"), "val_loss": ref_meta.get("val_loss")})
    if arm == "slm":
        r.info["reference_forward_tokens"] = budget
        r.metrics.update(_noise_in_selected(res.model, ref, pool, c["ratio"]))
    return r


def _rho1_verdict(exp: Experiment, res: dict[str, list[ArmResult]]) -> Verdict:
    """Held-out clean loss: SLM < CLM and SLM < random-k, each a one-sided paired t-test over seeds at α = 0.05,
    combined with how="all". clean_only, the reference's compute and the noise share of SLM's selection are
    reported in extra."""
    parts = {}
    for other in ("clm", "random"):
        b, t = arm_values(res, other, "slm", exp.metric, paired=True)
        parts[f"slm < {other}"] = compare(b, t, "lower", paired=True)
    extra: dict = {}
    for arm in exp.arms:
        if res.get(arm):
            for k in res[arm][0].metrics:
                if k.startswith("val_loss") or k.startswith("noise_share"):
                    extra[f"{arm}/{k}"] = mean_std([r.metrics[k] for r in res[arm]])
    any_run = next((rs[0] for rs in res.values() if rs), None)
    if any_run is not None:
        extra["reference"] = any_run.info.get("reference")
        extra["token_budget_per_arm"] = any_run.info.get("forward_tokens")
        extra["noise_token_share"] = any_run.info.get("noise_token_share")
    first = parts["slm < clm"]
    return combine(parts, "all", "held-out clean loss", first.baseline, first.technique, extra)


EXPERIMENTS.register("rho1_slm", Experiment(
    name="rho1_slm", paper="Rho-1: Not All Tokens Are What You Need",
    claim=("on a noisy pool, selective LM (top 60% excess-loss tokens, reference trained on the pool's clean "
           "subset) beats both CLM and a random 60% of tokens on clean held-out loss at equal tokens"),
    metric="val_loss", direction="lower", arms=RHO1_ARMS, baseline="clm", technique="slm",
    run=_rho1_arm, arm_config=rho1_config, verdict=_rho1_verdict, paired=True, plots=["val_loss", "train_loss"],
    description=("Pool: docs + bible_web training windows (64 tokens), half of them with ≥50% of their tokens "
                 "overwritten by seeded garbage or duplicated boilerplate spans; reference = the same LM "
                 "trained 200 steps on the uncorrupted windows; arms clm, slm (k=60%, online reference), "
                 "random (60% of tokens at random), clean_only (CLM on the clean windows, upper reference), "
                 "200 steps × 16 × 64 tokens each; metric: held-out loss on clean docs + bible_web. Verdict: SLM "
                 "beats CLM and beats random, each a one-sided paired t-test over seeds (shared init and "
                 "batch order), α = 0.05, both must hold.")))


# ============================================================================================================
# WRAP — real vs real + rephrased (1:1) at an equal token budget; style ablation.
# real = the KJV Bible (archaic English). Technique arm `real_wrap`: KJV + SmolLM2-135M-Instruct rephrases of
# KJV chunks in the medium (Wikipedia) style, made by `lmlab data rephrase` and cached as a dataset build step
# (a small slice: CPU generation is slow, so the synthetic half repeats). Stand-in arms (documented as such):
# the same chapters in the modern WEB translation (≈ medium style) or in Basic English (BBE, ≈ easy style) — a
# human verse-aligned parallel corpus in place of model rephrases — which also give the style ablation. Their
# training data are the WEB and BBE domains, so every comparison with a stand-in arm is scored on the domains
# no arm trains on besides KJV: KJV and docstrings (`standin_ppl`); WEB and BBE stay in the claim's metric
# only for real vs real_wrap, neither of which sees them.
# ============================================================================================================
WRAP = {"quick": dict(domains=["bible_kjv", "bible_web", "bible_bbe", "docs"], real="bible_kjv", seq_len=64,
                      d_model=64, n_layer=2, n_head=4, steps=200, batch=16, lr=3e-3),
        "full": dict(domains=["bible_kjv", "bible_web", "bible_bbe", "docs", "code"], real="bible_kjv",
                     seq_len=512, d_model=512, n_layer=8, n_head=8, steps=5000, batch=64, lr=1e-3)}
WRAP_STYLE_DOMAIN = {"real_medium": "bible_web", "real_easy": "bible_bbe"}


WRAP_CACHE = dict(style="medium", source="embedded:bible_kjv", max_chunks=64, max_tokens=128, max_new_tokens=160,
                  batch_size=16, shard_size=16)


def wrap_cache_dir() -> Path:
    import os

    from lmlab.data.sources import default_data_dir

    if os.environ.get("LMLAB_WRAP_CACHE"):
        return Path(os.environ["LMLAB_WRAP_CACHE"])
    c = WRAP_CACHE
    return Path(default_data_dir()) / "wrap" / f"smollm2-{c['style']}-kjv-{c['max_chunks']}x{c['max_tokens']}"


def build_wrap_cache(out: Optional[Path] = None, backend: str = "smollm2") -> Path:
    """Dataset build step: the first `max_chunks` ≤128-token chunks of the KJV training chapters rephrased in
    the medium (Wikipedia) style by SmolLM2-135M-Instruct, with the settings `lmlab data rephrase` would use.
    Resumable (finished shards are kept), so an interrupted build continues where it stopped."""
    from lmlab.backend import load_backend
    from lmlab.data.rephrase import RephraseSettings, read_documents, rephrase_corpus

    out = Path(out or wrap_cache_dir())
    c = WRAP_CACHE
    be = load_backend(backend)
    settings = RephraseSettings(style=c["style"], max_tokens=c["max_tokens"], shard_size=c["shard_size"],
                                batch_size=c["batch_size"], max_new_tokens=c["max_new_tokens"], chat=True,
                                max_chunks=c["max_chunks"])
    rephrase_corpus(read_documents(c["source"]), be, out, settings, tokenizer=getattr(be, "tokenizer", None))
    return out


def _wrap_cache_windows(tokenizer, seq_len: int) -> tuple[np.ndarray, dict]:
    import json

    from lmlab.data.rephrase import read_rephrased, summarize, trim_repetition

    d = wrap_cache_dir()
    man = d / f"manifest-{WRAP_CACHE['style']}.json"
    if not man.exists() or summarize(d, WRAP_CACHE["style"], json.loads(man.read_text())["n_shards"])["done_shards"] \
            < json.loads(man.read_text())["n_shards"]:
        build_wrap_cache(d)
    stats = summarize(d, WRAP_CACHE["style"], json.loads(man.read_text())["n_shards"])
    # SmolLM2-135M's greedy rephrases often end in a loop; keep each up to its first repeated sentence
    texts = [trim_repetition(r["text"]) for r in read_rephrased(d, WRAP_CACHE["style"])]
    texts = [t for t in texts if len(t.split()) >= 5]
    stats = dict(stats, used_after_trim=len(texts), used_words=sum(len(t.split()) for t in texts))
    eos = tokenizer.eos_id
    return pack([tokenizer.encode(t) + [eos] for t in texts], seq_len), stats


def wrap_config(arm: str, scale: str, seed: int = 0):
    """Every arm trains this config; they differ by their training windows (built in the run)."""
    from lmlab.experiments.common import run_config, with_seed

    if arm not in ("real", "real_wrap", *WRAP_STYLE_DOMAIN):
        raise ValueError(f"unknown arm {arm!r}")
    c = WRAP[scale]
    return with_seed(run_config(scale, {"model": {"d_model": c["d_model"], "n_layer": c["n_layer"],
                                                  "n_head": c["n_head"], "max_seq_len": c["seq_len"]},
                                        "data": {"domains": c["domains"], "seq_len": c["seq_len"]},
                                        "train": {"steps": c["steps"], "batch_size": c["batch"], "lr": c["lr"],
                                                  "eval_interval": max(c["steps"] // 4, 1)}}, name=f"wrap/{arm}"),
                     seed)


def _wrap_arm(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.data import load_data
    from lmlab.experiments.common import train_arm

    c = WRAP[scale]
    cfg = wrap_config(arm, scale, seed)
    data = load_data(cfg.data)
    n = c["steps"] * c["batch"]                          # windows seen = the token budget, equal for all arms
    rng = np.random.default_rng(1000 + seed)
    real = data.train[data.train_domain == data.domains.index(c["real"])]
    if arm == "real":
        rows = real[rng.permutation(len(real))[:n]]
    else:
        if arm == "real_wrap":
            syn, cache_stats = _wrap_cache_windows(data.tokenizer, c["seq_len"])
        elif arm in WRAP_STYLE_DOMAIN:
            syn = data.train[data.train_domain == data.domains.index(WRAP_STYLE_DOMAIN[arm])]
        else:
            raise ValueError(f"unknown arm {arm!r}")
        half = n // 2
        rows = np.concatenate([real[rng.permutation(len(real))[:n - half]],
                               syn[rng.integers(0, len(syn), half) if len(syn) < half else rng.permutation(len(syn))[:half]]])
        rows = rows[rng.permutation(len(rows))]
    d = window_data(rows, data.val, data.tokenizer.vocab_size, data.tokenizer)
    r = train_arm(cfg, seed, out, data=d)
    if arm != "real":
        r.info["synthetic_windows"] = int(len(syn))
        r.info["synthetic_repeats"] = round(half / max(len(syn), 1), 2)
    if arm == "real_wrap":
        r.info["rephrase_cache"] = cache_stats
    r.metrics["mean_val_ppl"] = float(np.mean([math.exp(v) for k, v in r.metrics.items() if k.startswith("val_loss/")]))
    r.metrics["standin_ppl"] = wrap_standin_ppl(r.metrics)
    r.info["seed"] = seed
    return r


def wrap_standin_domains(domains: list[str]) -> list[str]:
    """The evaluation domains of comparisons that involve a stand-in arm: all but the stand-ins' own."""
    return [d for d in domains if d not in WRAP_STYLE_DOMAIN.values()]


def wrap_standin_ppl(metrics: dict) -> float:
    """exp(mean held-out loss over the domains no stand-in arm trains on)."""
    doms = wrap_standin_domains([k.split("/", 1)[1] for k in metrics if k.startswith("val_loss/")])
    return math.exp(float(np.mean([metrics[f"val_loss/{d}"] for d in doms])))


def _wrap_verdict(exp: Experiment, res: dict[str, list[ArmResult]]) -> Verdict:
    """The claim: compare() (one-sided Welch t, α = 0.05) on held-out perplexity exp(mean over KJV, WEB, BBE and
    docstrings of the loss) (the geometric mean of the per-domain perplexities, so one hard domain does not
    swamp the rest), real vs real + SmolLM2 rephrases; neither arm trains on WEB or BBE. Reported beside it
    (extra), each scored on KJV + docstrings only (`standin_ppl`: WEB and BBE are the stand-ins' training
    domains): real vs real + WEB (medium), the style ablation easy (BBE) vs medium (WEB), and real_wrap on the
    same domains; per-domain losses of every arm."""
    ppl = lambda arm, m="val_ppl": [r.metrics[m] for r in res.get(arm, [])]  # noqa: E731
    v = compare(ppl("real"), ppl("real_wrap"), "lower")
    for arm in exp.arms:
        if res.get(arm):
            v.extra[f"{arm}_val_ppl"] = mean_std(ppl(arm))
            v.extra[f"{arm}_standin_ppl"] = mean_std(ppl(arm, "standin_ppl"))
            for k in res[arm][0].metrics:
                if k.startswith("val_loss/"):
                    v.extra[f"{arm}/{k}"] = mean_std([r.metrics[k] for r in res[arm]])
    if res.get("real_wrap"):
        s = compare(ppl("real", "standin_ppl"), ppl("real_wrap", "standin_ppl"), "lower")
        v.extra["real_vs_real_wrap_on_kjv_docs"] = f"{s.verdict}: {s.rule}"
    if res.get("real_medium"):
        s = compare(ppl("real", "standin_ppl"), ppl("real_medium", "standin_ppl"), "lower")
        v.extra["standin_real_vs_real_medium_on_kjv_docs"] = f"{s.verdict}: {s.rule}"
    if res.get("real_easy") and res.get("real_medium"):
        s = compare(ppl("real_medium", "standin_ppl"), ppl("real_easy", "standin_ppl"), "lower")
        v.extra["style_ablation_easy_vs_medium_on_kjv_docs"] = f"easy better: {s.verdict}: {s.rule}"
    return v


EXPERIMENTS.register("wrap_rephrase", Experiment(
    name="wrap_rephrase", paper="Rephrasing the Web (WRAP)",
    claim="real + rephrased data (1:1) beats real data alone on mean held-out perplexity at equal tokens",
    metric="val_ppl", direction="lower", arms=["real", "real_wrap", "real_medium", "real_easy"],
    baseline="real", technique="real_wrap", run=_wrap_arm, arm_config=wrap_config, verdict=_wrap_verdict,
    plots=["val_loss"],
    description=("real = KJV Bible; real_wrap = KJV + SmolLM2-135M-Instruct medium-style rephrases of 64 KJV "
                 "chunks (≤128 tokens) made by `lmlab data rephrase` (cached build step; the synthetic half "
                 "repeats); stand-ins: KJV + the same chapters in WEB (medium) or BBE (easy). Equal budget "
                 "200 steps × 16 × 64 tokens; metric: held-out perplexity exp(mean loss over KJV, WEB, BBE, "
                 "docstrings), real vs real_wrap, one-sided Welch t-test, α = 0.05. Comparisons with a stand-in "
                 "arm (reported, not the claim) are scored on KJV + docstrings only, since the stand-ins train "
                 "on WEB and BBE.")))
