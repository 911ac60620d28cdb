"""Weight-only int8/int4 layers (lmlab.nn.quant): nibble packing, the kernels against float64
dequantize-then-matmul twins, quantize_ on a tiny Decoder, and one-line errors."""
import pytest
import torch
from torch import nn

from _quant_setup import CFG, tiny_decoder
from lmlab.config import ConfigError, ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.nn.quant import (Int4Linear, Int8Linear, naive_int4_weight, naive_int8_weight, naive_linear, pack_int4,
                            quantize_, quantize_int4_weight, quantize_int8_weight, unpack_int4)


@pytest.mark.parametrize("block", [None, 32, 8])
def test_pack_unpack_round_trip(block):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (5, 3, 64), generator=g, dtype=torch.uint8)
    p = pack_int4(q, block)
    assert p.shape == (5, 3, 32) and p.dtype == torch.uint8
    assert torch.equal(unpack_int4(p, block), q)


def test_pack_layouts_by_hand():
    q = torch.arange(32, dtype=torch.uint8) % 16                 # 0..15, 0..15
    assert pack_int4(q)[:2].tolist() == [0x10, 0x32]              # neighbours: q0 low, q1 high
    assert pack_int4(q, 32)[:2].tolist() == [0x00, 0x11]          # GGUF Q4_1: q[j] low, q[j+16] high
    with pytest.raises(ConfigError, match="multiple of 32"):
        pack_int4(torch.zeros(3, 48, dtype=torch.uint8), 32)


