"""SpIEL as published (the authors' select_rigl), pinned slot by slot on a hand-built 3×4 weight: which slots
are pruned (smallest |φ|), which entries regrow (largest |Σg| among the not-still-active), the initial
selection by gradient, the candidate rule, and the seeded Adam moments; the cycle_delta ablation differs."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lmlab.nn.peft import SpIEL, apply_peft
from lmlab.registry import PEFT_METHODS

B1, B2 = 0.9, 0.999


def hand_layer(indices, delta, **kw):
    """A 3×4 Linear (12 entries, flat index = 4·row + col) with k=4 hand-set (η, φ)."""
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    sp = SpIEL(model, n_trainable=4, regrow="ag", **kw)
    layer = sp.layers["0"]
    layer.indices.copy_(torch.tensor(indices))
    layer.delta.data.copy_(torch.tensor(delta))
    opt = torch.optim.Adam(sp.parameters(), lr=0.0, betas=(B1, B2))   # lr 0: moments move, φ stays hand-set
    sp.attach(opt)
    return model, sp, layer, opt


def step_with_dense_grad(model, opt, flat_grad, micro=1):
    """One optimizer step whose dense ∂L/∂W is exactly `flat_grad` (x = I, ∂L/∂y = Gᵀ), in `micro` backwards."""
    G = torch.tensor(flat_grad, dtype=torch.float32).view(3, 4)
    opt.zero_grad()
    for _ in range(micro):
        y = model(torch.eye(4))                                       # (4, 3)
        (y * G.T / micro).sum().backward()
    opt.step()


def shadow_adam_moments(grads):
    """Adam's (exp_avg, exp_avg_sq) for one entry that saw `grads`, one per step."""
    p = nn.Parameter(torch.zeros(1))
    o = torch.optim.Adam([p], lr=0.0, betas=(B1, B2))
    for g in grads:
        p.grad = torch.tensor([float(g)])
        o.step()
    return float(o.state[p]["exp_avg"]), float(o.state[p]["exp_avg_sq"])


#             idx:  0    1     2     3    4     5    6     7    8     9    10   11
G_CONST = [5.0, 0.1, -7.0, -0.2, 0.3, 8.0, -0.4, 9.0, 0.5, 6.0, -0.6, 0.7]


@pytest.mark.parametrize("micro", [1, 2])
def test_prune_smallest_abs_delta_regrow_largest_abs_grad_and_seed_moments(micro):
    # active η = {0, 5, 7, 10}; |φ| ranks slot1 (0.01) < slot3 (0.05) < slot2 (0.2) < slot0 (0.3)
    model, sp, layer, opt = hand_layer([0, 5, 7, 10], [0.3, -0.01, 0.2, 0.05], update_interval=3,
                                       accumulation_steps=2, drop_fraction=0.5, candidates=None, init="random")
    step_with_dense_grad(model, opt, G_CONST, micro)                 # window = steps 1, 2
    before = {k: opt.state[layer.delta][k].clone() for k in ("exp_avg", "exp_avg_sq")}
    step_with_dense_grad(model, opt, G_CONST, micro)                 # selection right after step 2
    # ⌊0.5·4⌋ = 2 pruned: slots 1 (η 5) and 3 (η 10). Growth candidates exclude the still-active 0 and 7;
    # best |Σg|: η 5 (16) and η 2 (14). η 5 was pruned and regrown at once, so slot 1 stays as it was;
    # η 2 takes slot 3 with φ = 0. Total changes: 1.
    assert layer.indices.tolist() == [0, 5, 7, 2]
    assert torch.equal(layer.delta.detach(), torch.tensor([0.3, -0.01, 0.2, 0.0]))
    assert sp.history == [{"step": 2, "drop_fraction": 0.5, "replaced": 1}]
    m, v = opt.state[layer.delta]["exp_avg"], opt.state[layer.delta]["exp_avg_sq"]
    # regrown slot: the moments Adam would hold had η 2 been active through the window (constant gradient)
    want_m, want_v = shadow_adam_moments([-7.0, -7.0])
    assert m[3].item() == pytest.approx(want_m, rel=1e-5) and v[3].item() == pytest.approx(want_v, rel=1e-5)
    assert m[3].item() == pytest.approx(-7.0 * (1 - B1 ** 2), rel=1e-6)
    assert v[3].item() == pytest.approx(49.0 * (1 - B2 ** 2), rel=1e-6)
    # kept slots (slot 1 included) carry their own Adam state on: one more update than the snapshot
    for j, eta in [(0, 0), (1, 5), (2, 7)]:
        assert m[j].item() == pytest.approx(B1 * before["exp_avg"][j].item() + (1 - B1) * G_CONST[eta], rel=1e-5)
    assert sp._stats == {} and sp._window_steps == 0


