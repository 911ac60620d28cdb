"""Verifiable synthetic tasks with exact checkers, and a synthetic preference world with a hidden gold reward.

Tasks (text in, text out; `check` is exact):
    arithmetic   "Compute 3417+268=" -> "3685"
    countdown    "Use 3 7 25 50 to make 82 with + - * and each number at most once:" -> "50+25+7"
    sorting      "Sort: 9 3 7 1" -> "1 3 7 9"
Each task: sample(rng) -> Problem(prompt, answer, meta); check(problem, response) -> reward in {0, 1}.

Preference world (Gao et al. 2022 style: a gold reward the RM never sees, so overoptimisation and reward
hacking are measurable). Tokens 0 = BOS, 1 = EOS, 2.. = content. A prompt is one token x; a response y is a
sequence of content tokens. Gold reward r*(x, y) = mean_t W[x, y_t] with W hidden (a length-free quality).
`shared` ∈ [0, 1] mixes in a prompt-independent part of W (so held-out prompts are learnable).
Annotators prefer a over a′ with probability σ(s·(r*(a) − r*(a′)) + α·(|a| − |a′|)): s sets label noise,
α > 0 adds a spurious length preference.
"""
from __future__ import annotations

import ast
import operator
import random
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


@dataclass
class Problem:
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)


class ArithmeticTask:
    name = "arithmetic"

    def __init__(self, digits: int = 3, ops: str = "+-*"):
        self.digits, self.ops = digits, ops

    def sample(self, rng: random.Random) -> Problem:
        a, b = (rng.randrange(10 ** (self.digits - 1), 10 ** self.digits) for _ in range(2))
        op = rng.choice(self.ops)
        val = {"+": a + b, "-": a - b, "*": a * b}[op]
        return Problem(f"Compute {a}{op}{b}=", str(val), {"a": a, "b": b, "op": op})

    def check(self, problem: Problem, response: str) -> float:
        return float(response.strip().split("\n")[0].strip() == problem.answer)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _eval_expr(text: str) -> tuple[int, list[int]]:
    """Evaluate + - * over integers only; returns (value, the integer literals used)."""
    tree = ast.parse(text.strip(), mode="eval")
    used: list[int] = []

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            used.append(node.value)
            return node.value
        raise ValueError("only integers and + - * are allowed")

    return ev(tree), used


class CountdownTask:
    name = "countdown"

    def __init__(self, n_numbers: int = 4, pool: tuple = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 25, 50, 75, 100)):
        self.n, self.pool = n_numbers, pool

    def sample(self, rng: random.Random) -> Problem:
        nums = [rng.choice(self.pool) for _ in range(self.n)]
        # target from a random solvable expression over a random subset, so every problem has a solution
        k = rng.randint(2, self.n)
        pick = rng.sample(nums, k)
        expr = str(pick[0])
        for x in pick[1:]:
            expr = f"{expr}{rng.choice('+-*')}{x}"
        target, _ = _eval_expr(expr)
        return Problem(f"Use {' '.join(map(str, nums))} to make {target} with + - * and each number at most once:",
                       expr, {"numbers": nums, "target": target})

    def check(self, problem: Problem, response: str) -> float:
        try:
            val, used = _eval_expr(response.strip().split("\n")[0])
        except (SyntaxError, ValueError, RecursionError):
            return 0.0
        pool = list(problem.meta["numbers"])
        for u in used:
            if u not in pool:
                return 0.0
            pool.remove(u)
        return float(val == problem.meta["target"])


class SortingTask:
    name = "sorting"

    def __init__(self, n: int = 5, hi: int = 9):
        self.n, self.hi = n, hi

    def sample(self, rng: random.Random) -> Problem:
        xs = [rng.randint(0, self.hi) for _ in range(self.n)]
        return Problem(f"Sort: {' '.join(map(str, xs))}\n", " ".join(map(str, sorted(xs))), {"xs": xs})

    def check(self, problem: Problem, response: str) -> float:
        return float(" ".join(response.strip().split("\n")[0].split()) == problem.answer)


