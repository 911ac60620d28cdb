"""CIDEr-D (Vedantam et al., 2015, "CIDEr: Consensus-based Image Description Evaluation"), the captioning
metric Synth² reports; computed as the coco-caption toolkit does (github.com/tylin/coco-caption,
pycocoevalcap/cider: its "CIDEr" is the CIDEr-D variant), without the PTB tokenizer (ours: lower case,
words of letters and digits).

Notation: i = image, c_i = candidate, S_i = its references, g = n-gram (n = 1..4), h_g(s) = count of g in s,
I = number of images.

    df(g)       = #{i : g occurs in some reference of S_i}
    tfidf_g(s)  = h_g(s) · (log I − log max(1, df(g)))               (the toolkit's tf: the raw count)
    l(s)        = number of words of s
    sim_n(c, s) = e^{−(l(c) − l(s))² / (2σ²)} · Σ_g min(tfidf_g(c), tfidf_g(s)) · tfidf_g(s) / (‖tfidf(c)‖ ‖tfidf(s)‖)
    CIDEr-D_n(c_i, S_i) = mean_{s ∈ S_i} sim_n(c_i, s)
    CIDEr-D(c_i, S_i)   = 10 · mean_n CIDEr-D_n            σ = 6; corpus score = mean over images

A zero norm makes that n's similarity 0 (the toolkit's convention).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

SIGMA = 6.0
N = 4


def words(s: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", s.lower())


def ngrams(ws: Sequence[str], n_max: int = N) -> list[Counter]:
    """[Counter of n-grams for n = 1..n_max]."""
    return [Counter(tuple(ws[k:k + n]) for k in range(len(ws) - n + 1)) for n in range(1, n_max + 1)]


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = SIGMA) -> tuple[float, list[float]]:
    """(corpus CIDEr-D, per-image scores). references[i] is the list of reference captions of image i."""
    if len(candidates) != len(references):
        raise ValueError(f"cider_d: {len(candidates)} candidates for {len(references)} reference sets")
    if not candidates:
        raise ValueError("cider_d: no captions")
    refs = [[ngrams(words(r)) for r in rs] for rs in references]
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for counts in r for g in counts})
    log_i = math.log(float(len(candidates)))

    def vec(counts: list[Counter]) -> tuple[list[dict], list[float]]:
        v = [{g: h * (log_i - math.log(max(1.0, df[g]))) for g, h in c.items()} for c in counts]
        return v, [math.sqrt(sum(x * x for x in d.values())) for d in v]

    scores = []
    for cand, rs, raw in zip(candidates, refs, references):
        cw = words(cand)
        vc, nc = vec(ngrams(cw))
        per_n = [0.0] * N
        for r, rtext in zip(rs, raw):
            vr, nr = vec(r)
            delta = len(cw) - len(words(rtext))
            for n in range(N):
                val = sum(min(x, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, x in vc[n].items())
                if nc[n] != 0 and nr[n] != 0:
                    val /= nc[n] * nr[n]
                else:
                    val = 0.0
                per_n[n] += val * math.exp(-(delta ** 2) / (2 * sigma ** 2))
        scores.append(10.0 * sum(p / len(rs) for p in per_n) / N)
    return sum(scores) / len(scores), scores


__all__ = ["cider_d", "words", "ngrams"]
