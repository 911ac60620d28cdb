"""Loss functions of lmlab.align against hand-computed values, closed forms, and TRL (when installed)."""
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lmlab.align.dpo import dpo_loss, naive_dpo_sigmoid
from lmlab.align.ppo import (AdaptiveKLController, contrastive_rewards, gae, grpo_advantages, kl_shaped_rewards,
                             naive_gae, ppo_policy_loss, rloo_advantages, value_loss)
from lmlab.align.reward import bt_loss, ids_closed_form, ids_update, odin_loss, pearson

D = torch.float64


def sig(x):
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------------------------------ DPO
def test_dpo_sigmoid_hand_value():
    # Δ = (−1 − −2) − (−3 − −2.5) = 1.5 ; loss = −log σ(0.1·1.5) = log(1 + e^{−0.15})
    pc, pr, rc, rr = (torch.tensor([v], dtype=D) for v in (-1.0, -3.0, -2.0, -2.5))
    loss, st = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.15)), abs=1e-12)
    assert loss.item() == pytest.approx(naive_dpo_sigmoid(-1, -3, -2, -2.5, 0.1), abs=1e-12)
    assert st["rewards/chosen"].item() == pytest.approx(0.1) and st["rewards/rejected"].item() == pytest.approx(-0.05)


def test_dpo_hinge_ipo_hand_values():
    pc, pr, rc, rr = (torch.tensor([v], dtype=D) for v in (-1.0, -3.0, -2.0, -2.5))
    hinge, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="hinge")
    assert hinge.item() == pytest.approx(max(0.0, 1 - 0.5 * 1.5))
    # IPO: chosen ratio 1 over 2 tokens, rejected ratio −0.5 over 4 tokens -> Δ̄ = 0.5 + 0.125; (Δ̄ − 1/(2β))²
    ipo, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo", chosen_len=torch.tensor([2.0], dtype=D),
                      rejected_len=torch.tensor([4.0], dtype=D))
    assert ipo.item() == pytest.approx((0.625 - 1.0) ** 2)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="nope")


def test_dpo_gradient_matches_closed_form():
    # d/dπ_c of −log σ(βΔ) = −β·σ(−βΔ)
    pc = torch.tensor([-1.0], dtype=D, requires_grad=True)
    loss, _ = dpo_loss(pc, torch.tensor([-3.0], dtype=D), torch.tensor([-2.0], dtype=D), torch.tensor([-2.5], dtype=D), 0.1)
    loss.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.1 * sig(-0.15), abs=1e-12)


