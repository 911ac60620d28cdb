"""Reasoning-path random walks: every step is an edge, transition 1/out-degree, rules, True/False eval."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from lmlab.data import random_walks as W


def test_every_step_of_every_walk_is_an_edge():
    kg = W.synthetic_kg(n_entities=60, n_base=3, seed=1)
    walks = W.random_walks(kg, 500, max_len=7, rng=random.Random(0))
    assert len(walks) == 500
    for w in walks:
        assert len(w) % 2 == 1 and 1 <= (len(w) - 1) // 2 <= 7
        for i in range(0, len(w) - 2, 2):
            assert (w[i], w[i + 1], w[i + 2]) in kg.triples
        assert W.is_valid_walk(kg, w)
    assert not W.is_valid_walk(kg, [0, 0, 0])  # self-loops are never generated


def test_transition_is_uniform_over_out_edges():
    # entity 0 has 4 outgoing edges: each chosen with probability 1/4
    triples = {(0, 0, 1), (0, 1, 2), (0, 0, 3), (0, 2, 4), (1, 0, 0)}
    kg = W.KG([f"e{i}" for i in range(5)], ["a", "b", "c"], triples)
    out = kg.out_edges()
    rng = random.Random(0)
    n = 40000
    c = Counter(tuple(W.random_walk(out, 0, 1, rng)[1:]) for _ in range(n))
    assert set(c) == {(0, 1), (1, 2), (0, 3), (2, 4)}
    for v in c.values():
        assert abs(v / n - 0.25) < 0.01  # ±4.6 sigma
    # a dead end stops the walk
    assert W.random_walk(out, 4, 5, rng) == [4]


def test_rules_derive_compositions_and_split_holds_out_only_derived():
    kg = W.synthetic_kg(n_entities=80, n_base=3, rules=[(3, 0, 1), (4, 1, 2)], seed=2)
    base = kg.triples - kg.derived
    by = {(h, r): t for h, r, t in base}  # one tail per (h, base r)
    expect = set()
    for x in range(80):
        for r_out, a, b in kg.rules:
            y = by.get((x, a))
            z = by.get((y, b)) if y is not None else None
            if z is not None and z != x and (x, r_out, z) not in base:
                expect.add((x, r_out, z))
    assert kg.derived == expect and len(expect) > 20
    train, held = W.split_heldout(kg, 0.25, seed=0)
    assert held and set(held) <= kg.derived and not (set(held) & train.triples)
    assert train.triples | set(held) == kg.triples
    assert len(held) == round(0.25 * len(kg.derived))
    # every held-out triple is reachable by a two-edge path in the training graph (answerable by composition)
    rules = {r_out: (a, b) for r_out, a, b in kg.rules}
    for h, r, t in held:
        a, b = rules[r]
        assert any((h, a, y) in train.triples and (y, b, t) in train.triples for y in range(80))


def test_load_triples_and_verbalize(tmp_path):
    p = tmp_path / "kg.tsv"
    p.write_text("# family\nAnn\tmother_of\tBob\nBob\tfather_of\tCid\nAnn\tgrandmother_of\tCid\n")
    kg = W.load_triples(p)
    assert kg.entities == ["Ann", "Bob", "Cid"] and len(kg.triples) == 3
    walk = W.random_walk(kg.out_edges(), 1, 3, random.Random(0))
    tpl = {"mother_of": "{h} is the mother of {t}.", "father_of": "{h} is the father of {t}."}
    assert W.verbalize(kg, walk, tpl) == "Bob is the father of Cid."
    assert W.verbalize(kg, [0, 0, 1, 1, 2], tpl) == "Ann is the mother of Bob. Bob is the father of Cid."
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n")
    with pytest.raises(ValueError, match="bad.tsv:1: expected 3 fields"):
        W.load_triples(bad)


def test_true_false_examples_have_80_percent_plausible_negatives():
    kg = W.synthetic_kg(n_entities=300, n_base=4, seed=3)
    _, held = W.split_heldout(kg, 0.5, seed=1)
    ex = W.true_false_examples(kg, held, random.Random(0), plausible_frac=0.8)
    pos = [e for e in ex if e["label"]]
    neg = [e for e in ex if not e["label"]]
    assert len(pos) == len(neg) == len(held)
    assert all(e["prompt"].endswith(" True or False?") for e in ex)
    assert all(e["triple"] not in kg.triples for e in neg) and all(e["triple"] in kg.triples for e in pos)
    tails = kg.tails_of()
    frac = sum(e["plausible"] for e in neg) / len(neg)
    assert abs(frac - 0.8) < 0.05, frac
    for e in neg:
        h, r, t = e["triple"]
        assert e["neg_of"][:2] == (h, r)
        if e["plausible"]:
            assert t in tails[r]


def test_backend_true_false_accuracy_uses_logprobs():
    kg = W.synthetic_kg(n_entities=50, n_base=2, seed=4)
    ex = W.true_false_examples(kg, sorted(kg.derived)[:10], random.Random(0))

    class Oracle:  # knows the KG: True is likelier exactly for true statements
        truth = {e["prompt"]: e["label"] for e in ex}

        def logprobs(self, prompts, conts):
            return [(0.0 if (c == " True") == self.truth[p] else -5.0) for p, c in zip(prompts, conts)]

    assert W.backend_true_false_accuracy(Oracle(), ex) == 1.0


def test_vocab_ids():
    kg = W.synthetic_kg(n_entities=10, n_base=2, seed=0)
    v = W.KGVocab(kg)
    assert v.walk_ids([3, 1, 4]) == [3, 10 + 1, 4, v.dot] and v.size == 10 + len(kg.relations) + 2
