"""Skill-Mix: every checker on hand-written positive and negative texts, grammar texts pass their checkers for
random k-subsets, judge grading with replies that give no verdict, and the success statistics by hand."""
import random

import pytest

from lmlab.data.skillmix_data import (CATALOGUE, CHECKABLE, TOPICS, build_examples, compose, mentions, prompt,
                                     rhymes, sample_tuples, sentences)
from lmlab.eval.skillmix import Grade, generate_with_rejection, grade, parse_yes_no, success_rates

HAND = {   # skill: (texts that have it, texts that do not)
    "rhetorical_question": (["Who could ever forget the sea?", 'He asked, "Why not?"'],
                            ["The sea is wide.", "Why. Because"]),
    "alliteration": (["Big bold bears sleep.", "The slow, soft, silver moon."],
                     ["Big red bears sleep.", "Big. Bold. Bears."]),
    "rhyme": (["We sleep at night. We wake with light.", "The cat sat.\nIt found a hat."],
              ["We sleep at night. We wake at dawn.", "The light. The light."]),
    "metaphor": (["Time is a river of memory.", "The owls were a choir of night."],
                 ["Time is like a river of memory.", "Time is a river."]),
    "simile": (["She runs like a deer.", "He is as brave as a lion."], ["She runs fast.", "I like tea."]),
    "numbered_list": (["1. Milk\n2. Bread", "Buy:\n1. eggs\n\n2. ham"], ["1. Milk", "2. Bread\n1. Milk", "1.Milk\n2.Bread"]),
    "quotation": (['She said, "I love the rain."', "\u201cGo home now\u201d, he said."], ['She said "hi".', "No quotes here."]),
    "exclamation": (["What a day!", "Stop! Wait."], ["What a day.", "Wow?!?"]),
    "word_count_4": (["I remember the rivers.", "Long text here. We talked about it."], ["I remember the old rivers.", "Too short."]),
    "hyperbole": (["I told you a million times.", "The best cake in the whole world."], ["I told you twice."]),
    "parenthesis": (["The owls (as he says) hoot.", "Tea (hot and sweet) helps."], ["The owls (hoot).", "No aside."]),
    "anaphora": (["We came. We saw.", "Every day ends. Every night falls."], ["The day ends. The night falls.", "We came. They saw."]),
    "onomatopoeia": (["Buzz went the bees.", "A loud BANG woke us."], ["The bees were loud.", "Bangs of hair."]),
    "conditional": (["If it rains, then we stay.", "if x then y."], ["If it rains we stay.", "Then, if ever."]),
    "contrast": (["It is cold, but sunny.", "However, we left."], ["It is cold and sunny.", "Butter melts."]),
}


@pytest.mark.parametrize("skill", sorted(HAND))
def test_checker_hand_cases(skill):
    chk = CATALOGUE[skill].checker
    yes, no = HAND[skill]
    for t in yes:
        assert chk(t), (skill, t)
    for t in no:
        assert not chk(t), (skill, t)


def test_every_checkable_skill_has_hand_cases():
    assert sorted(HAND) == sorted(CHECKABLE)
    assert [n for n, s in CATALOGUE.items() if s.checker is None] == ["irony", "understatement"]


def test_helpers():
    assert sentences('He said, "Go." Then he left!\n1. a') == ['He said, "Go."', "Then he left!", "1. a"]
    assert rhymes("night", "light") and rhymes("day", "way") and not rhymes("day", "day") and not rhymes("sea", "free")
    assert mentions("The owl sang.", "owls") and not mentions("The bowl sang.", "owls")
    assert prompt(["rhyme", "simile"], "tea") == "Skills: rhyme, simile\nTopic: tea\nText:"


def test_grammar_texts_pass_their_checkers():
    rng = random.Random(0)
    for k in (1, 2, 3, 4, 5):
        for sk in sample_tuples(CHECKABLE, k, 60, rng):
            topic = rng.choice(TOPICS)
            text = compose(sk, topic, rng)
            g = grade(text, sk, topic)
            assert g.full_marks, (sk, text)
    ex = build_examples(CHECKABLE, [2, 3], 50, TOPICS, seed=3)
    assert {e["k"] for e in ex} == {2, 3} and all(e["prompt"] == prompt(e["skills"], e["topic"]) for e in ex)
    with pytest.raises(KeyError, match="'sarcasm'"):
        compose(["sarcasm"], "tea", rng)
    with pytest.raises(ValueError, match="k=9"):
        sample_tuples(CHECKABLE[:3], 9, 1, rng)