def _layer(n=48, k=128, bias=False, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(torch.linspace(0.2, 3.0, n)[:, None])       # rows of different ranges
    return lin


@pytest.mark.parametrize("bias", [False, True])
def test_int8_equals_float64_twin(bias):
    lin = _layer(bias=bias)
    q, s = quantize_int8_weight(lin.weight)
    w = naive_int8_weight(q, s)
    assert (w - lin.weight.double()).abs().max() <= s.double().max() / 2 + 1e-7   # round-to-nearest: ≤ half a step
    layer = Int8Linear.from_float(lin)
    assert torch.equal(layer.dequantize().double(), w.float().double())
    x = torch.randn(2, 3, 128)                                      # any leading dims
    ref = naive_linear(x, w, lin.bias)
    exact = Int8Linear.from_float(lin, compute="fp32")              # the kernel in fp32 (scalar loop)
    y = exact(x)
    assert y.shape == (2, 3, 48) and y.dtype == torch.float32
    assert (y.double() - ref).abs().max() < 1e-4 * ref.abs().max()   # fp32 accumulation vs float64
    _check_bf16(layer, x, ref, naive_int8_weight(q, s.bfloat16().float()), lin.bias)


@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_equals_float64_twin(group_size):
    lin = _layer(k=256, bias=True)
    q, d, lo = quantize_int4_weight(lin.weight, group_size)
    assert q.max() <= 15 and d.shape == (48, 256 // group_size)
    w = naive_int4_weight(q, d, lo, group_size)
    assert (w - lin.weight.double()).abs().max() <= d.double().max() / 2 + 1e-6
    layer = Int4Linear.from_float(lin, group_size=group_size)
    # the kernel reads (q - 8)·d + (lo + 8d): equal to d·q + lo up to fp32 rounding of the zero point
    assert (layer.dequantize().double() - w).abs().max() < 1e-6 * w.abs().max()
    x = torch.randn(4, 256)
    ref = naive_linear(x, w, lin.bias)
    y = Int4Linear.from_float(lin, group_size=group_size, compute="fp32")(x)   # fp32 kernel
    assert (y.double() - ref).abs().max() < 1e-4 * ref.abs().max()
    sz = layer.scales_and_zeros.bfloat16().double()                 # what the bf16 kernel reads
    w_bf16 = (q.double() - 8) * sz[..., 0].T.repeat_interleave(group_size, 1) + sz[..., 1].T.repeat_interleave(group_size, 1)
    _check_bf16(layer, x[None], ref, w_bf16, lin.bias)
    assert f"group_size={group_size}" in repr(layer)
    # the state dict holds the portable nibbles; loading it rebuilds the kernel's copy
    other = Int4Linear(256, 48, group_size, bias=True)
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other(x), layer(x)) and "packed" not in layer.state_dict()


def _check_bf16(layer, x, ref, w_bf16, bias):
    """Default compute dtype: input and scales rounded to bf16, fp32 accumulation, a bf16 result."""
    y = layer(x)
    assert y.dtype == x.dtype and y.shape == x.shape[:-1] + (layer.out_features,)
    twin = naive_linear(x.bfloat16().double(), w_bf16, bias)          # the same roundings, in float64
    tol = 2 ** -8 * twin.abs().max() + 1e-3 * ref.abs().max()         # bf16 output rounding + accumulation
    assert (y.double() - twin).abs().max() < tol
    assert (y.double() - ref).abs().max() < 3e-2 * ref.abs().max()    # and near the fp32-input result
    assert layer(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_bf16x2_equals_float64_twin(scheme):
    """compute="bf16x2": x = hi + lo in bf16, both halves in one kernel call, summed in fp32 (int8: its per-row
    scale applied in fp32 after the kernel). Against the float64 twin of the weights the kernel reads, the error
    is the bf16 rounding of each half's result (≤ 2⁻⁸ relative) plus O(2⁻¹⁶) of Σ|x||w| — a bound the bf16 path
    (input rounded to 2⁻⁸) breaks."""
    lin = _layer(k=256, bias=True)
    if scheme == "int8":
        q, s = quantize_int8_weight(lin.weight)
        w = naive_int8_weight(q, s)                                     # fp32 scales, applied outside the kernel
        layer, base = Int8Linear.from_float(lin, compute="bf16x2"), Int8Linear.from_float(lin)
    else:
        layer, base = Int4Linear.from_float(lin, 32, compute="bf16x2"), Int4Linear.from_float(lin, 32)
        q = unpack_int4(layer.qweight).double()
        sz = layer.scales_and_zeros.bfloat16().double().repeat_interleave(32, dim=0)   # (k, n, 2) as read
        w = (q - 8) * sz[..., 0].T + sz[..., 1].T
    g = torch.Generator().manual_seed(1)
    for x in (torch.randn(3, 5, 256, generator=g), 1 + 0.01 * torch.randn(2, 256, generator=g)):   # 2nd: cancels
        twin = naive_linear(x, w, lin.bias)
        bound = 2 ** -8 * twin.abs() + 2 ** -14 * naive_linear(x.abs(), w.abs())
        y = layer(x)
        assert y.dtype == torch.float32 and y.shape == twin.shape
        assert ((y.double() - twin).abs() <= bound).all()
        assert ((base(x).double() - twin).abs() > bound).any()           # the one-half path does not meet it
    assert layer(x.bfloat16()).dtype == torch.bfloat16                  # bf16 in: lo = 0, still one call
    assert "compute=bf16x2" in repr(layer)
    with pytest.raises(ConfigError, match=r"compute 'fp16' is not one of bf16, bf16x2, fp32"):
        Int8Linear(16, 16, compute="fp16")


def test_quantize_decoder_keeps_logits_close():
    model, ids, ref = tiny_decoder()
    scale = ref.std().item()
    for scheme, tol in (("int8", 0.03), ("int4", 0.3)):
        m = Decoder(CFG).eval()
        m.load_state_dict(model.state_dict())
        assert quantize_(m, scheme) is m
        kinds = {type(mod).__name__ for name, mod in m.named_modules() if name.startswith("blocks.")}
        assert ("Int8Linear" if scheme == "int8" else "Int4Linear") in kinds and "Linear" not in kinds
        assert type(m.head) is nn.Linear                           # skipped by default
        with torch.no_grad():
            got = m(ids).logits
        err = (got - ref).abs().max().item() / scale
        assert 0 < err < tol, (scheme, err)
    m = Decoder(CFG).eval()
    quantize_(m, "int8", skip=())
    assert isinstance(m.head, Int8Linear)
    assert m.embed.weight.dtype == torch.float32                   # the tied embedding stays float


def test_quantize_compute_modes_on_a_decoder():
    """quantize_(compute=...) reaches every layer; bf16x2 logits sit closer to the exact (fp32 kernel) ones."""
    model, ids, _ = tiny_decoder()
    for scheme in ("int8", "int4"):
        logits = {}
        for compute in ("fp32", "bf16", "bf16x2"):
            m = Decoder(CFG).eval()
            m.load_state_dict(model.state_dict())
            quantize_(m, scheme, compute=compute)
            assert {mod.compute for mod in m.modules() if isinstance(mod, (Int8Linear, Int4Linear))} == {compute}
            with torch.no_grad():
                logits[compute] = m(ids).logits
        err = {c: (logits[c] - logits["fp32"]).abs().max().item() for c in ("bf16", "bf16x2")}
        # int8: only the kernel's bf16 result rounding is left; int4 also keeps its scales in bf16
        assert 0 < err["bf16x2"] < err["bf16"] / (2 if scheme == "int8" else 1), (scheme, err)


def test_errors_are_one_line():
    model = Decoder(ModelConfig(vocab_size=64, d_model=48, n_layer=1, n_head=4, max_seq_len=32, d_ff=96))
    with pytest.raises(ConfigError, match=r"scheme 'int3' is not one of int8, int4"):
        quantize_(model, "int3")
    with pytest.raises(ConfigError, match=r"compute 'bf16x3' is not one of bf16, bf16x2, fp32"):
        quantize_(model, "int8", compute="bf16x3")
    with pytest.raises(ConfigError, match=r"group size 16"):
        quantize_(model, "int4", group_size=16)
    with pytest.raises(ConfigError, match=r"layer blocks\.0\.mixer\.q_proj has in_features=48, not divisible by group size 32"):
        quantize_(model, "int4", group_size=32)
    assert type(model.blocks[0].mixer.q_proj) is nn.Linear          # nothing replaced on error
    with pytest.raises(ConfigError, match="not divisible"):
        Int4Linear.from_float(nn.Linear(40, 16), group_size=32)
    with pytest.raises(ConfigError, match="out_features=40, not a multiple of 16"):
        Int4Linear.from_float(nn.Linear(64, 40), group_size=32)


@pytest.mark.parametrize("bias", [False, True])
def test_bf16_linear_equals_float64_twin(bias):
    """BF16Linear: the bf16-rounded weight and input, multiplied in float64, rounded once to bf16 at the end."""
    from lmlab.nn.quant import BF16Linear

    torch.manual_seed(0)
    lin = nn.Linear(96, 40, bias=bias)
    m = BF16Linear.from_float(lin)
    assert m.weight.dtype == torch.bfloat16 and torch.equal(m.dequantize(), lin.weight.detach().to(torch.bfloat16).float())
    x = torch.randn(7, 96)
    ref = naive_linear(x.to(torch.bfloat16).double(), m.weight.double(),
                       m.bias.double() if bias else None)
    y = m(x)
    assert y.dtype == torch.float32 and y.shape == (7, 40)
    assert torch.allclose(y.double(), ref, rtol=2 ** -7, atol=1e-3 * float(ref.abs().max()))
    m2 = BF16Linear(96, 40, bias=bias)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2(x), y)
    model, ids, ref_logits = tiny_decoder()
    quantize_(model, "bf16")
    assert type(model.blocks[0].mixer.q_proj) is BF16Linear and type(model.head) is nn.Linear
    with torch.no_grad():
        got = model(ids).logits
    assert (got - ref_logits).abs().max() <= 0.05 * ref_logits.abs().max()
    with pytest.raises(ConfigError, match="quantize bf16"):
        quantize_(tiny_decoder()[0], "bf16", compute="bf16x2")
