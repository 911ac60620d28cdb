"""Multilingual E5 pieces: InfoNCE vs its loop twin and a hand case, mean pooling, retrieval metrics, and a
tiny contrastive run on a synthetic two-style parallel set."""
import math
import random

import numpy as np
import pytest
import torch

from lmlab.eval.retrieval import bow_similarity, naive_retrieval_metrics, retrieval_metrics
from lmlab.models.embedder import (PASSAGE_PREFIX, QUERY_PREFIX, Embedder, batch_ids, embed_texts, info_nce,
                                   mean_pool, naive_info_nce, naive_mean_pool, tiny_embedder_config,
                                   train_contrastive)


def _unit(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [0.01, 0.07, 1.0])
def test_info_nce_matches_naive_values_and_grads(symmetric, tau):
    q0, p0 = _unit(5, 7, 0), _unit(5, 7, 1)
    q1, p1 = q0.clone().requires_grad_(), p0.clone().requires_grad_()
    q2, p2 = q0.clone().requires_grad_(), p0.clone().requires_grad_()
    a = info_nce(q1, p1, tau, symmetric)
    b = naive_info_nce(q2, p2, tau, symmetric)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    a.backward()
    b.backward()
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-10, atol=1e-12)
    assert q1.grad.abs().sum() > 0


def test_info_nce_2x2_by_hand():
    # q = e1, e2; p rotated by 0.3 and 2.0 rad: s_ij = cos(angle between q_i, p_j) / τ
    tau = 0.5
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    p = torch.tensor([[math.cos(0.3), math.sin(0.3)], [math.cos(2.0), math.sin(2.0)]], dtype=torch.float64)
    s11, s12 = math.cos(0.3) / tau, math.cos(2.0) / tau
    s21, s22 = math.sin(0.3) / tau, math.sin(2.0) / tau
    row1 = -(s11 - math.log(math.exp(s11) + math.exp(s12)))
    row2 = -(s22 - math.log(math.exp(s21) + math.exp(s22)))
    col1 = -(s11 - math.log(math.exp(s11) + math.exp(s21)))
    col2 = -(s22 - math.log(math.exp(s12) + math.exp(s22)))
    assert info_nce(q, p, tau).item() == pytest.approx((row1 + row2) / 2, rel=1e-12)
    assert info_nce(q, p, tau, symmetric=True).item() == pytest.approx((row1 + row2 + col1 + col2) / 4, rel=1e-12)


def test_mean_pool_ignores_padding():
    h = torch.randn(3, 6, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(mean_pool(h, mask), naive_mean_pool(h, mask))
    torch.testing.assert_close(mean_pool(h, mask)[0], h[0, :3].mean(0))
    h2 = h.clone()
    h2[mask == 0] = 1e6                                     # garbage at pad positions changes nothing
    torch.testing.assert_close(mean_pool(h2, mask), mean_pool(h, mask))


def test_embedder_output_independent_of_padding():
    torch.manual_seed(0)
    m = Embedder(tiny_embedder_config(50, d_model=32, n_layer=2, n_head=4, max_seq_len=16)).eval()
    ids = torch.tensor([[5, 9, 3, 7]])
    e = m(ids, torch.ones_like(ids))
    padded = torch.tensor([[5, 9, 3, 7, 11, 42, 0, 1]])           # arbitrary pad ids after the text
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]])
    torch.testing.assert_close(m(padded, mask), e, rtol=1e-5, atol=1e-6)
    assert e.norm(dim=-1).item() == pytest.approx(1.0, abs=1e-6)


def test_retrieval_metrics_match_naive_and_hand_case():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(9, 9)).round(1)                          # rounding makes ties
    assert retrieval_metrics(sim) == pytest.approx(naive_retrieval_metrics(sim))
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.2, 0.3, 0.3]])
    # ranks: 1, 2, 2 (tie counted against the gold)
    out = retrieval_metrics(sim)
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["mrr"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert bow_similarity(["the cat sat"], ["The cat, sat!"])[0, 0] == pytest.approx(1.0)


class WordTok:
    """Whitespace tokenizer over a fixed word list (id 0 = pad/unknown)."""

    def __init__(self, words):
        self.ids = {w: i + 1 for i, w in enumerate(words)}
        self.vocab_size = len(words) + 1

    def encode(self, text):
        return [self.ids.get(w, 0) for w in text.split()]


def _synthetic(n, seed, n_words=30, length=6):
    """Style A uses words a0..a29, style B the disjoint words b0..b29 under a fixed permutation."""
    perm = list(range(n_words))
    random.Random(123).shuffle(perm)
    rng = random.Random(seed)
    qs, ps = [], []
    for _ in range(n):
        ks = [rng.randrange(n_words) for _ in range(length)]
        qs.append(" ".join(f"a{k}" for k in ks))
        ps.append(" ".join(f"b{perm[k]}" for k in ks))
    return qs, ps


def test_contrastive_training_beats_untrained_on_held_out_pairs():
    words = [f"a{k}" for k in range(30)] + [f"b{k}" for k in range(30)] + ["query:", "passage:"]
    tok = WordTok(words)
    tq, tp = _synthetic(400, seed=0)
    vq, vp = _synthetic(64, seed=1)                                # held-out sentences
    assert not set(vq) & set(tq)

    def recall(model):
        sim = embed_texts(model, tok, vq, QUERY_PREFIX, 16) @ embed_texts(model, tok, vp, PASSAGE_PREFIX, 16).T
        return retrieval_metrics(sim.numpy())["recall@1"]

    torch.manual_seed(0)
    model = Embedder(tiny_embedder_config(tok.vocab_size, d_model=32, n_layer=1, n_head=2, max_seq_len=16))
    before = recall(model)
    curve = train_contrastive(model, tok, tq, tp, steps=120, batch_size=32, lr=1e-2, tau=0.05, max_len=16,
                              warmup=5, log_every=20)
    after = recall(model)
    assert before < 0.2                                             # disjoint vocabularies: near chance (1/64)
    assert after > 0.6 and after > before + 0.4, (before, after)
    assert curve[-1][1] < 0.5 * curve[0][1]


def test_batch_ids_prefix_and_padding():
    tok = WordTok(["query:", "passage:", "x", "y"])
    idx, mask = batch_ids(tok, ["x y", "y"], QUERY_PREFIX, max_len=8)
    assert idx.tolist() == [[1, 3, 4], [1, 4, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    idx, _ = batch_ids(tok, ["x"], PASSAGE_PREFIX, max_len=8)
    assert idx.tolist() == [[2, 3]]


def test_e5_experiment_registered():
    from lmlab.registry import EXPERIMENTS, load_plugins

    load_plugins()
    exp = EXPERIMENTS.get("e5_retrieval")
    assert (exp.baseline, exp.technique, exp.metric, exp.direction) == ("untrained", "contrastive", "recall@1",
                                                                          "higher")
