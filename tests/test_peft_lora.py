"""LoRA: merge algebra, forward equality with HF peft, PEFT-format adapters both ways."""
import json

import pytest
import torch
from torch import nn

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.nn.peft import (LoRALinear, apply_lora, apply_peft, load_lora_adapter, lora_layers, merge_lora,
                           naive_lora_forward, save_lora_adapter, unmerge_lora)


def tiny_decoder(seed=0):
    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, max_seq_len=32))


def randomize_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for m in lora_layers(model).values():
        with torch.no_grad():
            m.lora_A.weight.copy_(torch.randn(m.lora_A.weight.shape, generator=g) * 0.3)
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.3)


def test_lora_forward_and_grads_match_naive_float64():
    torch.manual_seed(0)
    lin = nn.Linear(11, 7).double()
    lora = LoRALinear(lin, r=3, alpha=6.0)
    randomize_lora(nn.ModuleDict({"l": lora}))
    x = torch.randn(2, 5, 11, dtype=torch.float64, requires_grad=True)
    y = lora(x)
    A = lora.lora_A.weight.detach().clone().requires_grad_()
    B = lora.lora_B.weight.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y_ref = naive_lora_forward(x2, lin.weight.detach(), lin.bias.detach(), A, B, 2.0)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(lora.lora_A.weight.grad, A.grad)
    torch.testing.assert_close(lora.lora_B.weight.grad, B.grad)
    torch.testing.assert_close(x.grad, x2.grad)


def test_merge_equals_w_plus_scaled_BA_and_unmerge_restores():
    model = tiny_decoder()
    w0 = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    apply_lora(model, r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down"])
    randomize_lora(model)
    idx = torch.randint(0, 64, (2, 9))
    before = model(idx).logits
    merge_lora(model)
    for n, m in lora_layers(model).items():
        expect = w0[n] + (8.0 / 4) * m.lora_B.weight @ m.lora_A.weight
        torch.testing.assert_close(m.weight, expect, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(idx).logits, before, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    for n, m in lora_layers(model).items():
        torch.testing.assert_close(m.weight, w0[n], rtol=0, atol=1e-6)


def test_selection_freezing_and_zero_init_is_identity():
    model = tiny_decoder()
    idx = torch.randint(0, 64, (2, 9))
    base = model(idx).logits
    h = apply_peft(model, {"method": "lora", "r": 2, "alpha": 4, "target_modules": r"blocks\.1\..*_proj"})
    assert sorted(h.layers) == sorted(f"blocks.1.mixer.{p}_proj" for p in "qkvo")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{n}.lora_{ab}.weight" for n in h.layers for ab in "AB"}
    assert h.n_trainable() == 4 * 2 * (32 * 2)
    torch.testing.assert_close(model(idx).logits, base)          # B = 0 at init
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        apply_lora(tiny_decoder(), target_modules=["nope"])
    with pytest.raises(ValueError, match="peft.rank"):
        apply_peft(tiny_decoder(), {"method": "lora", "rank": 3})


def test_base_state_dict_still_loads_into_wrapped_model():
    model = tiny_decoder()
    sd = model.state_dict()
    apply_lora(model, r=2, alpha=2, target_modules=["q_proj"])
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert unexpected == [] and all(".lora_" in k for k in missing)


def test_save_load_round_trip(tmp_path):
    model = tiny_decoder()
    apply_lora(model, r=3, alpha=5.0, target_modules=["q_proj", "up"])
    randomize_lora(model)
    idx = torch.randint(0, 64, (2, 9))
    want = model(idx).logits
    save_lora_adapter(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 3 and cfg["lora_alpha"] == 5.0
    from safetensors.torch import load_file
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.blocks.0.mixer.q_proj.lora_A.weight" in keys and len(keys) == 2 * 2 * 2
    fresh = tiny_decoder()
    load_lora_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(idx).logits, want)


# ----------------------------------------------------------------------------------- HF peft oracle
def _tiny_llama(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_forward_equals_hf_peft_and_adapters_cross_load(tmp_path):
    peft = pytest.importorskip("peft", reason="HF peft not installed")
    targets = ["q_proj", "v_proj", "down_proj"]
    ref = peft.get_peft_model(_tiny_llama(), peft.LoraConfig(r=4, lora_alpha=12, target_modules=targets,
                                                             lora_dropout=0.0, init_lora_weights=False))
    ours = _tiny_llama()
    apply_lora(ours, r=4, alpha=12, target_modules=targets)
    sd = {k.replace(".default", ""): v for k, v in ref.state_dict().items() if "lora_" in k}
    mine = lora_layers(ours)
    assert len(mine) == 2 * 3
    for n, m in mine.items():
        m.lora_A.weight.data.copy_(sd[f"base_model.model.{n}.lora_A.weight"])
        m.lora_B.weight.data.copy_(sd[f"base_model.model.{n}.lora_B.weight"])
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        want = ref(input_ids=idx).logits
        got = ours(input_ids=idx).logits
        base = _tiny_llama()(input_ids=idx).logits
    assert (want - base).abs().max() > 1e-3                       # the adapter does something
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # lmlab-saved adapter -> peft loads it and computes the same logits
    save_lora_adapter(ours, tmp_path / "ours")
    loaded = peft.PeftModel.from_pretrained(_tiny_llama(), str(tmp_path / "ours")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=idx).logits, want, rtol=1e-5, atol=1e-5)

    # peft-saved adapter -> lmlab loads it
    ref.save_pretrained(str(tmp_path / "theirs"))
    again = _tiny_llama()
    load_lora_adapter(again, tmp_path / "theirs")
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=idx).logits, want, rtol=1e-5, atol=1e-5)


def test_peft_loads_adapter_saved_on_lmlab_decoder(tmp_path):
    peft = pytest.importorskip("peft", reason="HF peft not installed")
    model = tiny_decoder()
    apply_lora(model, r=2, alpha=4, target_modules=["q_proj", "gate"])
    randomize_lora(model)
    idx = torch.randint(0, 64, (2, 9))
    want = model(idx).logits.detach()
    save_lora_adapter(model, tmp_path)
    wrapped = peft.PeftModel.from_pretrained(tiny_decoder(), str(tmp_path)).eval()
    with torch.no_grad():
        got = wrapped.base_model.model(idx).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