@pytest.mark.parametrize("reply, want", [
    ("Yes.", True), ("no", False), ("Answer: yes, it does.", True), ("Yes or no? I cannot tell.", None),
    ("The text is nice.", None), ("", None), ("Nobody knows", None), ("YES", True), ("No idea, sorry.", None),
])
def test_parse_yes_no(reply, want):
    assert parse_yes_no(reply) is want


class ScriptedChat:
    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = 0

    def chat(self, convs, gen):
        out = []
        for _ in convs:
            self.calls += 1
            out.append([self.replies.pop(0) if self.replies else "hmm"] * gen.n)
        return out


def test_judge_grading_retries_and_unparsed():
    text = "Of course the owls arrived right after we stopped waiting for them."
    g = grade(text, ["irony", "hyperbole"], "owls", judge=ScriptedChat(["I think so", "Yes."]))
    assert g.skills == {"irony": True, "hyperbole": False} and g.judge_unparsed == 0 and g.topic
    j = ScriptedChat(["maybe", "no idea", "???"])
    g = grade(text, ["irony"], "owls", judge=j)
    assert g.skills == {"irony": False} and g.judge_unparsed == 1 and j.calls == 3
    with pytest.raises(ValueError, match="'irony' has no checker"):
        grade(text, ["irony"], "owls")


def test_success_rates_by_hand():
    gs = [Grade({"a": True, "b": True}, True), Grade({"a": True, "b": False}, True), Grade({"a": True}, False)]
    r = success_rates(gs)
    assert r["full_marks"] == pytest.approx(1 / 3)
    assert r["skill_rate"] == pytest.approx(4 / 5)
    assert r["topic_rate"] == pytest.approx(2 / 3)
    assert gs[1].points == 2 and gs[0].points == 3


def test_generate_with_rejection_keeps_only_passing_texts():
    be = ScriptedChat(["Big bold bears love tea.", "Tea is hot."] * 20)
    be.chat = lambda convs, gen: [["Big bold bears love tea.", "nothing here"] for _ in convs]
    kept, st = generate_with_rejection(be, ["alliteration"], [1], ["tea"], n=3, samples=2)
    assert st == {"requests": 3, "candidates": 6, "kept": 3} and all(e["text"].startswith("Big") for e in kept)
    be.chat = lambda convs, gen: [["Tea is hot.", "Bears love tea."] for _ in convs]
    assert generate_with_rejection(be, ["alliteration"], [1], ["tea"], n=2, samples=2)[1]["kept"] == 0


def test_piece_tokenizer_round_trip_and_errors():
    from lmlab.data.skillmix_data import PieceTokenizer, grammar_tokenizer

    tok = grammar_tokenizer()
    for e in build_examples(CHECKABLE, [1, 2, 3, 4, 5], 200, TOPICS, seed=11):
        s = e["prompt"] + "\n" + e["text"]
        assert tok.decode(tok.encode(s)) == s
    small = PieceTokenizer(["a b.\nc"])
    assert small.itos[:2] == ["<pad>", "<eos>"] and small.decode(small.encode("a b.\nc") + [small.eos_id]) == "a b.\nc"
    with pytest.raises(KeyError, match="unknown piece ' z'"):
        small.encode("a z")
    with pytest.raises(KeyError, match="unexpected text"):
        small.encode("a  b")


def test_skillmix_arms_are_fair():
    from lmlab.experiments.skillmix_compose import HELDOUT_SKILLS, arm_data, eval_prompts

    a, b = arm_data("k1", 0, "quick"), arm_data("k123", 0, "quick")
    assert len(a) == len(b)
    shared = [e for e in a if e["skills"][0] in HELDOUT_SKILLS]
    assert shared == [e for e in b if e["skills"][0] in HELDOUT_SKILLS] and all(e["k"] == 1 for e in shared)
    assert {e["k"] for e in a} == {1} and {e["k"] for e in b} == {1, 2, 3}
    assert not any(set(e["skills"]) & set(HELDOUT_SKILLS) for e in a + b if e not in shared)
    ev = eval_prompts(0, "quick")
    assert all(set(sk) <= set(HELDOUT_SKILLS) for sk, _ in ev["heldout k=2"] + ev["heldout k=3"])
    assert all(len(sk) == 5 for sk, _ in ev["k=5"]) and ev == eval_prompts(0, "quick")
