"""VLM evaluation tasks (Prismatic's evaluation format at our scale): one family of `lmlab eval` tasks over
synthetic scenes with exact answers, scored with bootstrap CIs by the ordinary runner, on any VLM backend.

    lmlab eval --task vlm_suite --model vlm:runs/vlm-tiny                       a saved VLM, in process
    lmlab eval --task vlm_suite --model openai:http://127.0.0.1:8000/v1#m       the same VLM under `lmlab serve`

Each document is one question about one image; the request is a chat turn whose content parts are the question
text and the image as a base64 PNG data: URL (OpenAI vision format, what `lmlab serve` reads). The VLM puts
the question into its own prompt template.

    vlm_vqa         exact match (lower-cased, trailing '.' dropped) on exists / count / region / relation / group
    vlm_grounding   "Give the box of the X." -> IoU of the parsed box (0 when it does not parse), acc@0.5
    vlm_referring   "What is in the box [..]?" (LocVLM's RevLoc) -> exact match of the object's name
    vlm_counting    "How many Xs are there?" (0 included) -> exact match
    vlm_pope        POPE-style "Is there a X?" yes/no probes, half absent -> accuracy; hallucination = "yes" on
                    absent objects (also reported per category present / absent)
    vlm_negpred     LocVLM's NegPred: "Give the box of the X." for absent X -> hallucination when not refused
    vlm_text        text reading on scenes with rendered words: "What word is written in the image?" and
                    "Is the word X written?" -> exact match
    vlm_suite       all of the above; per-document metrics that do not apply are NaN (left out of the mean),
                    `score` = the task's own correctness (exact match, IoU ≥ 0.5, not hallucinating), by category

Scenes: lmlab.data.scenes, held-out split by default (seed 0, 40 scenes, 128 px, 2–4 objects); the grounding
tasks write boxes in `fmt` (default bins100, see lmlab.data.coords) — evaluate a model with the format it
was trained on. Factory keyword arguments: seed, n, split, size, fmt, vocab, max_new_tokens.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from lmlab.registry import EVAL_TASKS

NAN = math.nan
VQA_KINDS = ("exists", "count", "region", "relation", "group")


def _docs(kinds: Sequence[str], seed: int, n: int, split: str, size: int, fmt: str, vocab, words: bool) -> list[dict]:
    from lmlab.data.locvlm import location_questions, pope_questions
    from lmlab.data.scenes import SceneGenerator
    from lmlab.infer.vlm_backend import image_data_url

    gen = SceneGenerator(seed=seed, split=split, size=size, objects_per_scene=(2, 4), background="plain",
                         words=words, vocab=list(vocab) if vocab else None)
    docs: list[dict] = []
    for i in range(n):
        s = gen.scene(i)
        url = image_data_url(s.image)
        qas: list = [q for q in gen.questions(s) if q.kind in kinds]
        loc = [o for o in ("locpred", "negpred", "revloc") if o in kinds]
        if loc:
            qas += location_questions(s, fmt, loc, vocab)
        if "pope" in kinds:
            qas += pope_questions(s, vocab, 1)
        for q in qas:
            box = getattr(q, "box", None)
            docs.append({"image_url": url, "question": q.question, "answer": q.answer, "kind": q.kind,
                         "box": list(box) if box is not None else None, "size": list(s.size), "scene": i,
                         "name": getattr(q, "name", "")})
    return docs


def _keys(kinds: Sequence[str]) -> list[str]:
    """The per-document metrics a task reports (those its kinds can have), `score` first."""
    keys = ["score"]
    if set(kinds) - {"locpred", "negpred"}:
        keys.append("exact_match")
    if "locpred" in kinds:
        keys += ["iou", "acc_iou50"]
    if {"negpred", "pope"} & set(kinds):
        keys.append("hallucination")
    return keys


def _score(doc: dict, outs: list[str], fmt: str) -> dict[str, float]:
    from lmlab.data.coords import box_iou, parse_box
    from lmlab.data.locvlm import asserts_presence, normalize_answer

    out = outs[0] if outs else ""
    kind = doc["kind"]
    m = {"score": NAN, "exact_match": NAN, "iou": NAN, "acc_iou50": NAN, "hallucination": NAN}
    size = doc["size"] if fmt == "pixels" else None
    if kind == "locpred":
        got = parse_box(out, fmt, size)
        iou = box_iou(got, doc["box"]) if got is not None else 0.0
        m.update(iou=iou, acc_iou50=float(iou >= 0.5), score=float(iou >= 0.5))
        return m
    if kind in ("negpred", "pope_absent"):
        h = float(asserts_presence(out, kind, fmt, size))
        m.update(hallucination=h, score=1.0 - h)
        if kind == "pope_absent":
            m["exact_match"] = float(normalize_answer(out) == "no")
        return m
    em = float(normalize_answer(out) == normalize_answer(doc["answer"]))
    m.update(exact_match=em, score=em)
    return m


def _task(name: str, kinds: Sequence[str], primary: str, seed: int = 0, n: int = 40, split: str = "heldout",
          size: int = 128, fmt: str = "bins100", vocab: Optional[Sequence[str]] = None, max_new_tokens: int = 32,
          words: bool = False, path: Optional[str] = None, **_):
    from lmlab.backend import GenerationConfig
    from lmlab.data.coords import FORMATS
    from lmlab.eval.runner import Task, read_jsonl

    if fmt not in FORMATS:
        raise ValueError(f"task {name}: unknown coordinate format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if path:   # documents written by `write_docs` (same fields), e.g. a frozen copy of a suite
        docs = read_jsonl(path)
    else:
        docs = _docs(kinds, seed, n, split, size, fmt, vocab, words)

    def prompt(d: dict) -> list[dict]:
        return [{"type": "text", "text": d["question"]}, {"type": "image_url", "image_url": {"url": d["image_url"]}}]

    kind_name = {"pope_absent": "pope absent", "pope_present": "pope present"}
    keys = _keys(kinds)

    def score(d: dict, outs: list[str]) -> dict[str, float]:
        m = _score(d, outs, fmt)
        return {k: m[k] for k in keys}

    return Task(name, docs, "generate_until", prompt, score, primary,
                category=lambda d: kind_name.get(d["kind"], d["kind"]),
                gen=GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=["\n"]), chat=True,
                extra={"fmt": fmt, "seed": seed, "split": split})


def write_docs(task, path) -> None:
    """The task's documents as JSON lines (a frozen copy to pass back with --data)."""
    import json

    from lmlab.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(d) + "\n" for d in task.docs))


