"""Multi-step arithmetic chains with written steps: the demonstrations R³ slides its start states over
(lmlab.align.r3).

A chain: a start value a_0 and T operations (op_i, d_i); v_i = (v_{i−1} op_i d_i) mod m. Token form (a small
vocabulary a tiny policy can learn):
    prompt          [BOS, a_0, op_1, d_1, …, op_T, d_T, SEP]
    demonstration   steps s_1 … s_T with s_i = [v_i, STEP] for i < T and s_T = [ANS, v_T, EOS]
Text form (`ChainProblem.text`, for reading and for byte-level models): "Start 3; +4; *2. Steps:" with steps
"7;", "4;", "Answer: 4". `outcome(problem, response)` grades only the final answer (the token after the last
ANS), as outcome supervision does; it also says whether an answer could be extracted at all (R³'s partial
reward for a well-formed but wrong answer needs that).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

BOS, EOS, SEP, STEP, ANS = 0, 1, 2, 3, 4
OP_TOKENS = {"+": 5, "-": 6, "*": 7}
DIGIT0 = 8                       # digits 0..m−1 are tokens DIGIT0 … DIGIT0 + m − 1


@dataclass
class ChainProblem:
    start: int
    ops: list[tuple[str, int]]   # (op, operand)
    values: list[int]            # v_1 … v_T
    modulus: int

    @property
    def answer(self) -> int:
        return self.values[-1]

    def prompt_tokens(self) -> list[int]:
        out = [BOS, DIGIT0 + self.start]
        for op, d in self.ops:
            out += [OP_TOKENS[op], DIGIT0 + d]
        return out + [SEP]

    def steps(self) -> list[list[int]]:
        """The demonstration, one token list per step (the last one carries the answer and EOS)."""
        s = [[DIGIT0 + v, STEP] for v in self.values[:-1]]
        return s + [[ANS, DIGIT0 + self.values[-1], EOS]]

    def text(self) -> tuple[str, list[str]]:
        """(prompt, steps) as text."""
        prompt = f"Start {self.start}; " + "; ".join(f"{op}{d}" for op, d in self.ops) + f" (mod {self.modulus})." \
            " Steps:"
        return prompt, [f"{v};" for v in self.values[:-1]] + [f"Answer: {self.values[-1]}"]


class ChainTask:
    """Random chains of `n_steps` operations from `ops` with operands 0..max_operand, values mod `modulus`."""

    name = "chains"

    def __init__(self, n_steps: int = 4, ops: str = "+", max_operand: int = 4, modulus: int = 10,
                 min_operand: int = 1):
        if not ops or any(o not in OP_TOKENS for o in ops):
            raise ValueError(f"ChainTask: ops={ops!r}: use a subset of {''.join(OP_TOKENS)}")
        if n_steps < 1 or modulus < 2 or not 0 <= min_operand <= max_operand < modulus:
            raise ValueError(f"ChainTask: need n_steps >= 1, modulus >= 2, 0 <= min_operand <= max_operand < "
                             f"modulus (got {n_steps}, {modulus}, {min_operand}, {max_operand})")
        self.n_steps, self.ops, self.max_operand, self.modulus = n_steps, ops, max_operand, modulus
        self.min_operand = min_operand

    @property
    def vocab_size(self) -> int:
        return DIGIT0 + self.modulus

    def sample(self, rng: random.Random) -> ChainProblem:
        a = rng.randrange(self.modulus)
        ops, vals, v = [], [], a
        for _ in range(self.n_steps):
            op, d = rng.choice(self.ops), rng.randint(self.min_operand, self.max_operand)
            v = {"+": v + d, "-": v - d, "*": v * d}[op] % self.modulus
            ops.append((op, d))
            vals.append(v)
        return ChainProblem(a, ops, vals, self.modulus)


def extract_answer(response: Sequence[int], modulus: int) -> Optional[int]:
    """The digit after the last ANS token before the first EOS, or None (no ANS, or ANS not followed by a
    digit)."""
    resp = list(response)
    if EOS in resp:
        resp = resp[:resp.index(EOS)]
    idx = [i for i, t in enumerate(resp) if t == ANS]
    if not idx or idx[-1] + 1 >= len(resp):
        return None
    t = resp[idx[-1] + 1]
    return t - DIGIT0 if DIGIT0 <= t < DIGIT0 + modulus else None


def outcome(problem: ChainProblem, response: Sequence[int]) -> tuple[bool, bool]:
    """(correct, well_formed): well_formed when an answer can be extracted at all."""
    a = extract_answer(response, problem.modulus)
    return a == problem.answer, a is not None
