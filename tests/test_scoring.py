"""Batched log-likelihood scoring (lmlab.infer.scoring) equals one full forward per request, float64."""
import copy
import random

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.infer import scoring
from lmlab.infer.scoring import naive_score_loglikelihood, prefix_groups, score_loglikelihood, tree_scorable
from lmlab.models.decoder import Decoder


def tiny(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=48, n_layer=2, n_head=6, n_kv_head=2, max_seq_len=128,
                      tie_embeddings=False, **kw)
    m = Decoder(cfg).double()
    with torch.no_grad():  # peaked next-token distributions, so some continuations are greedy
        m.head.weight.mul_(8.0)
    return m.eval()


def requests(seed=0):
    """Ragged contexts sharing a header, some contexts shared by several continuations (MMLU-like single
    tokens and multi-token ones), one context that shares nothing, and greedy continuations."""
    rng = random.Random(seed)
    header = [rng.randrange(64) for _ in range(7)]
    out = []
    for q in range(5):
        ctx = header + [rng.randrange(64) for _ in range(rng.randrange(1, 15))]
        out += [(ctx, [c]) for c in (3, 4, 5, 6)]                                      # one question
        out += [(ctx, [rng.randrange(64) for _ in range(rng.randrange(2, 9))]) for _ in range(2)]
    out.append(([9, 9, 1], [2, 7, 7]))                                                # shares no header
    out.append((header[:1], [rng.randrange(64) for _ in range(6)]))                   # a 1-token context
    out.append((header + [1], []))                                                   # empty continuation
    return out


def with_greedy(model, reqs, n=4):
    """Append requests whose continuation is the model's own greedy continuation (is_greedy True)."""
    for ctx, _ in reqs[:2 * n:6]:
        ids = list(ctx)
        for _ in range(3):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        reqs.append((list(ctx), ids[len(ctx):]))
    return reqs


@pytest.mark.parametrize("batch_tokens,share,slack", [(2048, True, 0.1), (2048, True, 1.0), (16, True, 1.0),
                                                     (2048, False, 1.0), (1, True, 0.0)])
def test_equals_full_recompute(batch_tokens, share, slack, monkeypatch):
    monkeypatch.setattr(scoring, "PAD_SLACK", slack)   # 1.0: ragged rows padded into one batch
    m = tiny()
    reqs = with_greedy(m, requests())
    got = score_loglikelihood(m, reqs, batch_tokens=batch_tokens, share_prefix=share)
    ref = naive_score_loglikelihood(m, reqs)
    assert len(got) == len(reqs)
    for (a, ga), (b, gb) in zip(got, ref):
        assert abs(a - b) < 1e-9
        assert ga == gb
    assert any(g for _, g in ref[:-1]) and not all(g for _, g in ref)   # both greedy and non-greedy cases
    assert got[next(i for i, (_, t) in enumerate(reqs) if not t)] == (0.0, True)   # the empty continuation


def test_header_shared_by_all_contexts():
    """A few-shot-style header common to every context (level 0), single- and multi-token continuations."""
    m = tiny()
    rng = random.Random(1)
    header = [rng.randrange(64) for _ in range(20)]
    ctxs = [header + [rng.randrange(64) for _ in range(n)] for n in (1, 4, 9, 2)]
    reqs = [(ctx, [c]) for ctx in ctxs for c in range(4)]
    reqs += [(c, [rng.randrange(64) for _ in range(k)]) for (c, _), k in zip(reqs[::4], (2, 5, 3, 7))]
    for (a, ga), (b, gb) in zip(score_loglikelihood(m, reqs, batch_tokens=24), naive_score_loglikelihood(m, reqs)):
        assert abs(a - b) < 1e-9 and ga == gb


def test_recurrent_model_takes_dense_path(monkeypatch):
    monkeypatch.setattr(scoring, "PAD_SLACK", 1.0)
    m = tiny(layer_pattern=["attn", "hgrn2"])
    assert not tree_scorable(m)
    reqs = requests(2)
    for (a, ga), (b, gb) in zip(score_loglikelihood(m, reqs, batch_tokens=40), naive_score_loglikelihood(m, reqs)):
        assert abs(a - b) < 1e-9 and ga == gb


def test_fp32_fused_kernel_path_close_to_reference():
    """fp32 takes PyTorch's fused causal kernel for the own-block attention."""
    m = tiny()
    reqs = requests(3)
    for (a, _), (b, _) in zip(score_loglikelihood(copy.deepcopy(m).float(), reqs), naive_score_loglikelihood(m, reqs)):
        assert abs(a - b) < 1e-3 * max(1.0, abs(b))


def test_bad_requests_named():
    m = tiny()
    with pytest.raises(ValueError, match="request 1 has an empty context"):
        score_loglikelihood(m, [([1], [2]), ([], [3])])
    with pytest.raises(ValueError, match="request 0 needs 200 positions"):
        score_loglikelihood(m, [([1] * 150, [2] * 51)])
    with pytest.raises(ValueError, match="batch_tokens=0"):
        score_loglikelihood(m, [([1], [2])], batch_tokens=0)


def test_few_shot_headers_grouped():
    """Two long headers (two subjects' few-shot prompts) each prefilled once for their own questions, and
    contexts that share only a short prefix with the others in a group of their own."""
    m = tiny()
    rng = random.Random(4)
    common = [5, 6, 7]
    heads = [common + [rng.randrange(64) for _ in range(40)] for _ in range(2)]
    ctxs = [h + [rng.randrange(64) for _ in range(rng.randrange(1, 8))] for h in heads for _ in range(3)]
    ctxs += [common + [rng.randrange(64) for _ in range(n)] for n in (4, 30)]
    groups = prefix_groups(ctxs, 32)
    assert sorted((L0, sorted(ms)) for L0, ms in groups) == [(3, [6, 7]), (43, [0, 1, 2]), (43, [3, 4, 5])]
    reqs = [(c, [k]) for c in ctxs for k in (1, 2)] + [(c, [3, 4, 9]) for c in ctxs[::2]]
    for (a, ga), (b, gb) in zip(score_loglikelihood(m, reqs, batch_tokens=64), naive_score_loglikelihood(m, reqs)):
        assert abs(a - b) < 1e-9 and ga == gb
