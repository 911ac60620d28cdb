"""CrossEval judge: score parsing on malformed replies, retries, rescaling, aggregation, weakest link."""
import math

import pytest

from lmlab.eval.judge import (REQUIRED_SECTIONS, Reference, aggregate, build_judge_prompt, judge, parse_score,
                              rescale, weakest_link)

BODY = "### Strengths\nclear\n### Weaknesses\nshort\n### Comparison with references\nlike ref 2\n"


@pytest.mark.parametrize("reply,score,why", [
    (BODY + "Score: 4/5", 4.0, ""),
    (BODY + "**Score: 3/5**", 3.0, ""),
    (BODY + "score : **5** / 5.", 5.0, ""),
    (BODY + "Score：2/5", 2.0, ""),                                  # full-width colon
    (BODY + "Score: 2/5 at first, but on reflection\nScore: 4/5", 4.0, ""),   # last wins
    (BODY + "Score: 6/5", None, "outside"),
    (BODY + "Score: 0/5", None, "outside"),
    (BODY + "Score: X/5", None, "no 'Score"),                         # the placeholder echoed back
    (BODY + "Score: 4", None, "no 'Score"),                           # no /5
    (BODY + "I would give it four out of five.", None, "no 'Score"),
    ("", None, "empty"),
    ("### Strengths\ngood\nScore: 4/5", None, "missing section(s): Weaknesses, Comparison with references"),
    (BODY + "Score: 3.5/5", 3.5, ""),
])
def test_parse_score_malformed_replies(reply, score, why):
    s, err = parse_score(reply)
    assert s == score
    assert (why in err) if why else err == ""


class ScriptedJudge:
    name = "scripted"

    def __init__(self, replies):
        self.replies, self.gens = list(replies), []

    def chat(self, convs, gen):
        self.gens.append(gen)
        return [[self.replies.pop(0)] for _ in convs]


def test_judge_retries_until_parsable():
    be = ScriptedJudge(["I think it is fine.", BODY + "Score: 7/5", BODY + "Score: 3/5"])
    j = judge(be, "write a sort", "def s(x): return sorted(x)", retries=3)
    assert j.score == 3.0 and j.attempts == 3 and len(j.raw) == 3
    assert be.gens[0].temperature == 0.0 and be.gens[1].temperature > 0 and be.gens[1].seed != be.gens[2].seed
    assert j.rescaled == pytest.approx(50.5)


def test_judge_gives_up_after_retries():
    j = judge(ScriptedJudge(["nope"] * 3), "p", "r", retries=2)
    assert j.score is None and j.attempts == 3 and "no 'Score" in j.error and math.isnan(j.rescaled)


def test_prompt_contains_rubric_references_and_sections():
    refs = [Reference("ans A", 2, "misses edge cases"), Reference("ans B", 5), Reference("c", 3), Reference("d", 1)]
    p = build_judge_prompt("Q?", "my answer", refs)
    assert "Reference 3 (rated 3/5)" in p and "Reference 4" not in p          # at most three references
    assert "misses edge cases" in p and "Score: X/5" in p
    assert all(f"### {s}" in p for s in REQUIRED_SECTIONS)


def test_rescale_endpoints():
    assert [rescale(s) for s in (1, 2, 3, 4, 5)] == [1.0, 25.75, 50.5, 75.25, 100.0]


def test_aggregate_and_weakest_link():
    recs = [{"capabilities": ["coding"], "score": 5}, {"capabilities": ["coding"], "score": 3},      # 4 -> 75.25
            {"capabilities": ["reasoning"], "score": 2},                                             # 25.75
            {"capabilities": ["english"], "score": 5},                                               # 100
            {"capabilities": ["reasoning", "coding"], "score": 2},                                   # 25.75
            {"capabilities": ["coding", "english"], "score": 4},                                     # 75.25
            {"capabilities": ["english", "reasoning"], "score": 1},                                  # 1
            {"capabilities": ["english", "reasoning"], "score": None}]                               # unparsed
    ind, cross = aggregate(recs)
    assert ind == {"coding": 75.25, "reasoning": 25.75, "english": 100.0}
    assert cross == {("coding", "reasoning"): 25.75, ("coding", "english"): 75.25, ("english", "reasoning"): 1.0}
    wl = weakest_link(ind, cross)
    assert wl["n"] == 3
    assert wl["below_weak"] == pytest.approx(1 / 3) and wl["between"] == pytest.approx(2 / 3)
    assert wl["above_strong"] == 0 and wl["closer_to_weak"] == 1.0
    assert wl["mean_dev_weak"] == pytest.approx(24.75 / 3)
    assert wl["mean_dev_strong"] == pytest.approx((49.5 + 24.75 + 99) / 3)
    row = {r["pair"]: r for r in wl["rows"]}[("coding", "english")]
    assert row["position"] == pytest.approx(0.0)
