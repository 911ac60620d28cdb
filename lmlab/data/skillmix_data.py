"""Skill-Mix: a catalogue of language skills, k-skill prompts over topics, and a grammar that writes texts
exhibiting any subset of skills.

Skill-Mix (Yu et al. 2023, arXiv:2310.17567) asks a model for a short text about a topic that exhibits k given
skills; "Can Models Learn Skill Composition from Examples?" (Zhao et al. 2024, arXiv:2409.19808) finetunes on
such texts with k = 1, 2, 3 and evaluates composition at k = 4, 5 and on held-out skills. Both papers' skills are
rhetorical, literary, reasoning, theory-of-mind and pragmatic ones graded by GPT-4 with a rubric (one point per
skill, one for the topic, one for the length limit; "full marks" = every point). Here every skill carries a
definition and, where one is possible, a programmatic checker, so texts are graded exactly; skills without a
checker (`checker=None`) are graded by a judge backend (lmlab.eval.skillmix).

The grammar is a small-scale stand-in for the papers' GPT-4 texts: each skill contributes one sentence built
from a template (a numbered list wraps the other skills' sentences instead), so a
text for k skills is a composition of k devices about one topic. `prompt(skills, topic)` is the request, the
same for every generator.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

SENT_SPLIT = re.compile(r"(?<=[.!?][\"')\u201d])\s+|(?<=[^\d\s][.!?])\s+|\n+")
WORD = re.compile(r"[A-Za-z']+")


def sentences(text: str) -> list[str]:
    """Sentences (split after . ! ? — with a closing quote kept — and at line breaks; '1.' of a list item does
    not end a sentence), stripped, non-empty."""
    return [s.strip() for s in SENT_SPLIT.split(text) if s and s.strip()]


def words(text: str) -> list[str]:
    return WORD.findall(text)


def _last_word(sentence: str) -> str:
    w = words(sentence)
    return w[-1].lower() if w else ""


# ---------------------------------------------------------------------------------------------- checkers
def has_rhetorical_question(text: str) -> bool:
    """A sentence that ends with a question mark (the grammar writes questions that expect no answer)."""
    return any(s.rstrip("\"')").endswith("?") for s in sentences(text))


def has_alliteration(text: str, run: int = 3) -> bool:
    """`run` consecutive words that start with the same letter (within one sentence)."""
    for s in sentences(text):
        ws = [w.lower() for w in words(s)]
        for i in range(len(ws) - run + 1):
            if len({w[0] for w in ws[i:i + run]}) == 1:
                return True
    return False


def rhymes(a: str, b: str) -> bool:
    """Different words with the same ending: the last 3 letters (2 for words of ≤ 3 letters)."""
    a, b = a.lower(), b.lower()
    if not a or not b or a == b:
        return False
    k = 2 if min(len(a), len(b)) <= 3 else 3
    return a[-k:] == b[-k:]


def has_rhyme(text: str) -> bool:
    """Two consecutive sentences whose last words rhyme."""
    last = [_last_word(s) for s in sentences(text)]
    return any(rhymes(a, b) for a, b in zip(last, last[1:]))


_METAPHOR = re.compile(r"(?i)\b(?:is|are|was|were)\s+(?:a|an)\s+[a-z]+\s+of\s+[a-z]+")


def has_metaphor(text: str) -> bool:
    """The metaphor marker 'X is a N of M' in a sentence without 'like' (which would make it a simile)."""
    return any(_METAPHOR.search(s) and not re.search(r"(?i)\blike\b", s) for s in sentences(text))


def has_simile(text: str) -> bool:
    """'like a/an/the N' or 'as ADJ as'."""
    return re.search(r"(?i)\blike\s+(?:a|an|the)\s+[a-z]+|\bas\s+[a-z]+\s+as\b", text) is not None


def has_numbered_list(text: str) -> bool:
    """Lines that start '1.' and then '2.' (in this order)."""
    lines = [ln.strip() for ln in text.split("\n")]
    i = next((k for k, ln in enumerate(lines) if re.match(r"1\.\s+\S", ln)), None)
    return i is not None and any(re.match(r"2\.\s+\S", ln) for ln in lines[i + 1:])


def has_quotation(text: str) -> bool:
    """A quoted passage of at least two words in straight or curly double quotes."""
    return re.search(r"[\"\u201c][^\"\u201d]*\s[^\"\u201d]*[\"\u201d]", text) is not None


def has_exclamation(text: str) -> bool:
    return any(s.rstrip("\"')").endswith("!") for s in sentences(text))


def has_four_word_sentence(text: str) -> bool:
    """A sentence of exactly four words (a given word count)."""
    return any(len(words(s)) == 4 for s in sentences(text))


HYPERBOLE_MARKERS = ("a million", "a thousand times", "forever and ever", "in the whole world",
                     "older than time", "a ton")


def has_hyperbole(text: str) -> bool:
    """One of the exaggeration markers HYPERBOLE_MARKERS."""
    t = text.lower()
    return any(m in t for m in HYPERBOLE_MARKERS)


def has_parenthesis(text: str) -> bool:
    """An aside in parentheses of at least two words."""
    return re.search(r"\([^()]*\s[^()]*\)", text) is not None


def has_anaphora(text: str) -> bool:
    """Two consecutive sentences that open with the same word (not 'the' or 'a')."""
    first = [w[0].lower() if (w := words(s)) else "" for s in sentences(text)]
    return any(a and a == b and a not in ("the", "a", "an") for a, b in zip(first, first[1:]))


ONOMATOPOEIA = ("buzz", "bang", "splash", "whoosh", "crack", "hiss", "boom", "thud", "sizzle", "pop", "drip",
                "clang")


def has_onomatopoeia(text: str) -> bool:
    ws = {w.lower() for w in words(text)}
    return any(o in ws for o in ONOMATOPOEIA)


def has_conditional(text: str) -> bool:
    """'if …, then …' within one sentence."""
    return any(re.search(r"(?i)\bif\b.*\bthen\b", s) for s in sentences(text))


def has_contrast(text: str) -> bool:
    return re.search(r"(?i)\b(?:but|however|yet)\b", text) is not None


# --------------------------------------------------------------------------------------------- grammar
ALLIT = {"b": ["bold", "bright", "brave", "busy", "big", "brown"], "s": ["soft", "silver", "sweet", "slow", "small"],
         "g": ["green", "gentle", "glad", "grand", "golden"], "w": ["warm", "wild", "wise", "white", "wet"]}
RHYME_PAIRS = [("night", "light"), ("day", "way"), ("rain", "plain"), ("star", "far"), ("tree", "free"),
               ("hill", "still"), ("moon", "soon"), ("glow", "slow"), ("fall", "tall"), ("ring", "sing")]
NOUNS = ["river", "song", "garden", "fire", "mirror", "storm", "window", "treasure", "bridge", "lantern"]
ABSTRACT = ["hope", "time", "light", "memory", "joy", "silence", "dreams", "peace"]
ADJ = ["quiet", "bright", "soft", "cold", "warm", "old", "small", "strong"]
PEOPLE = ["my friend", "the teacher", "my neighbour", "the old man", "my sister", "the farmer"]
TOPICS = ["rivers", "winter", "cats", "music", "mountains", "trains", "bread", "rain", "books", "gardens",
          "bicycles", "chess", "candles", "bridges", "owls", "tea", "clocks", "forests", "pianos", "deserts", "bees",
          "lighthouses", "apples", "snow", "boats", "libraries", "wolves", "kites", "volcanoes", "cheese"]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def g_rhetorical(t: str, r: random.Random) -> str:
    return r.choice([f"Who could ever forget the {t}?", f"Is there anything better than {t}?",
                     f"Why would anyone ignore the {t}?"])


def g_alliteration(t: str, r: random.Random) -> str:
    letter = r.choice(sorted(ALLIT))
    a, b, c = r.sample(ALLIT[letter], 3)
    return f"The {t} seemed {a}, {b}, {c}."


def g_rhyme(t: str, r: random.Random) -> str:
    a, b = r.choice(RHYME_PAIRS)
    return f"We watch the {t} at {a}. They stay with us all the {b}." if r.random() < 0.5 else \
        f"The {t} wait for the {a}. Then they rest and feel {b}."


def g_metaphor(t: str, r: random.Random) -> str:
    return f"The {t} are a {r.choice(NOUNS)} of {r.choice(ABSTRACT)}."


def g_simile(t: str, r: random.Random) -> str:
    return r.choice([f"The {t} shine like a {r.choice(NOUNS)}.", f"The {t} are as {r.choice(ADJ)} as snow."])


def g_exclamation(t: str, r: random.Random) -> str:
    return r.choice([f"What a joy the {t} are!", f"How lovely the {t} look!"])


def g_four(t: str, r: random.Random) -> str:
    return r.choice([f"I remember the {t}.", f"We talked about {t}."])


def g_hyperbole(t: str, r: random.Random) -> str:
    return f"I have seen the {t} {r.choice(['a million', 'a thousand times'])} times." \
        if r.random() < 0.5 else f"These are the best {t} in the whole world."


def g_parenthesis(t: str, r: random.Random) -> str:
    return f"The {t} (as {r.choice(PEOPLE)} says) are {r.choice(ADJ)}."


def g_anaphora(t: str, r: random.Random) -> str:
    w = r.choice(["We", "Every", "Always"])
    return f"{w} love the {t}. {w} dream of the {t}." if w == "We" else \
        f"{w} day brings us {t}. {w} night keeps the {t}." if w == "Every" else \
        f"{w} the {t} return to us. {w} they stay with us."


def g_onomatopoeia(t: str, r: random.Random) -> str:
    return f"{_cap(r.choice(ONOMATOPOEIA))} went the {t} in the night."


def g_conditional(t: str, r: random.Random) -> str:
    return f"If the {t} are {r.choice(ADJ)}, then we are happy."


def g_contrast(t: str, r: random.Random) -> str:
    return f"The {t} are {r.choice(ADJ)}, but they are never dull."


def g_irony(t: str, r: random.Random) -> str:
    return f"Of course the {t} arrived right after we stopped waiting for them."


def g_understatement(t: str, r: random.Random) -> str:
    return f"The great flood of {t} was a little inconvenient."


@dataclass(frozen=True)
class Skill:
    name: str
    category: str
    definition: str
    checker: Optional[Callable[[str], bool]]        # None: graded by a judge
    grammar: Callable[[str, random.Random], str]
    wraps: bool = False                              # the skill wraps the other sentences (list, quotation)


CATALOGUE: dict[str, Skill] = {s.name: s for s in [
    Skill("rhetorical_question", "rhetorical", "a question asked for effect, with no answer expected",
          has_rhetorical_question, g_rhetorical),
    Skill("alliteration", "literary", "three consecutive words that begin with the same letter",
          has_alliteration, g_alliteration),
    Skill("rhyme", "literary", "two consecutive sentences whose last words rhyme", has_rhyme, g_rhyme),
    Skill("metaphor", "literary", "a comparison without 'like' or 'as', marked 'X is a N of M'", has_metaphor, g_metaphor),
    Skill("simile", "literary", "a comparison with 'like' or 'as … as'", has_simile, g_simile),
    Skill("numbered_list", "format", "the text is a numbered list (lines '1.', '2.', …)", has_numbered_list,
          lambda t, r: f"Some of the {t} are {r.choice(ADJ)}.", wraps=True),
    Skill("quotation", "format", "a quotation of someone's words in double quotes", has_quotation,
          lambda t, r: f'{_cap(r.choice(PEOPLE))} said, "I love the {t}."'),
    Skill("exclamation", "rhetorical", "a sentence that ends with an exclamation mark", has_exclamation, g_exclamation),
    Skill("word_count_4", "format", "a sentence of exactly four words", has_four_word_sentence, g_four),
    Skill("hyperbole", "rhetorical", "an obvious exaggeration", has_hyperbole, g_hyperbole),
    Skill("parenthesis", "format", "an aside in parentheses", has_parenthesis, g_parenthesis),
    Skill("anaphora", "rhetorical", "two consecutive sentences that open with the same word", has_anaphora, g_anaphora),
    Skill("onomatopoeia", "literary", "a word that imitates a sound", has_onomatopoeia, g_onomatopoeia),
    Skill("conditional", "reasoning", "an 'if …, then …' statement", has_conditional, g_conditional),
    Skill("contrast", "reasoning", "a contrast introduced by 'but', 'however' or 'yet'", has_contrast, g_contrast),
    Skill("irony", "rhetorical", "saying the opposite of what is meant, or an outcome opposite to the expected one",
          None, g_irony),
    Skill("understatement", "rhetorical", "presenting something as less important than it is", None, g_understatement),
]}
CHECKABLE = [n for n, s in CATALOGUE.items() if s.checker is not None]


def prompt(skills: Sequence[str], topic: str) -> str:
    """The k-skill request (the same for every generator and for evaluation)."""
    return f"Skills: {', '.join(skills)}\nTopic: {topic}\nText:"


def compose(skills: Sequence[str], topic: str, rng: random.Random) -> str:
    """A text about `topic` that exhibits every skill in `skills` (grammar stand-in for an LLM writer).

    Each skill gives one sentence (or two), in the order of `skills`; a numbered list wraps the others: their
    sentences (and its own when there are fewer than two) become list items. Unknown skill names raise KeyError
    with the name."""
    for s in skills:
        if s not in CATALOGUE:
            raise KeyError(f"skill {s!r} is not in the catalogue")
    parts = [CATALOGUE[s].grammar(topic, rng) for s in skills if not CATALOGUE[s].wraps]
    if "numbered_list" in skills:
        while len(parts) < 2:
            parts.append(CATALOGUE["numbered_list"].grammar(topic, rng))
        return "\n".join(f"{i + 1}. {p}" for i, p in enumerate(parts))
    return " ".join(parts)


def mentions(text: str, topic: str) -> bool:
    """The topic word (or its singular) appears."""
    t = topic.lower()
    forms = {t, t[:-1]} if t.endswith("s") else {t}
    return any(re.search(rf"(?i)\b{re.escape(f)}\b", text) for f in forms)


def sample_tuples(skills: Sequence[str], k: int, n: int, rng: random.Random) -> list[tuple[str, ...]]:
    """n random k-subsets of `skills` (without replacement within a subset), in random order."""
    if k > len(skills):
        raise ValueError(f"skill-mix: k={k} exceeds the {len(skills)} skills available")
    return [tuple(rng.sample(list(skills), k)) for _ in range(n)]


def build_examples(skills: Sequence[str], ks: Sequence[int], n: int, topics: Sequence[str], seed: int = 0,
                   check: bool = True) -> list[dict]:
    """n training examples {prompt, text, skills, topic, k}, k drawn uniformly from `ks`. With check=True every
    text is verified by the checkers (a grammar bug would raise), the rejection step of LLM-written data."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice(list(ks))
        sk = tuple(rng.sample(list(skills), k))
        topic = rng.choice(list(topics))
        text = compose(sk, topic, rng)
        if check:
            failed = [s for s in sk if CATALOGUE[s].checker is not None and not CATALOGUE[s].checker(text)]
            if failed or not mentions(text, topic):
                raise AssertionError(f"grammar text fails {failed or 'topic'}: {text!r}")
        out.append({"prompt": prompt(sk, topic), "text": text, "skills": sk, "topic": topic, "k": k})
    return out


