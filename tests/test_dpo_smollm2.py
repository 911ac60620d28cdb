"""The dpo_smollm2 experiment's parts on tiny models and hand-made strings (SmolLM2 itself is not loaded here)."""
import copy

import pytest
import torch

from lmlab.align.dpo import collate_pairs, completion_logps, train_dpo
from lmlab.experiments.dpo_smollm2 import (build_pairs, gold_score, mentions_topic, top_completion_logps,
                                           train_dpo_top, trunk_hidden)


def tiny(layers=3, seed=0):
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=40, d_model=32, n_layer=layers, n_head=4, n_kv_head=2,
                               max_seq_len=64)).double()


def make_pairs(n, seed=0, vocab=40):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda lo, hi: torch.randint(1, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
    return [(rnd(2, 7), rnd(1, 6), rnd(1, 9)) for _ in range(n)]


@pytest.mark.parametrize("n_frozen", [0, 2, 3])
def test_cached_trunk_equals_full_forward(n_frozen):
    model = tiny()
    b = collate_pairs(make_pairs(5), pad_id=0)
    want = completion_logps(model, b.input_ids, b.completion_mask)
    h = trunk_hidden(model, b.input_ids, n_frozen)
    assert not h.requires_grad
    got = top_completion_logps(model, h, b.input_ids, b.completion_mask, n_frozen)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # gradients of the top blocks' parameters agree too
    top = [p for blk in model.blocks[n_frozen:] for p in blk.parameters()]
    w = torch.linspace(-1, 1, len(want), dtype=torch.float64)
    g_want = torch.autograd.grad((want * w).sum(), top + [model.norm.weight])
    g_got = torch.autograd.grad((got * w).sum(), top + [model.norm.weight])
    for a, c in zip(g_got, g_want):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-12)


def test_train_dpo_top_matches_train_dpo():
    """Training only the top block with the cached trunk gives the same losses and weights as train_dpo."""
    ref = tiny(seed=1)
    pol_a, pol_b = copy.deepcopy(ref), copy.deepcopy(ref)
    for m in (pol_a, pol_b):
        for n, p in m.named_parameters():
            p.requires_grad_(n.startswith("blocks.2."))
    pairs = make_pairs(12, seed=3)
    ha = train_dpo(pol_a, ref, pairs, beta=0.5, lr=1e-2, epochs=2, batch_size=5, seed=7)
    hb = train_dpo_top(pol_b, ref, pairs, 2, beta=0.5, lr=1e-2, epochs=2, batch_size=5, seed=7)
    assert len(ha) == len(hb) == 6
    # completion_logps casts logits to float32, so the two agree to float32 rounding
    assert [h["loss"] for h in hb] == pytest.approx([h["loss"] for h in ha], rel=1e-5)
    assert hb[-1]["loss"] < hb[0]["loss"]                                   # it learns
    for (n, a), (_, b) in zip(pol_a.named_parameters(), pol_b.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)
    assert not torch.equal(pol_b.blocks[2].ffn.up.weight, ref.blocks[2].ffn.up.weight)


def test_train_dpo_top_refuses_trainable_trunk():
    ref = tiny()
    with pytest.raises(ValueError, match="must be frozen"):
        train_dpo_top(copy.deepcopy(ref), ref, make_pairs(4), 2)


def test_gold_score_opens_with_topic():
    assert gold_score("Owls are quiet hunters.", "owls") == 1.0
    assert gold_score("  **Owl**: a bird of the night.", "owls") == 1.0     # markup before the first word
    assert gold_score("The owl hoots.", "owls") == 0.0
    assert gold_score("Owlish eyes stare.", "owls") == 0.0                # a longer word is not the topic
    assert gold_score("City lights never sleep.", "cities") == 1.0
    assert gold_score("Horses run.", "horses") == 1.0 and gold_score("A horse runs.", "horses") == 0.0
    assert gold_score("Coffee, black.", "coffee") == 1.0 and gold_score("", "coffee") == 0.0
    assert mentions_topic("I like the cat's tail", "cats") and not mentions_topic("A catalog", "cats")


def test_build_pairs_best_against_worst_without_reuse():
    p = [1, 2, 3]
    samples = [([10], "The bee buzzes."), ([11], "Bees dance."), ([12], "Bee stings hurt."), ([13], "A hive hums.")]
    pairs = build_pairs([(p, "bees", samples)], per_prompt=2)
    # ranked by score, earlier first among equals: 11, 12 (score 1) then 10, 13 (score 0)
    assert pairs == [(p, [11], [13]), (p, [12], [10])]
    assert build_pairs([(p, "bees", samples)], per_prompt=1) == [(p, [11], [13])]
    # three winners, one loser: only one strict pair; all tied: none
    three = samples[1:3] + [([14], "Bees again."), ([15], "No.")]
    assert build_pairs([(p, "bees", three)], per_prompt=2) == [(p, [11], [15])]
    assert build_pairs([(p, "bees", samples[1:3]), (p, "bees", [samples[0], samples[3]])], per_prompt=2) == []
    with pytest.raises(ValueError, match="per_prompt"):
        build_pairs([], per_prompt=0)


def test_registered_and_verdict_from_numbers():
    from lmlab.experiments.base import INCONCLUSIVE, REPRODUCED, ArmResult
    from lmlab.registry import EXPERIMENTS, load_plugins

    load_plugins()
    exp = EXPERIMENTS.get("dpo_smollm2")
    assert (exp.arms, exp.baseline, exp.technique, exp.direction) == (["ref", "dpo"], "ref", "dpo", "higher")
    res = lambda xs: [ArmResult({"heldout_winrate": x}) for x in xs]
    assert exp.decide({"ref": res([0.47, 0.53, 0.55]), "dpo": res([0.64, 0.75, 0.63])}).verdict == REPRODUCED
    assert exp.decide({"ref": res([0.47, 0.53, 0.55]), "dpo": res([0.52, 0.55, 0.56])}).verdict == INCONCLUSIVE
