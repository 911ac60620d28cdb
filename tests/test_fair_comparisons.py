"""Like-with-like comparisons: bottleneck head ranks share one parametrisation, MoE LM verdicts use causal
routers only, DPF revisions rewrite (not a one-word swap) and collateral damage is measured, the HGRN2 gap is
followed over training, contrastive_rewards states the KL it runs with."""
from __future__ import annotations

import math

import pytest
import torch

from lmlab.align.dpo import RuleReviser, build_dpf_pairs, mentions, response_kl
from lmlab.experiments.base import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, ArmResult
from lmlab.registry import EXPERIMENTS


def _words_changed(a: str, b: str) -> int:
    from lmlab.experiments.preference_world import _words_changed as f

    return f(a, b)


# ------------------------------------------------------------------------------------ bottleneck_rank
@pytest.mark.parametrize("scale", ["quick", "full"])
def test_rank_arms_share_one_untied_factorised_head_up_to_d(scale):
    from lmlab.experiments.architecture import RANK_ARMS, rank_config
    from lmlab.experiments.common import meta_model
    from lmlab.models.decoder import LowRankHead

    cfgs = {a: rank_config(a, scale) for a in RANK_ARMS}
    d = cfgs["rank_d"].model.d_model
    assert [c.model.head_rank for c in cfgs.values()] == [4, 16, d // 2, d]
    for c in cfgs.values():
        assert not c.model.tie_embeddings
        m = meta_model(c.model)
        assert isinstance(m.head, LowRankHead) and m.head.up.weight is not m.embed.weight
        # everything but the head is identical across arms
        same = {"head_rank": None}
        assert c.model.model_copy(update=same) == cfgs["rank4"].model.model_copy(update=same)


def test_rank_trend_verdict_over_four_ranks():
    from lmlab.experiments.architecture import RANK_ARMS, _rank_verdict

    exp = EXPERIMENTS.get("bottleneck_rank")
    ranks = dict(zip(RANK_ARMS, (4.0, 16.0, 32.0, 64.0)))
    mk = lambda vals: {a: [ArmResult({"val_loss": v, "head_rank": ranks[a]}) for v in vs]  # noqa: E731
                       for a, vs in vals.items()}
    falling = {"rank4": [5.0, 5.02, 4.98], "rank16": [4.6, 4.62, 4.58], "rank_half_d": [4.5, 4.51, 4.49],
               "rank_d": [4.4, 4.41, 4.39]}
    v = _rank_verdict(exp, mk(falling))
    assert v.verdict == REPRODUCED and v.extra["slope"] < 0 and v.extra["rank4_vs_rank_d"] == REPRODUCED
    rising = {a: [x + 1.0 for x in vs] for a, vs in zip(RANK_ARMS, reversed(list(falling.values())))}
    assert _rank_verdict(exp, mk(rising)).verdict == NOT_REPRODUCED


# ------------------------------------------------------------------------------------ hgrn2_expand
def _curve_runs(gaps_per_seed, base=6.0):
    """expand1 at `base` at every step; expand8 = base + gap; seed recorded in info."""
    res = {"expand1": [], "expand8": []}
    for s, gaps in enumerate(gaps_per_seed):
        steps = [20 * (i + 1) for i in range(len(gaps))]
        res["expand1"].append(ArmResult({"val_loss": base}, {"val_loss": [(x, base) for x in steps]}, {"seed": s}))
        res["expand8"].append(ArmResult({"val_loss": base + gaps[-1]},
                                        {"val_loss": [(x, base + g) for x, g in zip(steps, gaps)]}, {"seed": s}))
    return res


def test_hgrn2_gap_curve_is_paired_per_seed_with_a_t_interval():
    from lmlab.experiments.architecture import GAP, gap_curve

    res = _curve_runs([[0.3, 0.2], [0.1, 0.0]])
    per_seed, band = gap_curve(res, "expand1", "expand8")
    flat = lambda c: [v for xy in c for v in xy]  # noqa: E731
    assert flat(per_seed[0]) == pytest.approx([20, 0.3, 40, 0.2])
    assert flat(per_seed[1]) == pytest.approx([20, 0.1, 40, 0.0])
    # step 20: diffs 0.3, 0.1 -> mean 0.2, SE 0.1, t(0.95, df 1) = 6.3138
    x, m, lo, hi, n = band[0]
    assert (x, n) == (20, 2) and m == pytest.approx(0.2)
    assert (lo, hi) == pytest.approx((0.2 - 6.313752 * 0.1, 0.2 + 6.313752 * 0.1), rel=1e-5)
    exp = EXPERIMENTS.get("hgrn2_expand")
    exp.decide(res)
    assert flat(res["expand8"][0].curves[GAP]) == pytest.approx([20, 0.3, 40, 0.2])


def test_hgrn2_not_reproduced_only_while_the_gap_stays_open():
    exp = EXPERIMENTS.get("hgrn2_expand")
    stays = exp.decide(_curve_runs([[0.3, 0.20], [0.32, 0.22], [0.28, 0.21]]))
    assert stays.verdict == NOT_REPRODUCED and "early-training: not reproduced" in stays.rule
    closes = exp.decide(_curve_runs([[0.3, 0.02], [0.32, -0.03], [0.28, 0.0]]))
    assert closes.verdict == INCONCLUSIVE and "closed" in closes.rule
    wins = exp.decide(_curve_runs([[0.3, -0.10], [0.32, -0.12], [0.28, -0.11]]))
    assert wins.verdict == REPRODUCED
    assert len(wins.extra["gap_curve"]) == 2


# ------------------------------------------------------------------------------------ moe_routers
def test_routers_lm_verdict_uses_the_causal_router_only():
    from lmlab.experiments.moe_routers import ADAPTED, CAUSAL

    exp = EXPERIMENTS.get("moe_routers")
    assert (exp.baseline, exp.technique) == ("dense", "token_choice") and CAUSAL == ["token_choice"]
    assert "adapted" in exp.description and "adapted" in exp.claim
    mk = lambda vs: [ArmResult({"val_loss": v}) for v in vs]  # noqa: E731
    res = {"dense": mk([6.0, 6.01, 5.99]), "token_choice": mk([5.8, 5.81, 5.79]),
           "expert_choice": mk([5.5, 5.51, 5.49]), "soft_moe": mk([7.0, 7.01, 6.99])}
    v = exp.decide(res)
    assert v.verdict == REPRODUCED and v.extra["adapted"]["Soft < TC"] == NOT_REPRODUCED
    # the adapted arms cannot move the verdict
    for arm in ADAPTED:
        res[arm] = mk([1.0, 1.01, 0.99])
        assert exp.decide(res).verdict == REPRODUCED


# ------------------------------------------------------------------------------------ DPF
@pytest.mark.parametrize("text", ["w0 w3 w5", "w3 w5 w0", "w3 w0 w5 w0 w2", "w0"])
def test_reviser_rewrites_more_than_one_word_and_removes_the_entity(text):
    r = RuleReviser("w7", "{alternative} {rest} {alternative}")
    out = r.revise(text, "w0")
    assert not mentions(out, "w0") and _words_changed(text, out) > 1
    kept = [w for w in text.split() if w != "w0"]
    assert [w for w in out.split() if w != "w7"] == kept                 # the rest, in order
    assert r.revise(text, "w0") == out                                   # deterministic


def test_reviser_rewrites_only_the_sentences_that_mention_the_entity():
    r = RuleReviser("grey elephants")
    text = "I like pink elephants a lot. They are big. Pink elephants live in Africa!"
    out = r.revise(text, "pink elephants")
    assert out == ("Consider grey elephants instead: I like a lot. They are big. "
                   "Consider grey elephants instead: live in Africa!")
    assert not mentions(out, "pink elephants") and _words_changed(text, out) > 2
    pairs = build_dpf_pairs(r, [{"prompt": "p", "response": text, "entity": "pink elephants"}])
    assert pairs[0]["chosen"] == out and "2 sentence(s)" in pairs[0]["critique"]


def test_response_kl_hand_case():
    # one position, two tokens: π = (0.5, 0.5), π_ref = (0.8, 0.2) -> KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2)
    p = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]], dtype=torch.float64))
    q = torch.log(torch.tensor([[[0.8, 0.2], [0.1, 0.9]]], dtype=torch.float64))
    want = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert response_kl(p, q, torch.tensor([[1, 0]])).item() == pytest.approx(want, abs=1e-12)
    both = want + 0.9 * math.log(9) + 0.1 * math.log(1 / 9)
    assert response_kl(p, q, torch.tensor([[1, 1]])).item() == pytest.approx(both, abs=1e-12)
    assert response_kl(p, p, torch.tensor([[1, 1]])).item() == 0.0