class PieceTokenizer:
    """A closed-vocabulary tokenizer for grammar texts: pieces are words, single punctuation marks and line
    breaks, each with or without one leading space, so decode(encode(x)) == x for any text made of known pieces
    separated by single spaces or newlines. Built from example texts; an unknown piece raises KeyError naming it.
    Ids: 0 = PAD, 1 = EOS, then the pieces in sorted order."""

    PIECE = re.compile(r" ?(?:[A-Za-z']+|[0-9]+|\n|[^\sA-Za-z0-9])")

    def __init__(self, texts: Sequence[str]):
        pieces = sorted({p for t in texts for p in self.PIECE.findall(t)})
        self.itos = ["<pad>", "<eos>"] + pieces
        self.stoi = {p: i for i, p in enumerate(self.itos)}
        self.pad_id, self.eos_id = 0, 1
        self.vocab_size = len(self.itos)

    def encode(self, text: str) -> list[int]:
        ids, pos = [], 0
        for m in self.PIECE.finditer(text):
            if m.start() != pos:
                raise KeyError(f"piece tokenizer: unexpected text {text[pos:m.start()]!r}")
            p = m.group(0)
            if p not in self.stoi:
                raise KeyError(f"piece tokenizer: unknown piece {p!r}")
            ids.append(self.stoi[p])
            pos = m.end()
        if pos != len(text):
            raise KeyError(f"piece tokenizer: unexpected text {text[pos:]!r}")
        return ids

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in ids if i > 1)


def grammar_tokenizer(seed: int = 0, n: int = 4000) -> PieceTokenizer:
    """A PieceTokenizer that covers every grammar text and prompt: built from n random examples over every
    skill and k, and from one prompt per skill and topic."""
    ex = build_examples(list(CATALOGUE), [1, 2, 3, 4, 5], n, TOPICS, seed=seed, check=False)
    extra = [prompt([s], t) + "\n" for s in CATALOGUE for t in TOPICS]
    return PieceTokenizer([e["prompt"] + "\n" + e["text"] for e in ex] + extra)