TASKS = {"arithmetic": ArithmeticTask, "countdown": CountdownTask, "sorting": SortingTask}


def make_task(name: str, **kw):
    if name not in TASKS:
        raise ValueError(f"task={name!r}: allowed {', '.join(TASKS)}")
    return TASKS[name](**kw)


# ------------------------------------------------------------------------------- preference world
BOS, EOS = 0, 1


class PreferenceWorld:
    """Hidden gold reward over token sequences plus noisy, optionally length-biased annotators."""

    def __init__(self, n_prompts: int = 8, n_content: int = 14, min_len: int = 2, max_len: int = 12,
                 label_scale: float = 4.0, length_bias: float = 0.0, shared: float = 0.0, seed: int = 0):
        g = np.random.default_rng(seed)
        self.n_prompts, self.n_content = n_prompts, n_content
        self.min_len, self.max_len = min_len, max_len
        self.label_scale, self.length_bias = label_scale, length_bias
        self.vocab_size = 2 + n_prompts + n_content
        self.W = g.normal(size=(n_prompts, n_content))           # hidden gold weights
        if shared:   # a prompt-independent part, so what is learnt on some prompts transfers to others
            self.W = shared * g.normal(size=(1, n_content)) + (1 - shared) * self.W

    # token layout: [BOS] [prompt token] [content tokens...] [EOS]
    def prompt_token(self, x: int) -> int:
        return 2 + x

    def content_offset(self) -> int:
        return 2 + self.n_prompts

    def gold(self, x: int, content: list[int]) -> float:
        if not content:
            return 0.0
        return float(self.W[x, np.asarray(content)].mean())

    def gold_tokens(self, prompt_tokens: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """Gold reward of generated token rows. prompt_tokens (b, 2) = [BOS, x]; responses (b, t).
        Tokens after the first EOS are ignored; non-content tokens score 0."""
        W = torch.as_tensor(self.W, dtype=torch.float32)
        x = prompt_tokens[:, -1] - 2
        c = responses - self.content_offset()
        valid = (c >= 0) & (c < self.n_content)
        eos = (responses == EOS).long()
        alive = ((eos.cumsum(1) - eos) == 0) & (responses != EOS)
        w = W[x[:, None].clamp(0, self.n_prompts - 1), c.clamp(0, self.n_content - 1)] * (valid & alive)
        n = alive.sum(1).clamp(min=1)
        return w.sum(1) / n

    def sample_response(self, rng: np.random.Generator) -> list[int]:
        L = int(rng.integers(self.min_len, self.max_len + 1))
        return [int(t) for t in rng.integers(0, self.n_content, size=L)]

    def encode(self, x: int, content: list[int]) -> list[int]:
        off = self.content_offset()
        return [BOS, self.prompt_token(x)] + [off + c for c in content] + [EOS]

    def label_prob(self, x: int, a: list[int], b: list[int]) -> float:
        z = self.label_scale * (self.gold(x, a) - self.gold(x, b)) + self.length_bias * (len(a) - len(b))
        return float(1 / (1 + np.exp(-z)))

    def preference_pairs(self, n: int, seed: int, annotated: bool = True, prompts: Optional[list[int]] = None):
        """n pairs -> (chosen_ids, rejected_ids, info). annotated=False labels by the gold reward itself
        (noise-free, no length bias): use it for held-out gold accuracy."""
        rng = np.random.default_rng(seed)
        chosen, rejected, info = [], [], []
        for _ in range(n):
            x = int(rng.integers(self.n_prompts)) if prompts is None else int(prompts[rng.integers(len(prompts))])
            a, b = self.sample_response(rng), self.sample_response(rng)
            if annotated:
                first = rng.random() < self.label_prob(x, a, b)
            else:
                first = self.gold(x, a) >= self.gold(x, b)
            c, r = (a, b) if first else (b, a)
            chosen.append(self.encode(x, c))
            rejected.append(self.encode(x, r))
            info.append({"x": x, "gold_c": self.gold(x, c), "gold_r": self.gold(x, r),
                         "len_c": len(c), "len_r": len(r)})
        return chosen, rejected, info
