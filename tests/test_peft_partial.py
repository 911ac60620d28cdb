"""Partial LoRA: all-true mask == LoRA, all-false == base, masked gradients, fast path == naive twin."""
import pytest
import torch
from torch import nn

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.nn.peft import (PartialLoRALinear, apply_lora, apply_partial_lora, lora_layers,
                           naive_partial_lora_forward, set_token_mask, token_mask)


def tiny_decoder(seed=0):
    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, max_seq_len=32))


def copy_random_lora(*models, seed=1):
    g = torch.Generator().manual_seed(seed)
    layers = [lora_layers(m) for m in models]
    for n in layers[0]:
        a = torch.randn(layers[0][n].lora_A.weight.shape, generator=g) * 0.3
        b = torch.randn(layers[0][n].lora_B.weight.shape, generator=g) * 0.3
        for ls in layers:
            ls[n].lora_A.weight.data.copy_(a)
            ls[n].lora_B.weight.data.copy_(b)


TARGETS = ["q_proj", "v_proj", "o_proj", "up"]


def test_all_true_is_lora_all_false_is_base():
    base, lora, part = tiny_decoder(), tiny_decoder(), tiny_decoder()
    apply_lora(lora, r=3, alpha=6, target_modules=TARGETS)
    apply_partial_lora(part, r=3, alpha=6, target_modules=TARGETS)
    copy_random_lora(lora, part)
    idx = torch.randint(0, 64, (3, 11))
    with torch.no_grad():
        want_lora, want_base = lora(idx).logits, base(idx).logits
        with token_mask(part, torch.ones(3, 11, dtype=torch.bool)):
            torch.testing.assert_close(part(idx).logits, want_lora, rtol=1e-5, atol=1e-5)
        with token_mask(part, torch.zeros(3, 11, dtype=torch.bool)):
            torch.testing.assert_close(part(idx).logits, want_base, rtol=0, atol=0)
        assert (want_lora - want_base).abs().max() > 1e-3
        torch.testing.assert_close(part(idx).logits, want_base)        # no mask set -> when_unset="base"


def test_fast_path_matches_naive_values_and_grads_float64():
    torch.manual_seed(0)
    lin = nn.Linear(9, 6).double()
    layer = PartialLoRALinear(lin, r=2, alpha=3.0)
    layer.lora_B.weight.data.normal_()
    mask = torch.rand(2, 7) > 0.5
    layer.holder.mask = mask
    x = torch.randn(2, 7, 9, dtype=torch.float64, requires_grad=True)
    A = layer.lora_A.weight.detach().clone().requires_grad_()
    B = layer.lora_B.weight.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y = layer(x)
    y_ref = naive_partial_lora_forward(x2, lin.weight.detach(), lin.bias.detach(), A, B, 1.5, mask)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    for got, ref in ((layer.lora_A.weight.grad, A.grad), (layer.lora_B.weight.grad, B.grad), (x.grad, x2.grad)):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_gradient_is_zero_where_mask_is_false():
    # Tokens whose mask is false contribute nothing to the LoRA gradients: perturbing only their targets
    # leaves the adapter gradient of a per-token loss unchanged, and a loss over unmasked tokens of the first
    # layer's output has zero adapter gradient.
    torch.manual_seed(0)
    lin = nn.Linear(8, 5).double()
    layer = PartialLoRALinear(lin, r=2, alpha=2.0)
    layer.lora_B.weight.data.normal_()
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    layer.holder.mask = mask
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y[~mask].square().sum().backward()                                   # loss on unmasked tokens only
    assert torch.count_nonzero(layer.lora_A.weight.grad) == 0
    assert torch.count_nonzero(layer.lora_B.weight.grad) == 0
    layer.zero_grad()
    x.grad = None
    layer(x)[mask].square().sum().backward()
    assert layer.lora_A.weight.grad.abs().sum() > 0
    # the input gradient at unmasked tokens is the base layer's alone: W^T g
    g = torch.zeros(2, 4, 5, dtype=torch.float64)
    g[~mask] = 1.0
    x.grad = None
    (layer(x) * g).sum().backward()
    torch.testing.assert_close(x.grad[~mask], (g @ lin.weight.detach())[~mask])


def test_mask_shape_mismatch_and_unset_policies():
    model = tiny_decoder()
    apply_partial_lora(model, r=2, alpha=2, target_modules=["q_proj"], when_unset="error")
    idx = torch.randint(0, 64, (2, 5))
    with pytest.raises(RuntimeError, match="no token mask"):
        model(idx)
    set_token_mask(model, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask shape"):
        model(idx)
    set_token_mask(model, None)
    with pytest.raises(ValueError, match="when_unset"):
        apply_partial_lora(tiny_decoder(), when_unset="sometimes")


def test_peft_context_reads_the_mask_from_the_batch():
    from lmlab.nn.peft import apply_peft, peft_context

    lora, part = tiny_decoder(), tiny_decoder()
    apply_lora(lora, r=2, alpha=4, target_modules=TARGETS)
    h = apply_peft(part, {"method": "partial_lora", "r": 2, "alpha": 4, "target_modules": TARGETS})
    copy_random_lora(lora, part)
    idx = torch.randint(0, 64, (2, 7))
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0] = True                                                      # first sequence only
    with torch.no_grad(), peft_context(part, {"input_ids": idx, "lora_mask": mask}):
        out = part(idx).logits
    assert h.token_mask.mask is None                                    # restored after the block
    with torch.no_grad():
        torch.testing.assert_close(out[0], lora(idx).logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[1], tiny_decoder()(idx).logits[1])
    with peft_context(lora, {"lora_mask": mask}):                       # no Partial LoRA: a no-op
        pass
