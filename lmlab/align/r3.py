"""R³: reverse-curriculum RL from outcome supervision (Xi et al. 2024, "Training Large Language Models for
Reasoning through Reverse Curriculum Reinforcement Learning", arXiv:2402.05808; authors' code
github.com/WooooDyy/LLM-Reverse-Curriculum-RL, R3_math/main.py and the *_mix_example.json data).

Given a correct demonstration with T steps s_1 … s_T, the start state with j given steps is
    prompt_j = x ⊕ s_1 ⊕ … ⊕ s_j,   the policy generates s_{j+1} … s_T,   j = 0 … T−1
(j = T would leave nothing to do; the released mixed data never puts the whole chain in the prompt). Stage
k = 1 … T uses j = T − k: stage 1 starts one step before the end, stage T is the original problem, so the
start state slides from the demonstration's end toward its beginning.
Schedules:
    staged   equal blocks of iterations per stage, stage 1 → T (the curriculum of the paper's §3)
    mixed    every stage at once: each start state is drawn uniformly over j = 0 … T−1 (the paper's mixed-stage
             training, its default, used to avoid overfitting to one stage; the released *_mix data mixes
             start states of all stages in one shuffled set)
Reward: outcome only. The authors' code (R3_math/main.py, `rollout`) gives 1 for a correct final answer, 0.2
for an answer that can be extracted but is wrong, and 0 when none can be extracted; `outcome_reward` uses that
partial value by default (`partial=0` gives the strict 0/1 reward). The paper trains with PPO (GAE, KL to the
SFT model); `r3_train` runs any algorithm of lmlab.align.ppo.rl_train (PPO / RLOO / GRPO). One iteration's
rollouts share one start-state length (the cached sampler needs prompts of one length), so "mixed" draws j
per iteration; over a run every stage is mixed in.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence

import torch

SCHEDULES = ("staged", "mixed", "none")


def start_state(prompt: Sequence[int], steps: Sequence[Sequence[int]], j: int) -> tuple[list[int], list[int]]:
    """(prompt with the first j demonstration steps appended, the remaining steps as the target tokens)."""
    if not 0 <= j < len(steps):
        raise ValueError(f"start_state: j={j} outside 0..{len(steps) - 1}")
    given = [t for s in steps[:j] for t in s]
    rest = [t for s in steps[j:] for t in s]
    return list(prompt) + given, rest


def stage_to_j(stage: int, n_steps: int) -> int:
    """Stage k (1 = the last step only, n_steps = the whole problem) -> j = n_steps − k given steps."""
    if not 1 <= stage <= n_steps:
        raise ValueError(f"stage={stage} outside 1..{n_steps}")
    return n_steps - stage


def staged_schedule(iterations: int, n_steps: int) -> list[int]:
    """j per iteration for the staged curriculum: n_steps equal blocks (the remainder goes to the last stage),
    j = n_steps − 1, n_steps − 2, …, 0."""
    if iterations < 1:
        raise ValueError("staged_schedule: iterations >= 1")
    per = iterations // n_steps
    out = []
    for k in range(1, n_steps + 1):
        out += [stage_to_j(k, n_steps)] * (per if k < n_steps else iterations - per * (n_steps - 1))
    return out


def mixed_schedule(iterations: int, n_steps: int, rng: random.Random) -> list[int]:
    """j per iteration for mixed-stage training: uniform over 0 … n_steps − 1."""
    return [rng.randrange(n_steps) for _ in range(iterations)]


def schedule(kind: Literal["staged", "mixed", "none"], iterations: int, n_steps: int,
             rng: Optional[random.Random] = None) -> list[int]:
    """j per iteration: "staged", "mixed" (R³) or "none" (outcome-only RL from the start: j = 0 always)."""
    if kind == "staged":
        return staged_schedule(iterations, n_steps)
    if kind == "mixed":
        return mixed_schedule(iterations, n_steps, rng or random.Random(0))
    if kind == "none":
        return [0] * iterations
    raise ValueError(f"schedule={kind!r}: allowed {', '.join(SCHEDULES)}")


def outcome_reward(correct: torch.Tensor, well_formed: torch.Tensor, partial: float = 0.2) -> torch.Tensor:
    """1 if correct, `partial` if an answer was extracted but is wrong, else 0 (the authors' R3_math rule)."""
    c, w = correct.bool(), well_formed.bool()
    return torch.where(c, torch.ones_like(correct, dtype=torch.float64),
                       torch.where(w, torch.full_like(correct, partial, dtype=torch.float64),
                                   torch.zeros_like(correct, dtype=torch.float64)))


@dataclass
class Demo:
    """A problem's prompt tokens, its correct demonstration steps, and a grader of a generated continuation:
    grade(response tokens) -> (correct, well_formed)."""

    prompt: list[int]
    steps: list[list[int]]
    grade: Callable[[Sequence[int]], tuple[bool, bool]]


def r3_train(policy, ref, demos: Sequence[Demo], rl_cfg, kind: Literal["staged", "mixed", "none"] = "mixed",
             partial: float = 0.2, log: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """RL on start states of `demos` following the schedule `kind` with lmlab.align.ppo.rl_train (`rl_cfg`:
    an RLConfig; its iterations set the schedule's length). Every demo must have the same number of steps and
    equal-length prompts and steps (so one iteration's start states share a length). Returns rl_train's
    history with the iteration's j added."""
    from lmlab.align.ppo import rl_train

    n_steps = len(demos[0].steps)
    if any(len(d.steps) != n_steps for d in demos):
        raise ValueError("r3_train: every demonstration needs the same number of steps")
    js = schedule(kind, rl_cfg.iterations, n_steps, random.Random(rl_cfg.seed))
    pick = random.Random(rl_cfg.seed + 1)
    it = {"i": 0}
    live: dict = {}

    def prompt_fn(n, g):
        j = js[min(it["i"], len(js) - 1)]
        it["i"] += 1
        rows = []
        for _ in range(n):
            d = demos[pick.randrange(len(demos))]
            p, _ = start_state(d.prompt, d.steps, j)
            live[tuple(p)] = d
            rows.append(p)
        if len({len(r) for r in rows}) != 1:
            raise ValueError("r3_train: start states of one iteration differ in length")
        return torch.tensor(rows)

    def reward_fn(prompts, responses):
        cs, ws = [], []
        for p, y in zip(prompts.tolist(), responses.tolist()):
            c, w = live[tuple(p)].grade(y)
            cs.append(c)
            ws.append(w)
        return outcome_reward(torch.tensor(cs), torch.tensor(ws), partial).float()

    hist = rl_train(policy, ref, prompt_fn, reward_fn, rl_cfg, log=log)
    for h, j in zip(hist, js):
        h["j"] = j
    return hist
