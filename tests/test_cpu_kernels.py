"""The group-wise int8 CPU kernel (lmlab.nn.cpu_kernels) against float64 dequantize-then-matmul, the PyTorch
fallback it uses without a compiler, its build cache, and one-line errors for malformed inputs."""
import os

import pytest
import torch

from lmlab.nn import cpu_kernels as ck


def _codes(n, k, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = torch.randint(0, 256, (n, k), generator=gen, dtype=torch.uint8)
    s = torch.rand(n, k // g, generator=gen) * 0.02 + 1e-4
    z = torch.randn(n, k // g, generator=gen) * 0.5
    w64 = (c.double().reshape(n, k // g, g) * s.double()[..., None] + z.double()[..., None]).reshape(n, k)
    return c, s, z, w64


@pytest.fixture(params=["kernel", "torch"])
def backend(request, monkeypatch):
    """Each test runs on the C kernel (skipped where it cannot be built) and on the PyTorch fallback."""
    if request.param == "torch":
        monkeypatch.setattr(ck, "_library", lambda: (None, "disabled (test)"))
    elif not ck.kernel_available():
        pytest.skip(f"C kernel unavailable: {ck.kernel_status()}")
    return request.param


@pytest.mark.parametrize("g", [16, 32, 64])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 9, 33])
def test_linear_equals_float64_twin(backend, g, m):
    n, k = 80, 192
    c, s, z, w64 = _codes(n, k, g, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(100 + m)) * 3
    y = ck.u8g_linear(x, c, s, z, g)
    ref = x.double() @ w64.T
    assert y.dtype == torch.float32 and y.shape == (m, n)
    # fp32 products and sums: a few ulps of the terms' scale, far inside bf16's 2^-8
    assert (y.double() - ref).abs().max() <= 1e-5 * (x.double().abs() @ w64.abs().T).max()


def test_threads_split_the_rows_and_change_nothing():
    """A weight past the threading threshold gives the same bits on 1, 2 and 3 threads (rows are split, each row's
    arithmetic is the same)."""
    if not ck.kernel_available():
        pytest.skip(f"C kernel unavailable: {ck.kernel_status()}")
    c, s, z, w64 = _codes(4100, 1024, 32, seed=7)                  # 4.2M weights; 4100 rows: a ragged last part
    x = torch.randn(3, 1024, generator=torch.Generator().manual_seed(8))
    before = torch.get_num_threads()
    try:
        ys = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            ys.append(ck.u8g_linear(x[:1], c, s, z, 32))
            ys.append(ck.u8g_linear(x, c, s, z, 32))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(ys[i], ys[i % 2]) for i in range(2, 6))
    assert (ys[1].double() - x.double() @ w64.T).abs().max() <= 1e-5 * (x.double().abs() @ w64.abs().T).max()


def test_blocked_path_spans_several_blocks(backend, monkeypatch):
    """More rows than ROWS_KERNEL go through dequantized blocks of BLOCK_ROWS output rows, the last one partial."""
    monkeypatch.setattr(ck, "BLOCK_ROWS", 32)
    c, s, z, w64 = _codes(100, 64, 32)
    x = torch.randn(ck.ROWS_KERNEL + 3, 64)
    assert torch.allclose(ck.u8g_linear(x, c, s, z, 32).double(), x.double() @ w64.T, atol=1e-4)


def test_dequantize_equals_formula(backend):
    c, s, z, w64 = _codes(48, 96, 32, seed=3)
    w = ck.u8g_dequantize(c, s, z, 32)
    assert w.dtype == torch.float32 and (w.double() - w64).abs().max() <= 1e-6 * w64.abs().max()


def test_empty_and_strided_inputs(backend):
    c, s, z, w64 = _codes(32, 64, 32)
    assert ck.u8g_linear(torch.zeros(0, 64), c, s, z, 32).shape == (0, 32)
    x = torch.randn(64, 6)[:, ::2].T                                  # (3, 64), not contiguous
    assert torch.allclose(ck.u8g_linear(x, c, s, z, 32).double(), x.double() @ w64.T, atol=1e-4)
    xb = x.to(torch.bfloat16)                                          # any float dtype: computed in fp32
    assert torch.allclose(ck.u8g_linear(xb, c, s, z, 32).double(), xb.double() @ w64.T, atol=1e-4)


@pytest.mark.parametrize("bad, match", [
    (dict(codes=torch.zeros(4, 64, dtype=torch.int8)), "codes must be uint8"),
    (dict(group=24), "multiple of 16"),
    (dict(group=48), "k % group_size"),
    (dict(scales=torch.ones(4, 3)), r"scales and zeros must be \(4, 2\)"),
    (dict(x=torch.ones(2, 63)), r"x must be \(m, 64\)"),
])
def test_malformed_inputs_raise_one_line(bad, match):
    kw = dict(x=torch.ones(2, 64), codes=torch.zeros(4, 64, dtype=torch.uint8), scales=torch.ones(4, 2),
              zeros=torch.zeros(4, 2), group=32)
    kw.update(bad)
    with pytest.raises(ValueError, match=match) as e:
        ck.u8g_linear(kw["x"], kw["codes"], kw["scales"], kw["zeros"], kw["group"])
    assert "\n" not in str(e.value)


def test_build_is_cached_and_a_failed_build_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_DATA", str(tmp_path))
    ck._library.cache_clear()
    try:
        if ck._compiler() is None:
            pytest.skip("no C compiler")
        path = ck._build(ck._compiler())
        assert path.parent == tmp_path / "kernels" and path.exists()
        mtime = path.stat().st_mtime_ns
        assert ck._build(ck._compiler()) == path and path.stat().st_mtime_ns == mtime      # reused, not rebuilt
        assert [p.name for p in path.parent.iterdir()] == [path.name]                      # no temporary left
        monkeypatch.setenv("CC", "false")                      # a "compiler" that fails: warned, PyTorch runs
        monkeypatch.setenv("LMLAB_DATA", str(tmp_path / "other"))
        ck._library.cache_clear()
        with pytest.warns(UserWarning, match="C kernel unavailable"):
            assert not ck.kernel_available()
        assert ck.kernel_status().startswith("build failed: false exited 1")
        c, s, z, w64 = _codes(16, 32, 32)
        x = torch.randn(2, 32)
        assert torch.allclose(ck.u8g_linear(x, c, s, z, 32).double(), x.double() @ w64.T, atol=1e-4)
        monkeypatch.setenv(ck.ENV, "0")
        ck._library.cache_clear()
        assert ck.kernel_status() == "disabled ($LMLAB_CPU_KERNELS=0)"
    finally:
        ck._library.cache_clear()


def test_kernel_status_names_the_library():
    if ck.kernel_available():
        path = ck.kernel_status().removeprefix("compiled: ")
        assert os.path.exists(path) and path.endswith(".so")
    else:
        assert ck.kernel_status()