def test_ablation_prunes_by_change_over_the_cycle_on_the_same_deltas():
    # same φ as above; the ablation ranks |φ − φ_cycle_start| = [0.01, 0.49, 0.2, 0.0]: slots 3 and 0 go
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    sp = SpIEL(model, n_trainable=4, regrow="ag", drop_fraction=0.5, variant="cycle_delta")
    layer = sp.layers["0"]
    layer.indices.copy_(torch.tensor([0, 5, 7, 10]))
    layer.delta.data.copy_(torch.tensor([0.3, -0.01, 0.2, 0.05]))
    sp._start["0"] = torch.tensor([0.29, 0.48, 0.0, 0.05])
    sp._stats["0"] = {"acc": 2 * torch.tensor(G_CONST)}
    sp.prune_regrow()
    # regrow never-active entries only: η 2 (14) into slot 3 (smallest change), η 9 (12) into slot 0
    assert layer.indices.tolist() == [9, 5, 7, 2]
    assert torch.equal(layer.delta.detach(), torch.tensor([0.0, -0.01, 0.2, 0.0]))


def test_initial_indices_chosen_by_gradient_from_first_step_candidates():
    # random start η = {0, 1, 3, 4}; the first selection (t = γ = 2) replaces every slot
    model, sp, layer, opt = hand_layer([0, 1, 3, 4], [0.1, 0.2, 0.3, 0.4], update_interval=10,
                                       accumulation_steps=2, drop_fraction=0.2)
    assert sp.init == "grad" and sp.candidates == 1.0               # the reference: k candidates
    #                idx: 0    1    2    3    4    5    6     7    8    9    10   11
    g1 = [0.0, 3.0, 0.1, 0.2, 0.0, 0.3, 0.0, -4.0, 0.0, 2.0, 0.0, 2.5]
    g2 = [0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 50.0, -1.0, 0.0, 8.0, 0.0, 4.0]
    step_with_dense_grad(model, opt, g1)            # candidates: top-4 |g| at the window's first step = {7, 1, 11, 9}
    assert sorted(sp._stats["0"]["cand"].tolist()) == [1, 7, 9, 11]
    step_with_dense_grad(model, opt, g2)            # η 6's large second-step gradient comes too late to be a candidate
    # |Σg| over the candidates: η 9 (10) > η 11 (6.5) > η 7 (5) > η 1 (3.5). Slots in |φ| order 0, 1, 2, 3;
    # η 1 is both pruned and regrown, so slot 1 keeps η 1 and φ = 0.2; the others fill slots 0, 2, 3.
    assert layer.indices.tolist() == [9, 1, 11, 7]
    assert torch.equal(layer.delta.detach(), torch.tensor([0.0, 0.2, 0.0, 0.0]))
    assert sp.history[0]["drop_fraction"] == 1.0 and sp.history[0]["replaced"] == 3
    m, v = opt.state[layer.delta]["exp_avg"], opt.state[layer.delta]["exp_avg_sq"]
    for slot, eta in [(0, 9), (2, 11), (3, 7)]:
        mean, mean_sq = (g1[eta] + g2[eta]) / 2, (g1[eta] ** 2 + g2[eta] ** 2) / 2
        assert m[slot].item() == pytest.approx(mean * (1 - B1 ** 2), rel=1e-6)
        assert v[slot].item() == pytest.approx(mean_sq * (1 - B2 ** 2), rel=1e-6)
    assert m[1].item() == pytest.approx(shadow_adam_moments([3.0, 0.5])[0], rel=1e-5)   # slot 1: its own Adam state
    # later selections: every γ steps after a cycle boundary (t = 12, 22, ...), at the decayed rate ρ
    for _ in range(10):
        step_with_dense_grad(model, opt, g2)
    assert [h["step"] for h in sp.history] == [2, 12] and sp.history[1]["drop_fraction"] == 0.2


