import random

import pytest
import torch

from lmlab.align.envs import Problem, SortingTask
from lmlab.align.vstar import (EOS, CharCodec, VStarConfig, best_of_k, build_pairs, evaluate_selection,
                               majority_vote, naive_verifier_score, ranking_accuracy, run_vstar,
                               verifier_scores)
from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder


def _tiny(vocab, seed, d=16):
    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=vocab, d_model=d, n_layer=1, n_head=2, max_seq_len=48)).eval()


def test_pairs_are_exactly_correct_over_incorrect_per_prompt():
    labels = [[1, 0, 1, 0], [0, 0], [1, 1], [0, 1, 0]]
    assert build_pairs(labels) == [(0, 0, 1), (0, 0, 3), (0, 2, 1), (0, 2, 3), (3, 1, 0), (3, 1, 2)]
    # subsampling keeps a subset of the same pairs, per prompt, deterministic for a seed
    sub = build_pairs(labels, max_per_prompt=2, rng=random.Random(3))
    assert set(sub) <= set(build_pairs(labels))
    assert sum(i == 0 for i, _, _ in sub) == 2
    assert sub == build_pairs(labels, max_per_prompt=2, rng=random.Random(3))
    for i, j, l in sub:
        assert labels[i][j] == 1 and labels[i][l] == 0


def test_pairs_from_checker_on_hand_built_samples():
    task, codec = SortingTask(n=3), CharCodec()
    p = Problem("Sort: 3 1 2\n", "1 2 3", {"xs": [3, 1, 2]})
    texts = ["1 2 3", "3 2 1", "1 2 3\n", "1 2"]
    labels = [[task.check(p, t) for t in texts]]
    assert labels == [[1.0, 0.0, 1.0, 0.0]]
    assert build_pairs(labels) == [(0, 0, 1), (0, 0, 3), (0, 2, 1), (0, 2, 3)]
    assert codec.decode(codec.encode("1 2 3") + [EOS, 5, 6]) == "1 2 3"
    with pytest.raises(ValueError, match="'#'"):
        codec.encode("#")


def test_verifier_score_is_beta_times_log_ratio():
    codec = CharCodec()
    pol, ref = _tiny(codec.vocab_size, 0), _tiny(codec.vocab_size, 1)
    prompts = [[0] + codec.encode("Sort: 2 1\n"), [0] + codec.encode("Sort: 9 9\n")]
    resps = [codec.encode("1 2") + [EOS], codec.encode("9") + [EOS]]     # different lengths: padding path
    beta = 0.3
    got = verifier_scores(pol, ref, prompts, resps, beta)
    for i in range(2):
        want = naive_verifier_score(pol, ref, prompts[i], resps[i], beta)
        assert got[i].item() == pytest.approx(want, abs=1e-4)
    # a verifier equal to its reference scores exactly 0
    assert verifier_scores(ref, ref, prompts, resps, beta).abs().max().item() == 0.0


def test_best_of_k_and_majority_vote():
    assert best_of_k([0.1, 0.5, -1.0, 0.3]) == 1
    assert best_of_k([0.2, 0.7, 0.7, 0.1]) == 1          # tie -> earliest
    assert best_of_k([-2.0]) == 0
    assert majority_vote(["5", "7", "5", "7", "9", "7"]) == "7"
    assert majority_vote(["a", "b", "b", "a"]) == "a"     # tie -> first to appear
    assert majority_vote(["x"]) == "x"


def _vstar_seed(seed):
    """One short V-STaR run; the seed sets the problems, the init, sampling/SFT/DPO order and the evaluation."""
    torch.set_num_threads(1)
    task, codec = SortingTask(n=4, hi=9), CharCodec()
    rng = random.Random(seed)
    train = [task.sample(rng) for _ in range(1536)]
    test = [task.sample(rng) for _ in range(256)]
    torch.manual_seed(seed)
    gen = Decoder(ModelConfig(vocab_size=codec.vocab_size, d_model=64, n_layer=2, n_head=2, max_seq_len=48))
    # two pairs per prompt: with one, held-out ranking accuracy swung 0.45-0.82 across init seeds
    cfg = VStarConfig(iterations=1, k=4, max_new_tokens=8, sft_steps=250, star_steps=20, dpo_epochs=4,
                      max_pairs_per_prompt=2, seed=seed)
    res = run_vstar(task, gen, codec, train, [(p, p.answer) for p in train[:256]], cfg)
    return task, codec, train, res, evaluate_selection(task, res, codec, test, cfg, seed=seed + 5)


# Spread over seeds 0-7 (this configuration, one run each): held-out ranking accuracy 0.632-0.839, mean 0.721,
# sd 0.081; ranking accuracy on the training pairs 0.880-0.960, mean 0.916, sd 0.027; 1562-1938 pairs. One seed
# is not evidence here (mean - 3 sd = 0.48 is below chance), so the test runs three and checks their mean
# against the sweep's mean - 3 standard errors (0.721 - 3 * 0.081 / sqrt(3) = 0.58), and the training-pair fit
# per seed against mean - 3 sd (0.835).
def test_short_vstar_loop_verifier_ranks_heldout_correct_above_incorrect():
    held = []
    for seed in (0, 1, 2):
        task, codec, train, res, ev = _vstar_seed(seed)
        assert len(res.pairs) > 500
        by_prompt = {tuple(codec.prompt(q)): q for q in train}
        for x, c, r in res.pairs:          # every stored pair is (correct ≻ incorrect) under the checker
            p = by_prompt[tuple(x)]
            assert task.check(p, codec.decode(c)) == 1.0 and task.check(p, codec.decode(r)) == 0.0
        assert ranking_accuracy(res.verifier, res.ref, res.pairs) > 0.83, seed     # fits its training pairs
        assert 0 < ev["sample_acc"] < 1
        assert ev["first"] <= ev["pass_at_k"] and ev["verifier"] <= ev["pass_at_k"]
        held.append(ev["verifier_rank_acc"])
    assert sum(held) / len(held) > 0.58, held                 # held-out problems: above chance (0.5)
