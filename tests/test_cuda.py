"""CUDA paths: run where a GPU is present, skipped elsewhere (CI has none).

Each test checks a GPU result against the same computation on the CPU in float64 or float32, so a wrong
kernel choice, a dtype slip or a device mix-up under autocast shows up as a numeric difference.
"""
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

sys.path.insert(0, str(Path(__file__).parent))


def test_hydragen_cuda_equals_naive_fp32_and_bf16():
    from lmlab.nn.hydragen import PrefixLevel, hydragen_attention, naive_hydragen_attention

    gen = torch.Generator().manual_seed(0)
    n, h, kv, d = 12, 9, 3, 64
    group = torch.tensor([0] * 5 + [1] * 4 + [2] * 3)
    q = torch.randn(n, h, 1, d, generator=gen)
    k0, v0 = torch.randn(1, kv, 300, d, generator=gen), torch.randn(1, kv, 300, d, generator=gen)
    k1, v1 = torch.randn(3, kv, 40, d, generator=gen), torch.randn(3, kv, 40, d, generator=gen)
    ks, vs = torch.randn(n, kv, 9, d, generator=gen), torch.randn(n, kv, 9, d, generator=gen)
    l1, sl = torch.tensor([40, 17, 33]), torch.randint(1, 10, (n,), generator=gen)

    def run(dev, dtype, fn):
        c = lambda x: x.to(dev, dtype)  # noqa: E731
        lv = [PrefixLevel(c(k0), c(v0), torch.zeros(n, dtype=torch.long, device=dev)),
              PrefixLevel(c(k1), c(v1), group.to(dev), l1.to(dev))]
        return fn(c(q), lv, c(ks), c(vs), sl.to(dev)).double().cpu()

    ref = run("cpu", torch.float64, naive_hydragen_attention)
    assert (run("cuda", torch.float32, hydragen_attention) - ref).abs().max() < 1e-4
    assert (run("cuda", torch.float32, naive_hydragen_attention) - ref).abs().max() < 1e-4
    assert (run("cuda", torch.bfloat16, hydragen_attention) - ref).abs().max() < 5e-2


def test_decoder_cuda_matches_cpu_and_kv_cache_decode():
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    torch.manual_seed(0)
    m = Decoder(ModelConfig(vocab_size=128, d_model=64, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=64)).eval()
    x = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        cpu = m(x).logits
        mc = m.to("cuda")
        gpu = mc(x.cuda()).logits.cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf = mc(x.cuda()).logits.float().cpu()
    assert (gpu - cpu).abs().max() < 1e-3
    assert (bf - cpu).abs().max() < 0.25


def test_trainer_runs_bf16_on_cuda(tmp_path, synthetic_data):
    import _train_script as ts

    from lmlab.train.trainer import train

    cfg = ts.cfg(steps=60, ckpt_interval=0, dropout=0.0, lr=1e-2)
    cfg.train.device = "cuda"
    res = train(cfg, tmp_path, data=synthetic_data)
    assert res.curves["train_loss"][-1][1] < res.curves["train_loss"][0][1] - 0.3
    assert all(v == v and v < 10 for v in res.val_losses.values())  # finite per-domain validation losses


def test_engine_greedy_same_on_cuda_and_cpu():
    from _helpers import CharTok

    from lmlab.backend import GenerationConfig
    from lmlab.config import ModelConfig
    from lmlab.infer.engine import Engine
    from lmlab.models.decoder import Decoder

    torch.manual_seed(0)
    m = Decoder(ModelConfig(vocab_size=256, d_model=48, n_layer=2, n_head=6, n_kv_head=2, max_seq_len=256,
                            tie_embeddings=False)).eval()
    with torch.no_grad():
        m.head.weight.mul_(8.0)
    tok = CharTok()
    ids = [tok.encode(p) for p in ["System: be brief. Q: hi", "System: be brief. Q: name a color"]]
    gen = GenerationConfig(max_new_tokens=10, n=2)
    outs = {}
    for dev, hyd in (("cpu", False), ("cuda", True), ("cuda", False)):
        eng = Engine(m.to(dev), tok, hydragen=hyd, stop_token_ids=[])
        eng.stop_ids = set()
        outs[(dev, hyd)] = [[c.token_ids for c in row] for row in eng.generate_ids(ids, gen)]
    assert outs[("cuda", True)] == outs[("cpu", False)] == outs[("cuda", False)]
