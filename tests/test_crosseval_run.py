"""CrossEval run: batched judging with retries on malformed judge replies, the statistics by hand, and the
programmatic gold checks on hand responses."""
import math

import pytest

from lmlab.eval.crosseval_run import (PROMPTS, auc, code_returns, extract_code, final_number_is, judge_batch,
                                      run_crosseval, sentence_count_and, weakest_link_gap)
from lmlab.eval.judge import Reference, rescale


class Scripted:
    """chat(): replies by call order per conversation content (a list per prompt substring)."""
    name = "scripted"

    def __init__(self, by_key, default="No verdict here."):
        self.by_key = {k: list(v) for k, v in by_key.items()}
        self.default = default
        self.calls = []

    def chat(self, convs, gen):
        self.calls.append(len(convs))
        out = []
        for c in convs:
            text = c[-1]["content"]
            key = next((k for k in self.by_key if k in text), None)
            reply = self.by_key[key].pop(0) if key and self.by_key[key] else self.default
            out.append([reply] * gen.n)
        return out


def test_judge_batch_reasks_only_malformed():
    be = Scripted({"PROMPT-1": ["Score: 4/5"],
                   "PROMPT-2": ["I like it", "Score: 9/5", "Score: **2**/5"],
                   "PROMPT-3": ["", "nothing", "still nothing"]})
    items = [(f"PROMPT-{i}", "resp", [Reference("ref", 5, "why")]) for i in (1, 2, 3)]
    js = judge_batch(be, items, retries=2, sections=())
    assert [j.score for j in js] == [4.0, 2.0, None]
    assert [j.attempts for j in js] == [1, 3, 3]
    assert be.calls == [3, 2, 2]                                   # one batched call per attempt, malformed only
    assert "no 'Score: X/5' line" in js[2].error
    assert math.isnan(js[2].rescaled) and js[0].rescaled == pytest.approx(rescale(4))


def test_judge_batch_requires_sections_when_asked():
    be = Scripted({"P": ["Score: 5/5", "### Strengths\nok\n### Weaknesses\nnone\n### Comparison with references\n"
                                       "same\nScore: 5/5"]})
    j = judge_batch(be, [("P", "r", [])], retries=1)[0]
    assert j.score == 5.0 and j.attempts == 2


def test_auc_and_weakest_link_gap_by_hand():
    assert auc([3, 5], [1, 3]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert math.isnan(auc([], [1.0]))
    ind = {"a": 80.0, "b": 40.0, "c": 60.0}
    cross = {("a", "b"): 45.0, ("b", "c"): 58.0, ("a", "d"): 10.0}     # (a, d) has no individual score for d
    # (a,b): weak 40 strong 80 -> |45-40| - |45-80| = 5 - 35 = -30; (b,c): weak 40 strong 60 -> 18 - 2 = 16
    assert weakest_link_gap(ind, cross) == pytest.approx((-30 + 16) / 2)
    assert math.isnan(weakest_link_gap(ind, {("a", "d"): 1.0}))


def test_gold_checks_on_hand_responses(monkeypatch):
    import lmlab.eval.sandbox as sandbox

    run_check = sandbox.run_check   # a passing program must not time out on a loaded machine: 60 s, not the 5 s budget
    monkeypatch.setattr(sandbox, "run_check", lambda *a, **k: run_check(*a, **{**k, "timeout": 60.0}))
    assert final_number_is(12)("3 times 4 is 12.") and not final_number_is(12)("12 apples, no 13")
    assert final_number_is(1000)("It is 1,000")
    assert sentence_count_and(2, ["blue"])("The sea is Blue. It is wide.")
    assert not sentence_count_and(2, ["blue"])("The sea is blue.")
    assert not sentence_count_and(2, ["blue"])("The sea is bluer. It is wide.")
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1\n"
    assert extract_code("Sure! def f(): return 2") == "def f(): return 2"
    add = code_returns("add", (2, 3), 5)
    assert add("```python\ndef add(a, b):\n    return a + b\n```")
    assert not add("```python\ndef add(a, b):\n    return a - b\n```")
    assert not add("```python\nimport sys\ndef add(a, b):\n    sys.exit(0)\n```")
    assert not add("I would add them.")


def test_every_prompt_reference_passes_its_gold():
    caps = {p.capabilities for p in PROMPTS}
    assert {c for c in caps if len(c) == 1} == {("english",), ("reasoning",), ("coding",)} and len(caps) == 6
    for p in PROMPTS:
        if p.capabilities[0] != "coding":                          # code golds are covered above (sandbox runs)
            assert p.gold(p.reference.response), p.id
            assert not p.gold("I do not know."), p.id


def test_run_crosseval_summary_with_scripted_model_and_judge():
    prompts = [p for p in PROMPTS if "coding" not in p.capabilities]

    class Model:
        name = "m"

        def chat(self, convs, gen):
            return [["2 pm plus 3 hours is 5"] if "train" in c[0]["content"] else ["I cannot."] for c in convs]
    judge = Scripted({"train": ["Score: 5/5"]}, default="Score: 1/5")
    res = run_crosseval(Model(), judge, prompts, judge_sections=())
    s = res.summary
    assert s["parse_rate"] == 1.0 and s["judge_gold_agreement"] == 1.0
    assert s["individual"]["english"] == pytest.approx(1.0)
    assert s["individual"]["reasoning"] == pytest.approx((rescale(5) + 2 * rescale(1)) / 3)
    assert s["cross"]["english×reasoning"] == pytest.approx(1.0)
    assert s["wl_gap"] == pytest.approx(0 - (rescale(5) + 2 * rescale(1)) / 3 + 1.0)
