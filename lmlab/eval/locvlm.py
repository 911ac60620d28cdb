"""Scoring a VLM on LocVLM's probes (lmlab.data.locvlm.ProbeSet): greedy answers through lmlab.infer.vlm, then

    grounding_acc      LocPred answers that parse as a box of the run's format with IoU ≥ 0.5 to the true box
    spatial_acc        exact match on region + relation questions (held-out scenes: unseen pairs / placements)
    hallucination      POPE probes about absent objects answered "yes"
    negpred_halluc     NegPred questions answered with anything but "There is no X." (location arms)
    pope_acc           exact match on all POPE probes (absent and present)
    acc/<kind>         exact match per question kind (LocPred by its grounding hit)

A metric whose questions are absent from the probe set is left out (not reported as 0).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

from lmlab.backend import GenerationConfig
from lmlab.data.locvlm import SPATIAL_KINDS, asserts_presence, grounding_hit, normalize_answer


def answer_all(vlm, data, batch_size: int = 64, max_new_tokens: Optional[int] = None) -> list[str]:
    """Greedy answers of `vlm` to every question of `data` (VQAData or ProbeSet layout), in order."""
    from lmlab.infer.engine import Engine
    from lmlab.infer.vlm import generate

    tok = vlm.tokenizer
    longest = max((len(tok.encode(" " + a)) for a in data.answers), default=1)
    gen = GenerationConfig(max_new_tokens=max_new_tokens or longest + 4, temperature=0.0, stop=["\n"])
    engine = Engine(vlm.lm, tok, hydragen=True)
    out: list[str] = []
    for s in range(0, len(data), batch_size):
        imgs = [data.images[i] for i in data.image_of[s:s + batch_size]]
        out += [row[0].strip() for row in generate(vlm, imgs, data.questions[s:s + batch_size], gen, engine=engine)]
    return out


def score_probes(outputs: list[str], probes, fmt: Optional[str]) -> dict[str, float]:
    """The metrics of the module doc from answers in probe order."""
    hits: dict[str, list[float]] = defaultdict(list)
    for out, ans, kind, i, box in zip(outputs, probes.answers, probes.kinds, probes.image_of, probes.boxes):
        size = probes.scenes[i].size if fmt == "pixels" else None
        if kind == "locpred":
            ok = fmt is not None and grounding_hit(out, box, fmt, size)
        else:
            ok = normalize_answer(out) == normalize_answer(ans)
        hits[kind].append(float(ok))
        if kind == "pope_absent":
            hits["_halluc"].append(float(asserts_presence(out, "pope_absent")))
        if kind == "negpred":
            hits["_negpred_halluc"].append(float(asserts_presence(out, "negpred", fmt or "bins100", size)))
    m: dict[str, float] = {f"acc/{k}": sum(v) / len(v) for k, v in sorted(hits.items()) if not k.startswith("_")}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    spatial = [h for k in SPATIAL_KINDS for h in hits.get(k, [])]
    if spatial:
        m["spatial_acc"] = mean(spatial)
    if hits.get("locpred"):
        m["grounding_acc"] = mean(hits["locpred"])
    if hits.get("_halluc"):
        m["hallucination"] = mean(hits["_halluc"])
    if hits.get("_negpred_halluc"):
        m["negpred_halluc"] = mean(hits["_negpred_halluc"])
    pope = hits.get("pope_absent", []) + hits.get("pope_present", [])
    if pope:
        m["pope_acc"] = mean(pope)
    return m


__all__ = ["answer_all", "score_probes"]
