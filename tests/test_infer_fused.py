"""The fused engine (lmlab.infer.fused): concatenated linears equal their parts, the fused layer loop generates
what the module-path engine and a full recompute generate, and models it cannot run fall back."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lmlab.backend import GenerationConfig
from lmlab.config import ModelConfig
from lmlab.infer.engine import Engine
from lmlab.infer.fused import FusedEngine, fusable, fuse_linears, make_engine
from lmlab.models.decoder import Decoder
from lmlab.nn.quant import Int4Linear, Int8Linear, quantize_

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import CharTok  # noqa: E402
from test_infer_engine import PROMPTS, greedy_reference, tiny  # noqa: E402


def _no_stop(engine):
    engine.stop_ids = set()
    return engine


@pytest.mark.parametrize("kind", ["float", "int8", "int4"])
def test_fuse_linears_equals_the_concatenated_outputs(kind):
    torch.manual_seed(0)
    parts = [nn.Linear(64, n, bias=kind == "float") for n in (64, 32, 32)]
    if kind == "int8":
        parts = [Int8Linear.from_float(p) for p in parts]
    elif kind == "int4":
        parts = [Int4Linear.from_float(p, group_size=32) for p in parts]
    fused = fuse_linears(parts)
    assert type(fused) is type(parts[0]) and fused.out_features == 128
    x = torch.randn(5, 64)
    if kind != "float":
        x = x.to(torch.bfloat16)
    with torch.no_grad():
        want = torch.cat([p(x) for p in parts], -1)
        got = fused(x)
    assert torch.equal(got, want) if kind != "float" else torch.allclose(got, want, atol=1e-6)
    assert fuse_linears(parts[:1]) is parts[0]
    with pytest.raises(ValueError, match="mixed kinds"):
        fuse_linears([nn.Linear(64, 8), Int8Linear.from_float(nn.Linear(64, 8))])


@pytest.mark.parametrize("hydragen", [True, False])
def test_fused_greedy_equals_full_recompute(hydragen):
    m, tok = tiny(), CharTok()   # float64: the fused loop computes the same products, so the same argmax
    eng = _no_stop(FusedEngine(m, tok, hydragen=hydragen))
    ids = [tok.encode(p) for p in PROMPTS]
    out = eng.generate_ids(ids, GenerationConfig(max_new_tokens=12, n=2))
    for p, row in zip(ids, out):
        ref = greedy_reference(m, p, 12)
        for c in row:
            assert c.token_ids == ref
    one = eng.generate_ids([ids[0]], GenerationConfig(max_new_tokens=12))[0][0]   # batch 1: the dense path
    assert one.token_ids == greedy_reference(m, ids[0], 12)


def test_fused_samples_like_the_module_engine_fp32():
    m, tok = tiny(torch.float32), CharTok()
    ids = [tok.encode(p) for p in PROMPTS]
    gen = GenerationConfig(max_new_tokens=10, n=3, temperature=0.8, top_p=0.9, seed=5)
    a = _no_stop(Engine(m, tok)).generate_ids(ids, gen)
    b = _no_stop(FusedEngine(m, tok)).generate_ids(ids, gen)
    assert [[c.token_ids for c in row] for row in a] == [[c.token_ids for c in row] for row in b]


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_fused_quantized_logits_match_the_module_engine(scheme):
    torch.manual_seed(0)
    m, tok = Decoder(ModelConfig(vocab_size=256, d_model=64, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=256,
                                 d_ff=128, tie_embeddings=False)).eval(), CharTok()
    with torch.no_grad():
        m.head.weight.mul_(8.0)
    quantize_(m, scheme, group_size=32)
    fused, plain = FusedEngine(m, tok), Engine(m, tok)
    assert fused.compute_dtype == torch.bfloat16          # the kernels' own input dtype: no casts around them
    ids = [tok.encode(p) for p in PROMPTS[:3]]
    gen = GenerationConfig(max_new_tokens=8)
    got, want = (e._generate_ids(ids, gen, None, True) for e in (_no_stop(fused), _no_stop(plain)))
    logits = {}
    for name, e in (("fused", fused), ("plain", plain)):   # prefill logits of the last prompt token
        from lmlab.infer.engine import TreeKVCache, _Plan

        p = ids[0]
        plan = _Plan(phase="level1", L0=0, R=len(p), group=torch.zeros(1, dtype=torch.long),
                     l1_len=torch.tensor([len(p)]))
        caches = [TreeKVCache(plan, 1, m.cfg.kv_heads, m.cfg.head_dim, 1, "cpu", torch.float32) for _ in m.blocks]
        with torch.no_grad():
            logits[name] = e._forward(torch.tensor([p]), torch.arange(len(p))[None], caches)
    scale = logits["plain"].abs().max()
    assert (logits["fused"] - logits["plain"]).abs().max() <= 0.02 * scale   # bf16 rounding of silu·up only
    agree = sum(a[0].token_ids == b[0].token_ids for a, b in zip(got, want))
    assert agree >= 2


def _near_tie_head(m, rows: int, seed: int = 1) -> torch.Tensor:
    """States x (rows, d) and a head where, for row r, token 10 + r scores 30.00 and token 20 + r 30.03 (bf16
    steps by 0.125 there; int8's per-row grid errs by more)."""
    torch.manual_seed(seed)
    x = torch.randn(rows, m.cfg.d_model)
    with torch.no_grad():
        w = m.head.weight                                  # (V, d), fp32
        for r in range(rows):
            u = x[r] / x[r].norm()
            w[10 + r] = u * (30.00 / float(x[r].norm()))
            w[20 + r] = u * (30.03 / float(x[r].norm()))
    return x


def test_bf16_head_keeps_the_float_heads_argmax():
    """Two logits 0.03 apart at ~30, where bf16 steps by 0.125, tie in the bf16 GEMM; the refined logits keep the
    float head's argmax, every logit near the top is the float head's value, the rest are bf16-close."""
    m, tok = tiny(torch.float32), CharTok()
    x = _near_tie_head(m, 3)
    w = m.head.weight
    fast = FusedEngine(m, tok, head_dtype=torch.bfloat16)
    with torch.no_grad():
        exact = x @ w.T
        plain = fast.head(x.to(torch.bfloat16)).float()    # the bf16 GEMM alone
        got = fast._refined_logits(x)
    assert sum(bool(plain[r, 10 + r] == plain[r, 20 + r]) for r in range(3)) >= 2   # tied: argmax by index
    assert got.argmax(-1).tolist() == exact.argmax(-1).tolist() == [20, 21, 22]
    near = exact >= exact.amax(-1, keepdim=True) - 0.1
    assert torch.allclose(got[near], exact[near], atol=1e-4)
    assert (got - exact).abs().max() <= 2 ** -7 * float(x.norm(dim=-1).max() * w.detach().norm(dim=1).max()) + 0.25


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_bf16_head_bound_holds_and_keeps_the_float_argmax(rows):
    """Near-ties and unconstrained states: the copy alone gets a tie wrong, every bf16 logit is within the module
    doc's e_j of the float one, the refined argmax is the float head's, every logit within 0.5 of the top is the
    float head's, and the rest stay within e_j."""
    m, tok = tiny(torch.float32), CharTok()
    x = _near_tie_head(m, rows)
    x = torch.cat([x, torch.randn(rows, m.cfg.d_model) * 3])                     # and unconstrained states
    w = m.head.weight
    fast = FusedEngine(m, tok, head_dtype=torch.bfloat16)
    low = fast._low_head
    with torch.no_grad():
        exact = x @ w.T
        plain = low.layer(x.to(torch.bfloat16)).float()
        got = fast._refined_logits(x)
        xr = x.to(torch.bfloat16).float()
        a = (xr - x).norm(dim=-1, keepdim=True) + x.shape[1] * 2 ** -23 * x.norm(dim=-1, keepdim=True)
        e = a * low.wnorm + x.norm(dim=-1, keepdim=True) * low.delta + 2 ** -8 * plain.abs()
    assert ((plain - exact).abs() <= e).all()                                   # the bound holds
    assert any(bool(plain[r, 10 + r] >= plain[r, 20 + r]) for r in range(rows))  # the copy alone gets it wrong
    assert got.argmax(-1).tolist() == exact.argmax(-1).tolist()
    assert got.argmax(-1)[:rows].tolist() == [20 + r for r in range(rows)]
    near = exact >= exact.amax(-1, keepdim=True) - 0.5
    assert torch.allclose(got[near], exact[near], atol=1e-4)
    assert ((got - exact).abs() <= e).all()


def test_bf16_head_generates_the_float_heads_greedy_tokens():
    m, tok = tiny(torch.float32), CharTok()
    ref, fast = _no_stop(FusedEngine(m, tok)), _no_stop(FusedEngine(m, tok, head_dtype=torch.bfloat16))
    ids = [tok.encode(p) for p in PROMPTS]
    for one in ids:                                                              # batch 1: the dense path
        assert (fast.generate_ids([one], GenerationConfig(max_new_tokens=10))[0][0].token_ids
                == ref.generate_ids([one], GenerationConfig(max_new_tokens=10))[0][0].token_ids)
    wide = GenerationConfig(max_new_tokens=8, n=3)                               # the prefix tree
    assert ([[c.token_ids for c in r] for r in fast.generate_ids(ids, wide)]
            == [[c.token_ids for c in r] for r in ref.generate_ids(ids, wide)])


def test_head_dtype_rejects_other_dtypes():
    m, tok = tiny(torch.float32), CharTok()
    with pytest.raises(ValueError, match="head_dtype torch.float16 for a torch.float32 head"):
        FusedEngine(m, tok, head_dtype=torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_the_matmul(dtype, bias):
    """The oneDNN-packed linear computes x @ Wᵀ (+ b) to the dtype's rounding (against a float64 product);
    float64 (no oneDNN kernel) gets None, so the engine keeps the module."""
    from lmlab.infer.fused import packed_linear

    torch.manual_seed(0)
    lin = nn.Linear(96, 160, bias=bias).to(dtype)
    call = packed_linear(lin.weight, lin.bias)
    if call is None:
        pytest.skip("no oneDNN linear in this torch build")
    for rows in (1, 7, 33):
        x = torch.randn(rows, 96).to(dtype)
        want = (x.double() @ lin.weight.double().T + (lin.bias.double() if bias else 0)).detach()
        tol = 2 ** -7 if dtype == torch.bfloat16 else 1e-5
        assert torch.allclose(call(x).double(), want, rtol=tol, atol=tol * float(want.abs().max()))
    assert packed_linear(lin.weight.double()) is None


def test_fused_engine_runs_packed_linears_for_float_weights():
    m, tok = tiny(torch.float32), CharTok()
    eng = FusedEngine(m, tok)
    if eng.layers[0].qkv is eng.layers[0].modules[0]:
        pytest.skip("no oneDNN linear in this torch build")
    assert not isinstance(eng.layers[0].qkv, nn.Module) and not isinstance(eng._head_call, nn.Module)
    ids = tok.encode(PROMPTS[0])
    got = _no_stop(eng).generate_ids([ids], GenerationConfig(max_new_tokens=8))[0][0].token_ids
    assert got == _no_stop(Engine(m, tok)).generate_ids([ids], GenerationConfig(max_new_tokens=8))[0][0].token_ids


def test_bf16_head_copy():
    m, tok = tiny(torch.float32), CharTok()
    eng = FusedEngine(m, tok, head_dtype=torch.bfloat16)
    assert eng.head.weight.dtype == torch.bfloat16 and m.head.weight.dtype == torch.float32
    assert torch.allclose(eng.head.weight.float(), m.head.weight, rtol=2 ** -8)
    ids = tok.encode(PROMPTS[0])
    a = _no_stop(eng).generate_ids([ids], GenerationConfig(max_new_tokens=6))[0][0].token_ids
    assert len(a) == 6


def test_unfusable_models_fall_back_with_a_reason():
    from lmlab.nn.peft.lora import apply_lora

    m, tok = tiny(torch.float32), CharTok()
    apply_lora(m, r=2, target_modules=("q_proj",))
    assert "PEFT" in fusable(m)
    assert type(make_engine(m, tok)) is Engine
    with pytest.raises(ValueError, match="FusedEngine: block 0"):
        FusedEngine(m, tok)
    torch.manual_seed(0)
    rec = Decoder(ModelConfig(vocab_size=256, d_model=48, n_layer=2, n_head=6, max_seq_len=64, mixer="hgrn2")).eval()
    assert "needs full-context Attention" in fusable(rec) and type(make_engine(rec, tok)) is Engine
    ok = tiny(torch.float32)
    assert fusable(ok) is None and type(make_engine(ok, tok)) is FusedEngine
    assert type(make_engine(ok, tok, fused=False)) is Engine


def test_extra_embeddings_take_the_module_path():
    m, tok = tiny(torch.float32), CharTok()
    extra = torch.randn(3, m.cfg.d_model)
    p = tok.encode("look: ") + [256, 257, 258] + tok.encode(" what?")
    gen = GenerationConfig(max_new_tokens=6)
    a = _no_stop(Engine(m, tok)).generate_ids([p], gen, extra_embeds=extra)[0][0].token_ids
    b = _no_stop(FusedEngine(m, tok)).generate_ids([p], gen, extra_embeds=extra)[0][0].token_ids
    assert a == b


def test_local_backend_runs_the_fused_engine():
    from lmlab.infer.backend_impls import LocalBackend

    m, tok = tiny(torch.float32), CharTok()
    assert type(LocalBackend(m, tok).engine) is FusedEngine
    assert type(LocalBackend(m, tok, fused=False).engine) is Engine
    assert LocalBackend(m, tok, head_dtype=torch.bfloat16).engine.head.weight.dtype == torch.bfloat16

