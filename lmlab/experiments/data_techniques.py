"""Data-technique claims: model collapse with truncated tails, reasoning-path random walks, Rho-1 selective
language modeling, WRAP rephrasing. Each experiment's arms see equal training tokens; verdict rules are
written next to each registration.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np

from lmlab.experiments.base import ArmResult, Experiment, Verdict, combine, compare, exceeds, mean_std
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
# Rho-1 — selective LM vs plain CLM on a mixed corpus, judged on the target domain's held-out loss.
# ============================================================================================================
RHO1 = {"quick": dict(domains=["code", "docs", "bible_web"], target="bible_web", seq_len=64, d_model=64,
                      n_layer=2, n_head=4, steps=200, ref_steps=200, batch=16, ratio=0.6, lr=3e-3),
        "full": dict(domains=["code", "docs", "bible_kjv", "bible_web", "bible_bbe"], target="bible_web",
                     seq_len=512, d_model=512, n_layer=8, n_head=8, steps=5000, ref_steps=3000, batch=64,
                     ratio=0.6, lr=1e-3)}


def _rho1_cfg(c: dict, scale: str, steps: int, name: str, objective: str = "clm", args: Optional[dict] = None):
    from lmlab.experiments.common import run_config

    return run_config(scale, {"model": {"d_model": c["d_model"], "n_layer": c["n_layer"], "n_head": c["n_head"],
                                        "max_seq_len": c["seq_len"]},
                              "data": {"domains": c["domains"], "seq_len": c["seq_len"]},
                              "train": {"steps": steps, "batch_size": c["batch"], "lr": c["lr"],
                                        "eval_interval": max(steps // 4, 1), "objective": objective,
                                        "objective_args": args or {}}}, name=name)


def rho1_reference(c: dict, scale: str, data, ref_dir: Path):
    """The reference model: trained on the target domain's training windows only; saved once, shared by
    every seed and arm of the experiment (as the paper trains one reference)."""
    import torch

    from lmlab.models.decoder import Decoder

    from lmlab.train.checkpoint import load_model_file, load_state_into, save_model

    path = ref_dir / "reference.safetensors"
    cfg = _rho1_cfg(c, scale, c["ref_steps"], "rho1/reference")
    mcfg = cfg.model.model_copy(update={"vocab_size": data.tokenizer.vocab_size})
    if path.exists():
        m = Decoder(mcfg)
        load_state_into(m, load_model_file(path)[0], f"reference {path}")
        return m
    from lmlab.train.trainer import train

    tgt = data.domains.index(c["target"])
    ref_data = window_data(data.train[data.train_domain == tgt], {c["target"]: data.val[c["target"]]},
                           data.tokenizer.vocab_size, data.tokenizer)
    res = train(cfg.model_copy(update={"model": mcfg}), ref_dir / "run", data=ref_data)
    save_model(res.model, path, {"model_config": mcfg.model_dump(mode="json"), "val_loss": res.val_loss})
    return res.model


def rho1_config(arm: str, scale: str, seed: int = 0):
    """Both arms train this config (plain CLM objective in the config; the SLM arm passes its SelectiveLM
    objective, which needs the trained reference, to the trainer)."""
    from lmlab.experiments.common import with_seed

    if arm not in ("clm", "slm"):
        raise ValueError(f"unknown arm {arm!r}")
    return with_seed(_rho1_cfg(RHO1[scale], scale, RHO1[scale]["steps"], f"rho1/{arm}"), seed)


def _rho1_arm(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.data import load_data
    from lmlab.experiments.common import train_arm

    c = RHO1[scale]
    base = rho1_config(arm, scale, seed)
    data = load_data(base.data)
    ref = rho1_reference(c, scale, data, Path(out).parent.parent / "_reference")
    if arm == "clm":
        cfg = base
        r = train_arm(cfg, seed, out, data=data)
    elif arm == "slm":
        from lmlab.train.objectives_slm import SelectiveLM

        obj = SelectiveLM(ratio=c["ratio"], mode="online", reference=ref, dynamics_every=50)  # logs L->L … in metrics.jsonl
        r = train_arm(base, seed, out, data=data, objective=obj)
    else:
        raise ValueError(f"unknown arm {arm!r}")
    r.metrics["target_val_loss"] = r.metrics[f"val_loss/{c['target']}"]
    return r


EXPERIMENTS.register("rho1_slm", Experiment(
    name="rho1_slm", paper="Rho-1: Not All Tokens Are What You Need",
    claim="selective LM (top 60% excess-loss tokens) beats causal LM on the target domain at equal tokens",
    metric="target_val_loss", direction="lower", arms=["clm", "slm"], baseline="clm", technique="slm",
    run=_rho1_arm, arm_config=rho1_config, paired=True, plots=["val_loss", "train_loss"],
    description=("Mixed corpus code + docs + bible_web; a reference LM trained on bible_web's training split "
                 "only (same size, 200 steps); then CLM vs SLM (k=60%, online reference) for the same 200 "
                 "steps × 16 × 64 tokens; metric: held-out loss on bible_web. Verdict: paired one-sided t-test "
                 "over seeds (the arms of a seed share the model init and the exact batch order), α = 0.05.")))


# ============================================================================================================
# WRAP — real vs real + rephrased (1:1) at an equal token budget; style ablation.
# real = the KJV Bible (archaic English). Technique arm `real_wrap`: KJV + SmolLM2-135M-Instruct rephrases of
# KJV chunks in the medium (Wikipedia) style, made by `lmlab data rephrase` and cached as a dataset build step
# (a small slice: CPU generation is slow, so the synthetic half repeats). Stand-in
# arms (documented as such): the same chapters in the modern WEB translation (≈ medium style) or in Basic
# English (BBE, ≈ easy style) — a human verse-aligned parallel corpus in place of model rephrases — which also
# give the style ablation.
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
    return r


def _wrap_verdict(exp: Experiment, res: dict[str, list[ArmResult]]) -> Verdict:
    """compare() on held-out perplexity exp(mean over domains of the loss) (the geometric mean of the
    per-domain perplexities, so one hard domain does not swamp the rest), real vs real + SmolLM2 rephrases. Reported beside it (extra):
    the stand-in real vs real + WEB (medium), the style ablation easy (BBE) vs medium (WEB), per-domain losses."""
    ppl = lambda arm: [r.metrics["val_ppl"] for r in res.get(arm, [])]  # noqa: E731
    v = compare(ppl("real"), ppl("real_wrap"), "lower")
    for arm in exp.arms:
        if res.get(arm):
            v.extra[f"{arm}_val_ppl"] = mean_std(ppl(arm))
            for k in res[arm][0].metrics:
                if k.startswith("val_loss/"):
                    v.extra[f"{arm}/{k}"] = mean_std([r.metrics[k] for r in res[arm]])
    if res.get("real_medium"):
        s = compare(ppl("real"), ppl("real_medium"), "lower")
        v.extra["standin_real_vs_real_medium"] = f"{s.verdict}: {s.rule}"
    if res.get("real_easy") and res.get("real_medium"):
        s = compare(ppl("real_medium"), ppl("real_easy"), "lower")
        v.extra["style_ablation_easy_vs_medium"] = f"easy better: {s.verdict}: {s.rule}"
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
                 "200 steps × 16 × 64 tokens; metric: held-out perplexity exp(mean loss over KJV, WEB, BBE, docstrings).")))