class _FakeAccel:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _trl_dpo_loss(loss_type, beta, per_token_logps, completion_mask, ref_c, ref_r):
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer", reason="trl not installed (optional oracle)")
    b2, t = completion_mask.shape
    out = SimpleNamespace(log_probs=per_token_logps, entropy=torch.zeros(b2, t - 1, dtype=D),
                          mean_logits=torch.zeros(b2, t - 1, dtype=D), is_top1=torch.zeros(b2, t - 1, dtype=torch.bool))
    fake = SimpleNamespace(model=SimpleNamespace(training=False), accelerator=_FakeAccel(), aux_loss_enabled=False,
                           ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                           loss_types=[loss_type], loss_weights=[1.0], beta=beta, use_weighting=False,
                           _metrics={"eval": defaultdict(list), "train": defaultdict(list)}, _total_train_tokens=0,
                           _tp_size=1)
    inputs = {"input_ids": torch.zeros(b2, t, dtype=torch.long), "attention_mask": torch.ones(b2, t, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    return trl_dpo.DPOTrainer._compute_loss(fake, lambda **kw: out, inputs, False)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_equals_trl(loss_type):
    g = torch.Generator().manual_seed(0)
    b, t = 3, 7
    cm = torch.zeros(2 * b, t, dtype=torch.long)
    for i, start in enumerate([2, 3, 1, 4, 2, 5]):
        cm[i, start:] = 1
    ptl = -torch.rand(2 * b, t - 1, generator=g, dtype=D) * 3 * cm[:, 1:]       # per-token log-probs, 0 off-mask
    ref_c, ref_r = -torch.rand(b, generator=g, dtype=D) * 5, -torch.rand(b, generator=g, dtype=D) * 5
    trl_loss = _trl_dpo_loss(loss_type, 0.3, ptl, cm, ref_c, ref_r)
    logps = ptl.sum(1)
    lens = cm[:, 1:].sum(1).to(D)
    ours, _ = dpo_loss(logps[:b], logps[b:], ref_c, ref_r, beta=0.3, loss_type=loss_type,
                       chosen_len=lens[:b], rejected_len=lens[b:])
    assert ours.mean().item() == pytest.approx(trl_loss.item(), abs=1e-10)


# ------------------------------------------------------------------------------------------------ RM
def test_bt_loss_hand_values():
    rc, rr = torch.tensor([2.0, 0.0], dtype=D), torch.tensor([1.0, 0.5], dtype=D)
    assert bt_loss(rc, rr).tolist() == pytest.approx([-math.log(sig(1.0)), -math.log(sig(-0.5))], abs=1e-12)
    # soft label y = 0.25: −[0.25·log σ(1) + 0.75·log σ(−1)]
    soft = bt_loss(rc[:1], rr[:1], labels=torch.tensor([0.25], dtype=D))
    assert soft.item() == pytest.approx(-(0.25 * math.log(sig(1)) + 0.75 * math.log(sig(-1))), abs=1e-12)
    # its gradient w.r.t. Δ is σ(Δ) − y: zero when the label equals the model's own prediction
    d = torch.tensor([0.7], dtype=D, requires_grad=True)
    bt_loss(d, torch.zeros(1, dtype=D), labels=torch.tensor([sig(0.7)], dtype=D)).sum().backward()
    assert abs(d.grad.item()) < 1e-12


def test_bt_equals_trl_reward_loss():
    trl_rt = pytest.importorskip("trl.trainer.reward_trainer", reason="trl not installed (optional oracle)")
    g = torch.Generator().manual_seed(1)
    r = torch.randn(8, 1, generator=g, dtype=D)
    fake = SimpleNamespace(model=SimpleNamespace(training=False), accelerator=_FakeAccel(),
                           args=SimpleNamespace(center_rewards_coefficient=None),
                           _metrics={"eval": defaultdict(list), "train": defaultdict(list)}, _total_train_tokens=0,
                           _tp_size=1)
    trl_loss = trl_rt.RewardTrainer.compute_loss(fake, lambda **kw: SimpleNamespace(logits=r),
                                                 {"input_ids": None, "attention_mask": torch.ones(8, 2)})
    assert bt_loss(r[:4, 0], r[4:, 0]).mean().item() == pytest.approx(trl_loss.item(), abs=1e-12)


def test_ids_update_hand_value_and_closed_form():
    y = torch.tensor([1.0, 1.0, 0.5], dtype=D)
    rc, rr = torch.tensor([0.0, 2.0, -1.0], dtype=D), torch.tensor([0.0, 0.0, 1.0], dtype=D)
    y1 = ids_update(y, rc, rr, beta=0.3)
    assert y1.tolist() == pytest.approx([0.7 + 0.3 * 0.5, 0.7 + 0.3 * sig(2.0), 0.35 + 0.3 * sig(-2.0)], abs=1e-12)
    # k steps with the reward gap frozen == closed form σ(Δ) + (1−β)^k (y0 − σ(Δ))
    yk = y.clone()
    for _ in range(7):
        yk = ids_update(yk, rc, rr, beta=0.3)
    assert torch.allclose(yk, ids_closed_form(y, rc - rr, 0.3, 7), atol=1e-12)
    assert torch.allclose(ids_closed_form(y, rc - rr, 0.3, 200), torch.sigmoid(rc - rr), atol=1e-12)


def test_odin_loss_parts():
    g = torch.Generator().manual_seed(0)
    lc, lr = torch.tensor([5.0, 3.0, 8.0]), torch.tensor([2.0, 6.0, 4.0])
    rl_c, rl_r = 0.1 * lc, 0.1 * lr                        # length head exactly linear in length: ρ = 1
    rq_c, rq_r = torch.tensor([1.0, -1.0, 0.0]), torch.tensor([0.0, 0.0, 0.0])
    wq, wl = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    loss, parts = odin_loss(rq_c, rl_c, rq_r, rl_r, lc, lr, wq, wl, lambda_l=2.0, lambda_o=3.0)
    assert parts["rho_len_L"] == pytest.approx(1.0, abs=1e-6)
    lens, rq = torch.cat([lc, lr]), torch.cat([rq_c, rq_r])
    rho_q = torch.corrcoef(torch.stack([lens, rq]))[0, 1].item()
    assert parts["rho_len_Q"] == pytest.approx(rho_q, abs=1e-6)
    rank = bt_loss(rq_c + rl_c, rq_r + rl_r).mean().item()
    expect = rank + 2.0 * (0.0 + abs(rho_q)) + 3.0 * (1 / math.sqrt(2))
    assert loss.item() == pytest.approx(expect, abs=1e-5)
    x, y = torch.randn(20, generator=g, dtype=D), torch.randn(20, generator=g, dtype=D)
    assert pearson(x, y).item() == pytest.approx(torch.corrcoef(torch.stack([x, y]))[0, 1].item(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ RL
def test_rloo_grpo_contrastive_hand_values():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=D)
    # baseline of item i = mean of the other three
    assert rloo_advantages(r)[0].tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 2.0])
    # equivalently k/(k−1)·(r − mean)
    assert torch.allclose(rloo_advantages(r), 4 / 3 * (r - r.mean()))
    std = r.std().item()
    assert grpo_advantages(r)[0].tolist() == pytest.approx([(v - 3.0) / (std + 1e-4) for v in (1, 2, 3, 6)])
    off = torch.tensor([[0.0, 1.0, 2.0], [4.0, 4.0, 7.0]], dtype=D)
    assert contrastive_rewards(torch.tensor([3.0, 3.0], dtype=D), off).tolist() == pytest.approx([2.0, -2.0])


def test_gae_matches_textbook_sum():
    g = torch.Generator().manual_seed(0)
    b, t = 3, 6
    rew, val = torch.randn(b, t, generator=g, dtype=D), torch.randn(b, t, generator=g, dtype=D)
    lengths = [6, 4, 1]
    mask = torch.zeros(b, t, dtype=D)
    for i, L in enumerate(lengths):
        mask[i, :L] = 1
    adv, ret = gae(rew, val, mask, gamma=0.9, lam=0.8)
    for i, L in enumerate(lengths):
        ref = naive_gae(rew[i, :L].tolist(), val[i, :L].tolist(), 0.9, 0.8)
        assert adv[i, :L].tolist() == pytest.approx(ref, abs=1e-12)
        assert adv[i, L:].abs().sum() == 0
        assert torch.allclose(ret[i, :L], adv[i, :L] + val[i, :L])
    # γ = λ = 1: A_0 = Σ r − V_0 (a single trajectory)
    a1, _ = gae(rew[:1], val[:1], mask[:1], 1.0, 1.0)
    assert a1[0, 0].item() == pytest.approx(rew[0].sum().item() - val[0, 0].item(), abs=1e-12)


def test_ppo_clipped_loss_hand_values():
    old = torch.zeros(1, 4, dtype=D)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]], dtype=D))     # ratios
    adv = torch.tensor([[1.0, -1.0, 2.0, 1.0]], dtype=D)
    loss, st = ppo_policy_loss(logp, old, adv, torch.ones(1, 4), clip_eps=0.2)
    # per token max(−A·ρ, −A·clip(ρ)): [−1.2, 0.8, −2.2, −0.7]
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2 - 0.7) / 4, abs=1e-12)
    assert st["clipfrac"] == pytest.approx(0.5)
    # masked token does not count
    loss_m, _ = ppo_policy_loss(logp, old, adv, torch.tensor([[1, 1, 1, 0]]), clip_eps=0.2)
    assert loss_m.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, abs=1e-12)
    # gradient is zero for the clipped tokens (0 and 1) and −A·ρ/n for the others
    lp = logp.clone().requires_grad_(True)
    ppo_policy_loss(lp, old, adv, torch.ones(1, 4), 0.2)[0].backward()
    assert lp.grad[0].tolist() == pytest.approx([0.0, 0.0, -2.2 / 4, -0.7 / 4], abs=1e-12)


