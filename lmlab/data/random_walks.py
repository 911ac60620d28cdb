"""Reasoning paths as random walks on a knowledge graph (Wang et al., 2024, "Understanding the Reasoning
Ability of Language Models From the Perspective of Reasoning Paths Aggregation").

A KG is a set of triples (h, r, t). A random-walk path starts at an entity and repeatedly follows one of the
current entity's outgoing edges chosen with probability 1/out-degree, giving e0 r1 e1 r2 e2 … ; an LM
pre-trained on such paths can aggregate indirect paths h → … → t into a belief about an unseen (h, r, t).

    kg = synthetic_kg(n_entities=200, n_base=4, rules=[(4, 0, 1), ...])   # r4(x,z) ⇐ r0(x,y) ∧ r1(y,z)
    train_kg, heldout = split_heldout(kg, fraction=0.2)                   # held-out *derived* triples
    walks = random_walks(train_kg, n_walks=1000, max_len=6, rng=rng)      # [[e0, r1, e1, ...], ...]
    text  = verbalize(walk, templates)                                     # "Ann is the mother of Bob. ..."
    exs   = true_false_examples(kg, heldout, rng, plausible_frac=0.8)     # "... True or False?" + label

Negatives for the True/False evaluation replace the tail: with probability 0.8 by a *plausible* entity (one
seen as a tail of the same relation, so only knowledge — not the relation's type — tells it apart), else by
any entity; a negative is never a true triple.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

Triple = tuple[int, int, int]


@dataclass
class KG:
    entities: list[str]
    relations: list[str]
    triples: set[Triple]
    rules: list[tuple[int, int, int]] = field(default_factory=list)   # (r_out, r_a, r_b): r_out = r_a ∘ r_b
    derived: set[Triple] = field(default_factory=set)                   # triples implied by the rules

    def out_edges(self) -> dict[int, list[tuple[int, int]]]:
        """entity -> sorted [(relation, tail)] (sorted, so walks are reproducible from a seed)."""
        out: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for h, r, t in self.triples:
            out[h].append((r, t))
        return {h: sorted(v) for h, v in out.items()}

    def tails_of(self) -> dict[int, set[int]]:
        """relation -> entities seen as its tail (the 'plausible' answers to (·, r, ?))."""
        d: dict[int, set[int]] = defaultdict(set)
        for _, r, t in self.triples:
            d[r].add(t)
        return d

    def with_triples(self, triples: set[Triple]) -> "KG":
        return KG(self.entities, self.relations, set(triples), self.rules, self.derived & triples)


def load_triples(path: str | Path, sep: Optional[str] = None) -> KG:
    """A triples file: one `head<TAB>relation<TAB>tail` per line (or `sep`); '#' lines are comments."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"triples file {path}: not found")
    ents: dict[str, int] = {}
    rels: dict[str, int] = {}
    triples = set()
    for ln, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [x.strip() for x in (line.split(sep) if sep else line.split("\t"))]
        if len(parts) != 3:
            raise ValueError(f"{path}:{ln}: expected 3 fields (head, relation, tail), got {len(parts)}")
        h, r, t = parts
        triples.add((ents.setdefault(h, len(ents)), rels.setdefault(r, len(rels)), ents.setdefault(t, len(ents))))
    return KG(list(ents), list(rels), triples)


def apply_rules(triples: set[Triple], rules: Sequence[tuple[int, int, int]]) -> set[Triple]:
    """One round of composition: every (x, r_out, z) with (x, r_a, y) and (y, r_b, z) in `triples`."""
    by_head: dict[tuple[int, int], set[int]] = defaultdict(set)
    for h, r, t in triples:
        by_head[(h, r)].add(t)
    heads = {h for h, _, _ in triples}
    new = set()
    for r_out, ra, rb in rules:
        for x in heads:
            for y in by_head.get((x, ra), ()):
                for z in by_head.get((y, rb), ()):
                    if z != x:
                        new.add((x, r_out, z))
    return new


def synthetic_kg(n_entities: int = 200, n_base: int = 4, rules: Optional[list[tuple[int, int, int]]] = None,
                 edge_prob: float = 0.5, seed: int = 0) -> KG:
    """Base relations 0..n_base-1: each entity gets one tail per base relation with probability edge_prob.
    Rules add composed relations (default: one per consecutive pair of base relations, r_{n_base+i} =
    r_i ∘ r_{i+1 mod n_base}); their triples are derived from the base triples."""
    rng = random.Random(seed)
    if rules is None:
        rules = [(n_base + i, i, (i + 1) % n_base) for i in range(n_base)]
    n_rel = max([n_base - 1] + [max(r) for r in rules]) + 1
    base = set()
    for h in range(n_entities):
        for r in range(n_base):
            if rng.random() < edge_prob:
                t = rng.randrange(n_entities - 1)
                base.add((h, r, t + (t >= h)))
    derived = apply_rules(base, rules) - base
    return KG([f"e{i}" for i in range(n_entities)], [f"r{j}" for j in range(n_rel)], base | derived,
              list(rules), derived)