@EVAL_TASKS.register("vlm_vqa", help="VLM: exact match on scene VQA (exists, count, region, relation, group)")
def vlm_vqa(**kw):
    return _task("vlm_vqa", VQA_KINDS, "exact_match", **kw)


@EVAL_TASKS.register("vlm_grounding", help="VLM: box of a named object, IoU and acc@IoU≥0.5 (LocPred)")
def vlm_grounding(**kw):
    return _task("vlm_grounding", ("locpred",), "acc_iou50", **kw)


@EVAL_TASKS.register("vlm_referring", help="VLM: name of the object in a given box, exact match (RevLoc)")
def vlm_referring(**kw):
    return _task("vlm_referring", ("revloc",), "exact_match", **kw)


@EVAL_TASKS.register("vlm_counting", help="VLM: how many of an object (0 included), exact match")
def vlm_counting(**kw):
    return _task("vlm_counting", ("count",), "exact_match", **kw)


@EVAL_TASKS.register("vlm_pope", help="VLM: POPE yes/no object probes, accuracy and hallucination rate")
def vlm_pope(**kw):
    return _task("vlm_pope", ("pope",), "hallucination", **kw)


@EVAL_TASKS.register("vlm_negpred", help="VLM: box of an absent object must be refused (NegPred hallucination)")
def vlm_negpred(**kw):
    return _task("vlm_negpred", ("negpred",), "hallucination", **kw)


@EVAL_TASKS.register("vlm_text", help="VLM: reading rendered words, exact match")
def vlm_text(**kw):
    kw.setdefault("words", True)
    return _task("vlm_text", ("text",), "exact_match", **kw)


@EVAL_TASKS.register("vlm_suite", help="VLM: every vlm_* task on one set of scenes, per-category scores")
def vlm_suite(**kw):
    kw.setdefault("words", True)
    return _task("vlm_suite", (*VQA_KINDS, "text", "locpred", "negpred", "revloc", "pope"), "score", **kw)
