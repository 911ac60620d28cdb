"""CGPO: calibrated reward, CRPG / CODPO / CRRAFT against float64 hand values, the multi-task loop on a bandit,
and the `lmlab align cgpo` stage."""
import json
import math
import subprocess
import sys

import pytest
import torch

from lmlab.align.cgpo import (CGPOConfig, CGPOTask, calibrated_reward, cgpo_train, codpo_loss, codpo_pairs,
                              crpg_loss, crpg_rewards, crraft_loss, crraft_select)

D = torch.float64


def sig(z):
    return 1 / (1 + math.exp(-z))


def test_calibrated_reward_hand_values():
    got = calibrated_reward(torch.tensor([1.0, 0.0, -0.5], dtype=D), torch.tensor([0.0, 2.0, -0.5], dtype=D))
    assert torch.allclose(got, torch.tensor([sig(1.0), sig(-2.0), 0.5], dtype=D), atol=1e-15)


def test_crpg_rewards_only_passing_samples_get_the_calibrated_reward():
    calib = torch.tensor([0.7, 0.4, 0.9, 0.2], dtype=D)
    passed = torch.tensor([True, False, True, True])
    kl = torch.tensor([0.1, 0.2, 0.0, 0.5], dtype=D)
    r = crpg_rewards(calib, passed, kl, kl_coef=0.1)
    # 0.7 − 0.01, 0 − 0.02 (violating: no calibrated reward), 0.9 − 0, 0.2 − 0.05
    assert torch.allclose(r, torch.tensor([0.69, -0.02, 0.9, 0.15], dtype=D), atol=1e-15)
    assert torch.allclose(crpg_rewards(calib, passed), torch.tensor([0.7, 0.0, 0.9, 0.2], dtype=D))


def test_crpg_loss_and_gradient_hand_values():
    R = torch.tensor([0.69, -0.02, 0.9, 0.15], dtype=D)
    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0], dtype=D, requires_grad=True)
    loss = crpg_loss(lp, R, k=2, baseline="none")
    # −(0.69·−1 + −0.02·−2 + 0.9·−3 + 0.15·−4)/4 = 3.95/4
    assert abs(loss.item() - 0.9875) < 1e-14
    loss.backward()
    assert torch.allclose(lp.grad, -R / 4, atol=1e-15)
    # mean baseline per prompt: [0.69, −0.02] − 0.335 = ±0.355; [0.9, 0.15] − 0.525 = ±0.375
    loss_b = crpg_loss(lp.detach(), R, k=2, baseline="mean")
    assert abs(loss_b.item() - (-(0.355 * -1 - 0.355 * -2 + 0.375 * -3 - 0.375 * -4) / 4)) < 1e-14
    with pytest.raises(ValueError, match="baseline"):
        crpg_loss(lp, R, baseline="median")


def test_codpo_pairs_best_passing_vs_worst_violating():
    rewards = torch.tensor([[3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 1.0, 1.0]], dtype=D)
    passed = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1], [0, 1, 0, 1]]).bool()
    # prompt 1 has no violating sample: no pair; prompt 2: passing {1: 5, 3: 1}, violating {0: 5, 2: 1}
    assert codpo_pairs(rewards, passed) == [(0, 0, 3), (2, 1, 2)]
    assert codpo_pairs(rewards, torch.zeros(3, 4, dtype=torch.bool)) == []


def test_codpo_loss_hand_value():
    t = lambda *v: torch.tensor(v, dtype=D)  # noqa: E731
    loss = codpo_loss(t(-2.0, -1.0), t(-3.0, -1.0), t(-2.5, -1.0), t(-2.5, -2.0), t(4.0, 2.0), beta=0.5, nll_coef=1.0)
    # pair 1: margin 0.5·((−2 + 2.5) − (−3 + 2.5)) = 0.5; NLL term −(−2)/4 = 0.5
    # pair 2: margin 0.5·((−1 + 1) − (−1 + 2)) = −0.5; NLL term −(−1)/2 = 0.5
    want = ((-math.log(sig(0.5)) + 0.5) + (-math.log(sig(-0.5)) + 0.5)) / 2
    assert abs(loss.item() - want) < 1e-14


def test_crraft_select_and_loss_hand_values():
    rewards = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 0.0], [2.0, 2.0, 1.0]], dtype=D)
    passed = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1]]).bool()
    assert crraft_select(rewards, passed) == [(0, 2), (2, 0)]   # the violating 3.0 is never chosen; ties: first
    loss = crraft_loss(torch.tensor([-3.0, -1.0], dtype=D), torch.tensor([3, 2]), torch.tensor([0.6, 0.2], dtype=D))
    assert abs(loss.item() - 0.35) < 1e-15                       # −(0.6·−1 + 0.2·−0.5)/2


def _bandit_task(good: int, bad: int):
    """One-token bandit over 6 tokens: the RM likes `bad` most, the judge only passes `good`."""
    def prompt_fn(n, g):
        return torch.zeros(n, 1, dtype=torch.long)

    def reward_fn(p, y):
        return (y[:, 0] == bad).double() * 2.0 + (y[:, 0] == good).double()

    def judge_fn(p, y):
        return y[:, 0] == good

    return CGPOTask("bandit", prompt_fn, reward_fn, lambda p: torch.zeros(len(p)), judge_fn, kl_coef=0.0,
                    max_new_tokens=1)


@pytest.mark.parametrize("opt", ["crpg", "codpo", "crraft"])
def test_cgpo_train_moves_mass_to_judge_passing_tokens(opt):
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    torch.manual_seed(0)
    pol = Decoder(ModelConfig(vocab_size=6, d_model=16, n_layer=1, n_head=2, max_seq_len=4))
    ref = Decoder(ModelConfig(vocab_size=6, d_model=16, n_layer=1, n_head=2, max_seq_len=4))
    ref.load_state_dict(pol.state_dict())
    hist = cgpo_train(pol, ref, [_bandit_task(good=2, bad=3)],
                      CGPOConfig(optimizer=opt, iterations=25, prompts_per_iter=8, samples_per_prompt=4, lr=3e-2,
                                 seed=0))
    first, last = hist[0]["bandit/violation_rate"], hist[-1]["bandit/violation_rate"]
    assert first > 0.6 and last < 0.3, (first, last)


def test_cgpo_train_rejects_bad_optimizer():
    with pytest.raises(ValueError, match="optimizer='ppo'"):
        cgpo_train(None, torch.nn.Linear(1, 1), [_bandit_task(1, 2)], CGPOConfig(optimizer="ppo"))


def test_align_cgpo_stage_runs_and_rejects_bad_keys(tmp_path):
    base = [sys.executable, "-m", "lmlab.cli", "align", "cgpo"]
    args = ["cgpo.iterations=2", "cgpo.prompts_per_iter=2", "cgpo.optimizer=crraft", f"out_dir={tmp_path}",
            "tensorboard=false", "model.d_model=16", "model.n_layer=1", "model.max_seq_len=96",
            "--config", "configs/align/cgpo.yaml"]
    r = subprocess.run(base + args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["stage"] == "cgpo" and s["optimizer"] == "crraft" and s["tasks"] == ["sorting", "arithmetic"]
    assert "arithmetic/violation_rate" in s["final"] and (tmp_path / "model.safetensors").exists()
    bad = subprocess.run(base + ["cgpo.optimizer=ppo", "--config", "configs/align/cgpo.yaml"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "cgpo.optimizer" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
