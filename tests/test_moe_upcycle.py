"""Sparse upcycling reproduces the dense model at init; BTX keeps the averaged non-FFN parameters exactly;
the `moe` channel mixer plugs into the Decoder from config with its aux loss."""
import pytest
import torch

from lmlab.config import ModelConfig, RunConfig, load_config
from lmlab.models.decoder import Decoder
from lmlab.models.upcycle import btx_merge, upcycle

CFG = ModelConfig(vocab_size=61, d_model=16, n_layer=4, n_head=2, d_ff=24, max_seq_len=32, init_std=0.2)


def _dense(seed):
    torch.manual_seed(seed)
    return Decoder(CFG).double().eval()


@pytest.mark.parametrize("top_k,every_other,seed", [(1, False, 0), (2, False, 1), (2, True, 2), (3, False, 3)])
def test_upcycled_model_equals_dense_at_init(top_k, every_other, seed):
    dense = _dense(seed)
    moe = upcycle(dense, n_experts=4, top_k=top_k, every_other=every_other, seed=seed + 10).double().eval()
    kinds = [b.ffn_name for b in moe.blocks]
    assert kinds == (["swiglu", "moe"] * 2 if every_other else ["moe"] * 4)
    with torch.no_grad():  # a strongly opinionated random router: the routing itself must not matter
        for b in moe.blocks:
            if b.ffn_name == "moe":
                b.ffn.router.proj.weight.normal_(0, 3.0)
    idx = torch.randint(0, 61, (3, 12))
    with torch.no_grad():
        a, b = dense(idx).logits, moe(idx).logits
    assert a.std() > 0.1
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    # The routing is genuinely spread over experts (not a degenerate single-expert case).
    loads = [m for blk in moe.blocks if blk.ffn_name == "moe" for m in [blk.ffn.metrics()]]
    assert max(sum(v > 0 for k, v in m.items() if k.startswith("load/")) for m in loads) >= 2


def test_upcycled_experts_diverge_after_training_step():
    moe = upcycle(_dense(0), n_experts=2, top_k=1).double()
    opt = torch.optim.SGD(moe.parameters(), lr=0.1)
    idx = torch.randint(0, 61, (2, 10))
    out = moe(idx, targets=idx)
    (out.loss + out.aux_loss).backward()
    opt.step()
    e = moe.blocks[0].ffn.experts
    assert not torch.equal(e.w_gate[0], e.w_gate[1])


def test_btx_merge_averages_non_ffn_and_stacks_ffns():
    models = [_dense(s) for s in range(3)]
    merged = btx_merge(models, top_k=2, seed=0).double()
    sds = [m.state_dict() for m in models]
    msd = merged.state_dict()
    for k in sds[0]:
        if ".ffn." in k:
            continue
        want = (sds[0][k] + sds[1][k] + sds[2][k]) / 3
        assert torch.equal(msd[k], torch.stack([sd[k] for sd in sds]).mean(0)), k
        torch.testing.assert_close(msd[k], want)
    for i, blk in enumerate(merged.blocks):
        assert blk.ffn.e == 3
        for j, m in enumerate(models):
            assert torch.equal(blk.ffn.experts.w_gate[j], m.blocks[i].ffn.gate.weight.t())
            assert torch.equal(blk.ffn.experts.w_up[j], m.blocks[i].ffn.up.weight.t())
            assert torch.equal(blk.ffn.experts.w_down[j], m.blocks[i].ffn.down.weight.t())


def test_btx_of_identical_branches_is_the_seed_model():
    seed_model = _dense(5)
    merged = btx_merge([seed_model, _dense(5)], top_k=1).double().eval()
    idx = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(merged(idx).logits, seed_model(idx).logits, rtol=1e-10, atol=1e-10)


def test_moe_from_config_in_decoder_with_aux_loss():
    cfg = ModelConfig(vocab_size=61, d_model=16, n_layer=2, n_head=2, d_ff=24, ffn="moe",
                      ffn_args={"moe": {"router": "softmax_ec", "n_experts": 4, "top_k": 1,
                                        "capacity_factor": 1.0, "importance_weight": 0.1}})
    torch.manual_seed(0)
    m = Decoder(cfg)
    idx = torch.randint(0, 61, (4, 8))
    out = m(idx, targets=idx)
    terms = [b.ffn.aux_terms for b in m.blocks]
    want = sum(0.01 * t["balance"] + 0.001 * t["z"] + 0.1 * t["importance"] for t in terms)
    torch.testing.assert_close(out.aux_loss, want)
    (out.loss + out.aux_loss).backward()
    assert m.blocks[0].ffn.router.proj.weight.grad.abs().sum() > 0
    assert m.blocks[0].ffn.experts.w_down.grad.abs().sum() > 0


def test_bad_moe_key_in_config_is_one_line_error():
    from lmlab.config import ConfigError

    with pytest.raises(ConfigError, match="ffn_args.moe.*n_expertz"):
        cfg = ModelConfig(d_model=16, n_head=2, ffn="moe", ffn_args={"moe": {"n_expertz": 4}})
        Decoder(cfg)


def test_moe_configs_validate():
    from pathlib import Path

    files = sorted(Path(__file__).resolve().parents[1].joinpath("configs", "moe").glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config(f)
        assert isinstance(cfg, RunConfig)
        m = Decoder(cfg.model.model_copy(update={"vocab_size": 64}))
        assert m(torch.randint(0, 64, (2, 8))).logits.shape == (2, 8, 64), f