def test_ppo_sequence_level_equals_trl_rloo_loss():
    trl_rloo = pytest.importorskip("trl.trainer.rloo_trainer", reason="trl not installed (optional oracle)")
    g = torch.Generator().manual_seed(3)
    b, t = 6, 5
    ptl = -torch.rand(b, t, generator=g, dtype=D)
    cmask = torch.ones(b, t, dtype=D)
    cmask[1, 3:] = 0
    old = (ptl * cmask).sum(1) + 0.3 * torch.randn(b, generator=g, dtype=D)
    adv = torch.randn(b, generator=g, dtype=D)
    fake = SimpleNamespace(model=SimpleNamespace(training=False), accelerator=_FakeAccel(), aux_loss_enabled=False,
                           epsilon_low=0.2, epsilon_high=0.2,
                           _metrics={"eval": defaultdict(list), "train": defaultdict(list)},
                           _get_per_token_logps_and_entropies=lambda *a, **k: (ptl, torch.zeros_like(ptl), None))
    inputs = {"prompt_ids": torch.zeros(b, 2, dtype=torch.long), "prompt_mask": torch.ones(b, 2, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": cmask,
              "old_logps": old, "advantages": adv}
    trl_loss = trl_rloo.RLOOTrainer._compute_loss(fake, None, inputs)
    ours, _ = ppo_policy_loss((ptl * cmask).sum(1, keepdim=True), old[:, None], adv[:, None], torch.ones(b, 1), 0.2)
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-12)


def test_value_loss_and_kl_rewards_hand_values():
    v, old, ret = (torch.tensor([[x]], dtype=D) for x in (1.0, 0.5, 0.0))
    # unclipped (1−0)² = 1 ; clipped V = 0.7 -> 0.49 ; max = 1 ; ½·1
    assert value_loss(v, old, ret, torch.ones(1, 1), 0.2).item() == pytest.approx(0.5)
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=D)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=D)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=D)
    r, kl = kl_shaped_rewards(torch.tensor([3.0], dtype=D), logp, ref, mask, kl_coef=0.1)
    assert kl.tolist() == [[0.5, -1.0, 0.0]]
    assert r.tolist()[0] == pytest.approx([-0.05, 0.1 + 3.0, 0.0])   # score lands on the last real token


def test_adaptive_kl_controller():
    c = AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert c.update(9.0, n_steps=10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))   # error clipped at +0.2
    c2 = AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert c2.update(5.4, n_steps=10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
