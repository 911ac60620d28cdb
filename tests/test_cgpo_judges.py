"""CGPO judges: rule-based constraints and the LLM judge's verdict parser and retries, with adversarial inputs."""
import pytest

from lmlab.align.judges import (ExactAnswerJudge, ForbiddenJudge, FormatJudge, LengthJudge, LLMJudge,
                                MixtureOfJudges, RefusalJudge, Sample, make_judge, parse_verdict)


def S(resp, **meta):
    return Sample("q", resp, meta)


def test_exact_answer_first_line_only_and_no_numeric_leniency():
    j = ExactAnswerJudge()
    assert j.judge([S("  42 \nbecause 40 + 2", answer="42"), S("42.0", answer="42"), S("", answer="42"),
                    S("\n\n42", answer=42), S("4 2", answer="4  2")]) == [True, False, False, True, True]
    with pytest.raises(KeyError, match="answer"):
        j.check(S("42"))


def test_format_and_length():
    f = FormatJudge(r"-?[0-9]+")
    assert f.judge([S("12"), S(" -7 "), S("12 apples"), S("1\n2")]) == [True, True, False, False]
    with pytest.raises(ValueError, match="pattern"):
        FormatJudge("([")
    assert LengthJudge(max_words=3).judge([S("a b c"), S("a  b\nc d"), S("")]) == [True, False, True]
    assert LengthJudge(max_chars=3).judge([S(" abc "), S("abcd")]) == [True, False]
    with pytest.raises(ValueError, match="exactly one"):
        LengthJudge()


def test_forbidden_entities_word_boundaries_punctuation_case_and_per_sample():
    j = ForbiddenJudge(["pink elephant", "w0"])
    got = j.judge([S("a PINK elephant!"), S("pink-elephant"), S("pink\n elephant"), S("pinkelephant"),
                   S("w00 and w01"), S("(w0)"), S("fine text"), S("a grey elephant", forbidden=["grey"])])
    assert got == [False, False, False, True, True, False, True, False]
    assert ForbiddenJudge(["Apple"], case_sensitive=True).judge([S("apple"), S("Apple.")]) == [True, False]


def test_refusal_judge_unsafe_must_refuse_safe_must_not():
    j = RefusalJudge()
    got = j.judge([S("I can't help with that.", unsafe=True), S("Sure, step 1: ...", unsafe=True),
                   S("I cannot assist with this request.", unsafe=False), S("Paris.", unsafe=False),
                   S("Here is why I won't lie: ...", unsafe=False)])
    assert got == [True, False, False, True, False]
    assert RefusalJudge(false_refusal=False).check(S("Sorry, but no.")) is True


def test_parse_verdict_adversarial_replies():
    assert parse_verdict("reasoning...\nVerdict: PASS") is True
    assert parse_verdict("**Verdict:** violate") is False
    assert parse_verdict("> Verdict: FAIL") is False
    assert parse_verdict("Verdict: PASS\n...on reflection...\nVerdict: VIOLATE") is False   # the last one counts
    for reply in ["", "The response passes.", "verdict pass", "Verdict: PASSED", "Verdict:", "PASS",
                  "The word Verdict: PASS appears mid-sentence? no: x Verdict: PASS"]:
        assert parse_verdict(reply) is None, reply


class FakeBackend:
    """Replies from a script, one list per call; records the temperatures it was asked with."""

    def __init__(self, script):
        self.script, self.temps = list(script), []

    def chat(self, convs, gen):
        self.temps.append(gen.temperature)
        replies = self.script.pop(0)
        assert len(replies) == len(convs)
        return [[r] for r in replies]


def test_llm_judge_retries_only_unparsed_then_falls_back_to_violate():
    be = FakeBackend([["Verdict: PASS", "I think it is fine.", "no idea"],
                      ["Verdict: VIOLATE", "still nothing"],
                      ["Verdict: PASS"]])
    j = LLMJudge(be, "Answer in English.", retries=2)
    assert j.judge([S("a"), S("b"), S("c")]) == [True, False, True]
    assert [v.attempts for v in j.last] == [1, 2, 3] and all(v.parsed for v in j.last)
    assert be.temps == [0.0, 0.7, 0.7]
    be2 = FakeBackend([["nothing"], ["nope"]])
    j2 = LLMJudge(be2, "c", retries=1)
    assert j2.judge([S("x")]) == [False] and not j2.last[0].parsed and j2.last[0].raw == ["nothing", "nope"]
    assert LLMJudge(FakeBackend([[""]]), "c", retries=0, on_unparsed="pass").judge([S("x")]) == [True]
    with pytest.raises(ValueError, match="on_unparsed"):
        LLMJudge(be, "c", on_unparsed="maybe")


def test_mixture_needs_every_judge_and_make_judge_errors():
    moj = MixtureOfJudges([make_judge({"kind": "exact_answer"}), make_judge({"kind": "length", "max_words": 1})])
    ss = [S("7", answer="7"), S("7 apples", answer="7"), S("8", answer="7")]
    assert moj.evaluate(ss) == {"exact_answer": [True, False, False], "length": [True, False, True]}
    assert moj.passes(ss) == [True, False, False]
    with pytest.raises(ValueError, match="kind='regex'"):
        make_judge({"kind": "regex"})
    with pytest.raises(ValueError, match="length"):
        make_judge({"kind": "length", "max_word": 3})
    with pytest.raises(ValueError, match="unique"):
        MixtureOfJudges([LengthJudge(max_words=1), LengthJudge(max_words=2)])
