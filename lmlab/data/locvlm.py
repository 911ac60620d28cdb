"""LocVLM's location instruction objectives as data generators over synthetic scenes, and the probes that
score spatial reasoning and hallucination.

Ranasinghe et al. 2024, "Learning to Localize Objects Improves Spatial Reasoning in Visual-LLMs" (LocVLM):
besides ordinary VQA, the model is instruction-tuned to read and write object coordinates as text:

    LocPred   "Give the box of the {name}."            -> box text (lmlab.data.coords, format per run)
    NegPred   "Give the box of the {absent name}."     -> "There is no {name}."   (the object is not there)
    RevLoc    "What is in the box {box}?"              -> "{name}"

Questions name only objects that occur once in the scene (so a box is unambiguous); NegPred names an object of
the vocabulary that is absent. The paper also trains on pseudo-labelled images (boxes from a detector, no
human labels): `pseudo_scene` wraps predicted (name, box) pairs so the same generators apply
(lmlab.train.locvlm trains our small box regressor and labels unlabelled scenes with it).

Probes (held-out split):
    spatial      the scene's region and relation questions (left/right/above/below), on held-out scenes,
                 i.e. with object pairs never seen together in training or objects in a quadrant they never
                 occupied (lmlab.data.scenes)
    hallucination POPE-style yes/no probes "Is there a {absent}?" (answer "no") and NegPred questions;
                 a probe hallucinates when the model asserts the absent object (says "yes", or writes a box)

Same scene and seed → the same questions (rng = SeedSequence([scene seed, split, index, 7])).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from lmlab.data.coords import FORMATS, format_box, normalise_box, parse_box
from lmlab.data.scenes import GROUP, NAMES, QA, SPLITS, Scene, SceneObject, _article

OBJECTIVES = ("locpred", "negpred", "revloc")
LOC_KINDS = OBJECTIVES
SPATIAL_KINDS = ("region", "relation")


def locpred_question(name: str) -> str:
    return f"Give the box of the {name}."


def revloc_question(box_text: str) -> str:
    return f"What is in the box {box_text}?"


def negpred_answer(name: str) -> str:
    return f"There is no {name}."


def _fmt_size(fmt: str, scene: Scene):
    if fmt not in FORMATS:
        raise ValueError(f"locvlm: unknown coordinate format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return scene.size if fmt == "pixels" else None


@dataclass
class LocQA(QA):
    """A QA pair of a location objective; `box` is the object's exact normalised box (LocPred, RevLoc)."""

    box: Optional[tuple[float, float, float, float]] = None
    name: str = ""


def location_questions(scene: Scene, fmt: str, objectives: Sequence[str] = OBJECTIVES,
                       vocab: Optional[Sequence[str]] = None, n_neg: int = 1) -> list[LocQA]:
    """Every LocPred and RevLoc question of the scene's once-occurring objects and `n_neg` NegPred questions
    about absent objects of `vocab` (default: all names), in format `fmt`."""
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad:
        raise ValueError(f"locvlm: unknown objective(s) {bad}; choose from: {', '.join(OBJECTIVES)}")
    size = _fmt_size(fmt, scene)
    rng = np.random.default_rng([scene.seed, SPLITS[scene.split], scene.index, 7])
    count: dict[str, int] = {}
    for o in scene.objects:
        count[o.name] = count.get(o.name, 0) + 1
    unique = [o for o in scene.objects if count[o.name] == 1]
    out: list[LocQA] = []
    for o in unique:
        box = normalise_box(o.box, scene.size)
        text = format_box(box, fmt, size)
        if "locpred" in objectives:
            out.append(LocQA(locpred_question(o.name), text, "locpred", box, o.name))
        if "revloc" in objectives:
            out.append(LocQA(revloc_question(text), o.name, "revloc", box, o.name))
    if "negpred" in objectives:
        absent = [v for v in (vocab or NAMES) if v not in count]
        for j in rng.permutation(len(absent))[:n_neg]:
            out.append(LocQA(locpred_question(absent[j]), negpred_answer(absent[j]), "negpred", None, absent[j]))
    return out