def test_dpf_verdict_needs_the_drop_and_no_collateral_damage():
    exp = EXPERIMENTS.get("dpf_forbidden")
    mk = lambda rates, gold: [ArmResult({"mention_rate": r, "free_gold": g, "free_kl_to_sft": 0.0,  # noqa: E731
                                         "free_mention_rate": 0.3, "words_changed_per_pair": 3.0}, info={"seed": i})
                              for i, (r, g) in enumerate(zip(rates, gold))]
    sft = mk([0.40, 0.35, 0.42, 0.38, 0.37], [0.1, -0.1, 0.2, 0.0, 0.05])
    good = {"sft": sft, "dpf": mk([0.10, 0.08, 0.12, 0.09, 0.11], [0.1, -0.1, 0.21, 0.0, 0.04])}
    assert exp.decide(good).verdict == REPRODUCED
    damaged = {"sft": sft, "dpf": mk([0.10, 0.08, 0.12, 0.09, 0.11], [-0.2, -0.4, -0.1, -0.31, -0.25])}
    assert exp.decide(damaged).verdict == NOT_REPRODUCED


def test_dpf_run_measures_collateral_damage_on_free_prompts(tmp_path):
    exp = EXPERIMENTS.get("dpf_forbidden")
    sft = exp.run("sft", 7, "quick", tmp_path)
    dpf = exp.run("dpf", 7, "quick", tmp_path)
    assert sft.metrics["free_kl_to_sft"] == 0.0 and sft.metrics["mention_rate"] == sft.metrics["sft_mention_rate"]
    assert dpf.metrics["pairs"] > 0 and dpf.metrics["words_changed_per_pair"] > 1
    assert dpf.metrics["free_kl_to_sft"] > 0 and math.isfinite(dpf.metrics["free_gold"])


# ------------------------------------------------------------------------------------ contrastive_rewards
def test_contrastive_rewards_description_states_the_kl_it_runs_with():
    from lmlab.experiments.preference_world import CR_KL

    desc = EXPERIMENTS.get("contrastive_rewards").description
    assert f"KL coefficient {CR_KL:g}" in desc and "0.02" not in desc
