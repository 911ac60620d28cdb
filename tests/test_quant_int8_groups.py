"""Int8Linear with input groups (lmlab.nn.quant): w ≈ r[n]·c[j]·q + z[n, j], the activation scaled by c before one
int8 kernel call, the zero points added as (group sums of x) @ zᵀ. Checked against float64 twins on tiny layers."""
import pytest
import torch
from torch import nn

from _quant_setup import tiny_decoder
from lmlab.config import ConfigError, ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.nn.quant import (Int8Linear, fit_row_col_steps, naive_int8_grouped_weight, naive_int8_weight, naive_linear,
                            quantize_, quantize_int8_grouped_weight, quantize_int8_weight)

G = 8   # input group size of the tiny layers


def _q4_1_like(n=32, k=64, seed=0):
    """A layer whose weights are asymmetric 4-bit blocks of G inputs, each block with its own step and minimum
    (what a Q4_1 GGUF holds): the per-row grid fits them badly."""
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(n, k // G, generator=g) * torch.logspace(-2, 0, k // G)[None] + 1e-3   # steps vary by group
    lo = -7.5 * d + 0.5 * d * torch.randn(n, k // G, generator=g)                          # off-centre minima
    q = torch.randint(0, 16, (n, k), generator=g).float()
    lin = nn.Linear(k, n, bias=True)
    with torch.no_grad():
        lin.weight.copy_(q * d.repeat_interleave(G, 1) + lo.repeat_interleave(G, 1))
    return lin


def test_fit_row_col_steps_covers_every_block_and_is_exact_on_rank_one():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(7, 5, generator=g) + 0.1
    r, c = fit_row_col_steps(a)
    e = r[:, None] * c[None]
    assert (e >= a * (1 - 1e-6)).all()                            # every block's codes fit -127..127
    assert torch.isclose(c.log().mean(), torch.tensor(0.0), atol=1e-6)
    # each row and each column has a block that binds (else that factor could shrink)
    tight = torch.isclose(e, a, rtol=1e-5)
    assert tight.any(1).all() and tight.any(0).all()
    u, v = torch.tensor([0.5, 2.0, 3.0]), torch.tensor([1.0, 0.25, 4.0, 2.0])
    r, c = fit_row_col_steps(u[:, None] * v[None])               # a rank-1 need is met exactly
    assert torch.allclose(r[:, None] * c[None], u[:, None] * v[None], rtol=1e-5)


@pytest.mark.parametrize("zero_points", [True, False])
@pytest.mark.parametrize("init", ["lsq", "row"])
def test_zero_rows_groups_and_blocks_need_no_step(zero_points, init):
    """All-zero rows, input groups and single blocks constrain nothing: they quantize to exact zeros and the
    other blocks keep their half-step bound; from init="row" no block's step exceeds per-row int8's."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(6, 64, generator=g)
    w[2], w[:, 8:16], w[4, :8] = 0, 0, 0
    q, r, c, z = quantize_int8_grouped_weight(w, G, zero_points, init=init)
    assert torch.isfinite(r).all() and torch.isfinite(c).all() and (r > 0).all() and (c > 0).all()
    err = naive_int8_grouped_weight(q, r, c, z, G) - w.double()
    assert (err[w == 0] == 0).all()
    step = (r.double()[:, None] * c.double()[None]).repeat_interleave(G, 1)
    assert ((err.abs() <= step / 2 + 1e-6) | (w == 0)).all()
    if init == "row":
        wb = w.reshape(6, -1, G)
        half = (wb.amax(-1) - wb.amin(-1)) / 2 if zero_points else wb.abs().amax(-1)   # what each block needs
        row_step = half.amax(1).double() / 127
        nonzero = row_step > 0
        assert (step[nonzero] <= row_step[nonzero, None] * (1 + 1e-6)).all()


@pytest.mark.parametrize("zero_points", [True, False])
def test_grouped_weight_equals_float64_twin_and_beats_per_row(zero_points):
    lin = _q4_1_like()
    w0 = lin.weight.double()
    q, r, c, z = quantize_int8_grouped_weight(lin.weight, G, zero_points)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and c.shape == (64 // G,)
    assert (z is not None) == zero_points
    w = naive_int8_grouped_weight(q, r, c, z, G)
    step = (r.double()[:, None] * c.double()[None]).repeat_interleave(G, 1)
    assert ((w - w0).abs() <= step / 2 + 1e-6).all()                 # round-to-nearest on each block's grid
    err_row = (naive_int8_weight(*quantize_int8_weight(lin.weight)) - w0).norm()
    assert (w - w0).norm() < 0.8 * err_row                           # finer grids where the blocks are small
    layer = Int8Linear.from_float(lin, input_group_size=G, zero_points=zero_points, compute="fp32")
    assert torch.allclose(layer.dequantize().double(), w, rtol=1e-6, atol=1e-7)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(1))
    ref = naive_linear(x, w, lin.bias)
    y = layer(x)                                                     # exact kernel (fp32 scalar loop)
    assert y.shape == (2, 3, 32) and y.dtype == torch.float32
    assert (y.double() - ref).abs().max() < 1e-4 * ref.abs().max()


def test_grouped_compute_modes_and_state_dict():
    lin = _q4_1_like(seed=2)
    q, r, c, z = quantize_int8_grouped_weight(lin.weight, G)
    w = naive_int8_grouped_weight(q, r, c, z, G)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 64, generator=g)
    twin = naive_linear(x, w, lin.bias)
    # bf16x2: only each half's bf16 result rounding (≤ 2⁻⁸ of the x·c part) and O(2⁻¹⁶) of the input split remain
    layer = Int8Linear.from_float(lin, input_group_size=G, compute="bf16x2")
    kernel_part = naive_linear(x, w - z.double().repeat_interleave(G, 1))
    bound = 2 ** -8 * kernel_part.abs() + 2 ** -14 * naive_linear(x.abs(), w.abs()) + 1e-6
    assert ((layer(x).double() - twin).abs() <= bound).all()
    base = Int8Linear.from_float(lin, input_group_size=G)             # bf16: input rounded too
    assert (base(x).double() - twin).abs().max() < 3e-2 * twin.abs().max()
    assert base(x.bfloat16()).dtype == torch.bfloat16
    assert "input groups of 8, zero points" in repr(base)
    other = Int8Linear(64, 32, bias=True, input_group_size=G, zero_points=True)
    other.load_state_dict(base.state_dict())
    assert torch.equal(other(x), base(x))


def test_quantize_decoder_with_input_groups():
    model, ids, ref = tiny_decoder()
    quantize_(model, "int8", input_group_size=32, compute="bf16x2")
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.input_group_size == 32 and m.zeros is not None for m in layers)
    with torch.no_grad():
        err = (model(ids).logits - ref).abs().max().item() / ref.std().item()
    assert 0 < err < 0.03


def test_input_group_errors_are_one_line():
    model = Decoder(ModelConfig(vocab_size=64, d_model=48, n_layer=1, n_head=4, max_seq_len=32, d_ff=96))
    with pytest.raises(ConfigError, match=r"layer blocks\.0\.mixer\.q_proj has in_features=48, not divisible by "
                                          r"int8 input group size 32"):
        quantize_(model, "int8", input_group_size=32)
    assert type(model.blocks[0].mixer.q_proj) is nn.Linear          # nothing replaced on error
    with pytest.raises(ConfigError, match=r"input_group_size 16 is for int8 only"):
        quantize_(model, "int4", input_group_size=16)
    with pytest.raises(ConfigError, match=r"in_features=40, not divisible by int8 input group size 32"):
        Int8Linear.from_float(nn.Linear(40, 16), input_group_size=32)
    with pytest.raises(ConfigError, match=r"init 'svd' is not one of lsq, row"):
        fit_row_col_steps(torch.ones(2, 2), init="svd")


# ------------------------------------------------------------------------------------------------ CLI
def _ckpt_fixture():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_quant_cli import ckpt as fixture   # the tiny lmlab checkpoint (d_model 64, d_ff 128)

    return fixture


ckpt = _ckpt_fixture()


def test_cli_int8_input_group_builds_grouped_layers(ckpt, capsys):
    from lmlab.cli import main
    from lmlab.infer.cli import load_model

    be = load_model(f"lmlab:{ckpt}", quantize="int8", int8_input_group=32, quant_compute="bf16x2")
    layers = [m for n, m in be.model.named_modules() if n.startswith("blocks.") and isinstance(m, Int8Linear)]
    assert len(layers) == 2 * 7 and all(m.input_group_size == 32 and m.compute == "bf16x2" for m in layers)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", f"lmlab:{ckpt}", "--quantize", "int8", "--int8-input-group", "32",
              "--max-tokens", "3", "hello"])
    assert e.value.code in (0, None) and capsys.readouterr().out.strip()


@pytest.mark.parametrize("argv,needles", [
    (["generate", "--model", "lmlab:{ckpt}", "--int8-input-group", "32", "hi"],
     ["--int8-input-group 32", "needs --quantize int8"]),
    (["generate", "--model", "lmlab:{ckpt}", "--quantize", "int8", "--int8-input-group", "48", "hi"],
     ["blocks.0.mixer.q_proj", "in_features=64", "int8 input group size 48"]),
    (["generate", "--quantize", "int8", "--int8-input-group", "0", "hi"], ["--int8-input-group", "0"]),
])
def test_cli_int8_input_group_errors_one_line(argv, needles, ckpt, capsys):
    from lmlab.cli import main

    with pytest.raises(SystemExit) as e:
        main([a.replace("{ckpt}", str(ckpt)) for a in argv])
    assert e.value.code not in (0, None)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