def pope_questions(scene: Scene, vocab: Optional[Sequence[str]] = None, n: int = 2) -> list[LocQA]:
    """POPE-style yes/no existence probes: `n` absent objects (answer "no") and as many present ones ("yes")."""
    rng = np.random.default_rng([scene.seed, SPLITS[scene.split], scene.index, 8])
    present = sorted({o.name for o in scene.objects})
    absent = [v for v in (vocab or NAMES) if v not in present]
    out = []
    for j in rng.permutation(len(absent))[:n]:
        out.append(LocQA(f"Is there {_article(absent[j])} in the image?", "no", "pope_absent", None, absent[j]))
    for j in rng.permutation(len(present))[:n]:
        out.append(LocQA(f"Is there {_article(present[j])} in the image?", "yes", "pope_present", None, present[j]))
    return out


def pseudo_scene(scene: Scene, detections: Sequence[tuple[str, tuple[float, float, float, float]]]) -> Scene:
    """The scene with its objects replaced by detector output [(name, normalised box)]: pseudo-labels that the
    location generators use as if they were ground truth (LocVLM's pseudo-data)."""
    W, H = scene.size
    objs = [SceneObject(n, GROUP[n], (int(round(b[0] * W)), int(round(b[1] * H)), int(round(b[2] * W)),
                                       int(round(b[3] * H)))) for n, b in detections]
    return replace(scene, objects=objs)


# ---- scoring ------------------------------------------------------------------------------------------------

def normalize_answer(s: str) -> str:
    return " ".join(str(s).strip().lower().rstrip(".").split())


def grounding_hit(output: str, box: Sequence[float], fmt: str, size=None, threshold: float = 0.5) -> bool:
    """LocPred is correct when the output parses as a box of `fmt` with IoU ≥ threshold to the true box."""
    from lmlab.data.coords import box_iou

    got = parse_box(output, fmt, size)
    return got is not None and box_iou(got, box) >= threshold


def asserts_presence(output: str, kind: str, fmt: str = "bins100", size=None) -> bool:
    """Whether an answer to an absent-object probe claims the object is there: "yes" to a POPE probe, or a
    box (anything that is not a refusal) to a NegPred question."""
    out = normalize_answer(output)
    if kind == "pope_absent":
        return out.startswith("yes")
    if kind == "negpred":
        return parse_box(output, fmt, size) is not None or not out.startswith("there is no")
    raise ValueError(f"asserts_presence: kind {kind!r} is not an absent-object probe (pope_absent, negpred)")


@dataclass
class ProbeSet:
    """Flat probes over scenes, in the layout of lmlab.train.vlm.VQAData plus the true boxes."""

    images: list = field(default_factory=list)
    scenes: list = field(default_factory=list)
    image_of: list[int] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    boxes: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.questions)

    def add(self, i: int, qa) -> None:
        self.image_of.append(i)
        self.questions.append(qa.question)
        self.answers.append(qa.answer)
        self.kinds.append(qa.kind)
        self.boxes.append(getattr(qa, "box", None))


def build_probes(rows: Sequence[tuple[Scene, list[QA]]], fmt: Optional[str], kinds: Sequence[str] = (),
                 objectives: Sequence[str] = OBJECTIVES, pope: int = 0, vocab=None) -> ProbeSet:
    """rows = scene_dataset(...) output. Keeps the scene questions of `kinds`, adds the location questions of
    `objectives` in format `fmt` (none when fmt is None) and `pope` absent + `pope` present POPE probes."""
    out = ProbeSet()
    for i, (scene, qas) in enumerate(rows):
        out.images.append(scene.image)
        out.scenes.append(scene)
        for qa in qas:
            if qa.kind in kinds:
                out.add(i, qa)
        if fmt is not None and objectives:
            for qa in location_questions(scene, fmt, objectives, vocab):
                out.add(i, qa)
        if pope:
            for qa in pope_questions(scene, vocab, pope):
                out.add(i, qa)
    return out


__all__ = ["OBJECTIVES", "SPATIAL_KINDS", "LocQA", "location_questions", "pope_questions", "pseudo_scene",
           "grounding_hit", "asserts_presence", "ProbeSet", "build_probes", "locpred_question", "revloc_question",
           "negpred_answer", "normalize_answer"]