def split_heldout(kg: KG, fraction: float = 0.2, seed: int = 0) -> tuple[KG, list[Triple]]:
    """Hold out a fraction of the *derived* triples (answerable only by composing training edges)."""
    rng = random.Random(seed)
    derived = sorted(kg.derived)
    rng.shuffle(derived)
    held = derived[:int(round(fraction * len(derived)))]
    return kg.with_triples(kg.triples - set(held)), held


def random_walk(out: dict[int, list[tuple[int, int]]], start: int, max_len: int, rng: random.Random) -> list[int]:
    """[e0, r1, e1, …] with up to max_len edges; each step picks an outgoing edge with prob 1/out-degree;
    stops early at an entity without outgoing edges."""
    path, cur = [start], start
    for _ in range(max_len):
        edges = out.get(cur)
        if not edges:
            break
        r, t = edges[rng.randrange(len(edges))]
        path += [r, t]
        cur = t
    return path


def random_walks(kg: KG, n_walks: int, max_len: int = 6, rng: Optional[random.Random] = None,
                 min_len: int = 1) -> list[list[int]]:
    """n_walks walks from uniformly chosen start entities that have outgoing edges; length in edges is
    uniform in [min_len, max_len]."""
    rng = rng or random.Random(0)
    out = kg.out_edges()
    starts = sorted(out)
    if not starts:
        raise ValueError("the KG has no edges to walk on")
    return [random_walk(out, rng.choice(starts), rng.randint(min_len, max_len), rng) for _ in range(n_walks)]


def is_valid_walk(kg: KG, walk: Sequence[int]) -> bool:
    return all((walk[i], walk[i + 1], walk[i + 2]) in kg.triples for i in range(0, len(walk) - 2, 2))


# ---- text ------------------------------------------------------------------------------------------------
def verbalize_triple(kg: KG, h: int, r: int, t: int, templates: Optional[dict[str, str]] = None) -> str:
    tpl = (templates or {}).get(kg.relations[r], "{h} " + kg.relations[r] + " {t}.")
    return tpl.format(h=kg.entities[h], t=kg.entities[t])


def verbalize(kg: KG, walk: Sequence[int], templates: Optional[dict[str, str]] = None) -> str:
    """A walk as sentences, one per edge: e.g. {"mother_of": "{h} is the mother of {t}."}."""
    return " ".join(verbalize_triple(kg, walk[i], walk[i + 1], walk[i + 2], templates)
                    for i in range(0, len(walk) - 2, 2))


def true_false_examples(kg: KG, queries: Sequence[Triple], rng: Optional[random.Random] = None,
                        plausible_frac: float = 0.8, templates: Optional[dict[str, str]] = None) -> list[dict]:
    """For each true query one positive and one negative example: {"triple", "neg_of", "label", "prompt"},
    prompt = "<statement> True or False?". A negative keeps (h, r) and replaces t."""
    rng = rng or random.Random(0)
    tails = kg.tails_of()
    n_ent = len(kg.entities)
    out = []
    for h, r, t in queries:
        plaus = sorted(x for x in tails.get(r, ()) if x != t and (h, r, x) not in kg.triples and x != h)
        use_plausible = plaus and rng.random() < plausible_frac
        while True:
            neg = rng.choice(plaus) if use_plausible else rng.randrange(n_ent)
            if neg != t and neg != h and (h, r, neg) not in kg.triples:
                break
        for trip, label in (((h, r, t), True), ((h, r, neg), False)):
            out.append({"triple": trip, "neg_of": (h, r, t), "label": label, "plausible": bool(use_plausible),
                        "prompt": verbalize_triple(kg, *trip, templates) + " True or False?"})
    return out


def backend_true_false_accuracy(backend, examples: Sequence[dict]) -> float:
    """Accuracy of an LLM backend on the prompts: predicts True iff log p(" True") > log p(" False")."""
    prompts = [e["prompt"] for e in examples]
    lt = backend.logprobs(prompts, [" True"] * len(prompts))
    lf = backend.logprobs(prompts, [" False"] * len(prompts))
    return sum((a > b) == e["label"] for a, b, e in zip(lt, lf, examples)) / max(len(examples), 1)


# ---- token ids for a tiny LM: one token per entity and relation --------------------------------------------
class KGVocab:
    """ids: entities 0..E-1, relations E..E+R-1, then '.' (end of sentence) and EOS."""

    def __init__(self, kg: KG):
        self.E, self.R = len(kg.entities), len(kg.relations)
        self.dot, self.eos = self.E + self.R, self.E + self.R + 1
        self.size = self.E + self.R + 2

    def walk_ids(self, walk: Sequence[int]) -> list[int]:
        return [x if i % 2 == 0 else self.E + x for i, x in enumerate(walk)] + [self.dot]

    def triple_ids(self, h: int, r: int, t: int) -> list[int]:
        return [h, self.E + r, t, self.dot]