def test_seeding_uses_per_entry_age_or_torch_adam_step():
    def run(state_extra):
        model = nn.Sequential(nn.Linear(4, 3, bias=False))
        sp = SpIEL(model, n_trainable=4, regrow="ag", drop_fraction=0.5, candidates=None, init="random")
        layer = sp.layers["0"]
        layer.indices.copy_(torch.tensor([0, 5, 7, 10]))
        layer.delta.data.copy_(torch.tensor([0.3, -0.01, 0.2, 0.05]))
        g = torch.tensor(G_CONST)
        sp._stats["0"] = {"acc": 3 * g, "acc_sq": 3 * g * g}
        sp._calls["0"], sp._window_steps = 3, 3                    # a 3-step window
        st = {"exp_avg": torch.ones(4), "exp_avg_sq": torch.ones(4), **state_extra}
        opt = SimpleNamespace(state={layer.delta: st}, param_groups=[{"params": [layer.delta], "betas": (0.8, 0.99)}])
        sp.prune_regrow(opt)
        assert layer.indices.tolist() == [0, 5, 7, 2]
        return st

    st = run({"age": torch.full((4,), 40.0)})                        # the reference's SftAdamW: per-entry age
    assert st["age"].tolist() == [40.0, 40.0, 40.0, 3.0]
    assert st["exp_avg"][3].item() == pytest.approx(-7.0 * (1 - 0.8 ** 3))
    assert st["exp_avg_sq"][3].item() == pytest.approx(49.0 * (1 - 0.99 ** 3))
    st = run({"step": torch.tensor(40.0)})                           # torch Adam: one bias-correction count
    assert st["exp_avg"][3].item() == pytest.approx(-7.0 * (1 - 0.8 ** 40))
    assert st["exp_avg_sq"][3].item() == pytest.approx(49.0 * (1 - 0.99 ** 40))
    assert st["exp_avg"][:3].tolist() == [1.0, 1.0, 1.0]


def test_methods_registered_and_selectable_by_name():
    assert {"lora", "partial_lora", "spiel", "spiel_cycle_delta"} <= set(PEFT_METHODS.names())
    for name in PEFT_METHODS.names():
        assert PEFT_METHODS.describe(name) and "\n" not in PEFT_METHODS.describe(name)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    h = apply_peft(model, {"method": "spiel_cycle_delta", "n_trainable": 10})
    assert h.method == "spiel_cycle_delta" and h.spiel.variant == "cycle_delta" and h.spiel.init == "random"
    h = apply_peft(nn.Sequential(nn.Linear(8, 8)), {"method": "spiel", "n_trainable": 10, "rate_policy": "linear",
                                                     "total_steps": 100, "drop_fraction": 0.4})
    assert h.spiel.variant == "spiel" and h.spiel.current_drop_fraction() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="choose one of: none, lora, partial_lora, spiel, spiel_cycle_delta"):
        apply_peft(model, {"method": "adapters"})
    with pytest.raises(ValueError, match="peft.init is not an option of method=lora"):
        apply_peft(model, {"method": "lora", "init": "grad"})
