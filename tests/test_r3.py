"""R³: start states, staged/mixed schedules, the outcome reward (float64 hand values), chains and their grader."""
import random

import pytest
import torch

from lmlab.align.chains import ANS, BOS, DIGIT0, EOS, SEP, STEP, ChainProblem, ChainTask, extract_answer, outcome
from lmlab.align.r3 import (Demo, outcome_reward, r3_train, schedule, stage_to_j, staged_schedule, start_state)

D = DIGIT0


def test_chain_problem_tokens_steps_and_text():
    p = ChainProblem(3, [("+", 4), ("*", 2)], [7, 4], 10)
    assert p.prompt_tokens() == [BOS, D + 3, 5, D + 4, 7, D + 2, SEP]
    assert p.steps() == [[D + 7, STEP], [ANS, D + 4, EOS]]
    assert p.text() == ("Start 3; +4; *2 (mod 10). Steps:", ["7;", "Answer: 4"])
    t = ChainTask(n_steps=5, ops="+-*", max_operand=9, min_operand=0)
    for q in (t.sample(random.Random(s)) for s in range(20)):
        v = q.start
        for (op, d), got in zip(q.ops, q.values):
            v = {"+": v + d, "-": v - d, "*": v * d}[op] % 10
            assert got == v
    with pytest.raises(ValueError, match="ops"):
        ChainTask(ops="/")


def test_extract_answer_adversarial_responses():
    assert extract_answer([D + 7, STEP, ANS, D + 4, EOS], 10) == 4
    assert extract_answer([ANS, D + 1, STEP, ANS, D + 2], 10) == 2          # the last ANS counts
    assert extract_answer([D + 7, STEP, D + 4, EOS], 10) is None             # no ANS
    assert extract_answer([D + 7, ANS], 10) is None                          # ANS at the very end
    assert extract_answer([ANS, STEP, D + 3], 10) is None                    # ANS not followed by a digit
    assert extract_answer([D + 1, EOS, ANS, D + 4], 10) is None              # after EOS does not count
    p = ChainProblem(3, [("+", 4), ("*", 2)], [7, 4], 10)
    assert outcome(p, [D + 9, STEP, ANS, D + 4, EOS]) == (True, True)       # outcome only: wrong step, right answer
    assert outcome(p, [ANS, D + 5, EOS]) == (False, True)
    assert outcome(p, [STEP, STEP]) == (False, False)


def test_start_states_slide_from_the_end():
    prompt, steps = [BOS, SEP], [[10, STEP], [11, STEP], [ANS, 12, EOS]]
    assert start_state(prompt, steps, 0) == ([BOS, SEP], [10, STEP, 11, STEP, ANS, 12, EOS])
    assert start_state(prompt, steps, 2) == ([BOS, SEP, 10, STEP, 11, STEP], [ANS, 12, EOS])
    with pytest.raises(ValueError, match="j=3"):
        start_state(prompt, steps, 3)
    assert [stage_to_j(k, 3) for k in (1, 2, 3)] == [2, 1, 0]


def test_schedules():
    assert staged_schedule(10, 4) == [3, 3, 2, 2, 1, 1, 0, 0, 0, 0]
    assert schedule("none", 5, 4) == [0] * 5
    m = schedule("mixed", 400, 4, random.Random(0))
    assert set(m) == {0, 1, 2, 3} and all(abs(m.count(j) / 400 - 0.25) < 0.07 for j in range(4))
    with pytest.raises(ValueError, match="schedule='reverse'"):
        schedule("reverse", 5, 4)


def test_outcome_reward_hand_values():
    c = torch.tensor([True, False, False, True])
    w = torch.tensor([True, True, False, False])
    assert torch.equal(outcome_reward(c, w), torch.tensor([1.0, 0.2, 0.0, 1.0], dtype=torch.float64))
    assert torch.equal(outcome_reward(c, w, partial=0.0), torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64))


def test_r3_train_follows_the_staged_schedule():
    from lmlab.align.ppo import RLConfig
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    task = ChainTask(n_steps=2)
    rng = random.Random(0)
    probs = [task.sample(rng) for _ in range(8)]
    demos = [Demo(p.prompt_tokens(), p.steps(), (lambda q: lambda y: outcome(q, y))(p)) for p in probs]
    torch.manual_seed(0)
    pol = Decoder(ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layer=1, n_head=2, max_seq_len=16))
    ref = Decoder(ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layer=1, n_head=2, max_seq_len=16))
    cfg = RLConfig(algo="rloo", iterations=4, prompts_per_iter=4, samples_per_prompt=2, max_new_tokens=5,
                   eos_id=EOS, ppo_epochs=1, minibatches=1)
    hist = r3_train(pol, ref, demos, cfg, kind="staged")
    assert [h["j"] for h in hist] == [1, 1, 0, 0]
    assert all(0.0 <= h["reward"] <= 1.0 for h in hist)
