"""JetMoE: lmlab's `moa` token mixer + `moe` channel mixer equal transformers' JetMoe on identical weights."""
import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder

transformers = pytest.importorskip("transformers", reason="transformers is the JetMoe oracle")


def _pair(seed=0):
    from transformers import JetMoeConfig, JetMoeForCausalLM

    torch.manual_seed(seed)
    hf_cfg = JetMoeConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_key_value_heads=2,
                          kv_channels=8, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2,
                          max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=True,
                          rope_theta=10000.0, initializer_range=0.2, attn_implementation="eager")
    hf = JetMoeForCausalLM(hf_cfg).double().eval()
    with torch.no_grad():  # HF zero-initialises the biases; make them count in the comparison
        for n, p in hf.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layer=2, n_head=4, max_seq_len=64, norm_eps=1e-6,
                      mixer="moa", mixer_args={"moa": {"n_experts": 4, "top_k": 2, "n_kv_head": 2, "head_dim": 8}},
                      ffn="moe", ffn_args={"moe": {"router": "topk_softmax_tc", "n_experts": 4, "top_k": 2,
                                                   "d_expert": 24, "out_bias": True}})
    ours = Decoder(cfg).double().eval()
    sd = hf.state_dict()
    with torch.no_grad():
        ours.embed.weight.copy_(sd["model.embed_tokens.weight"])
        ours.norm.weight.copy_(sd["model.norm.weight"])
        for i, blk in enumerate(ours.blocks):
            pre = f"model.layers.{i}."
            blk.res_mixer.norm.weight.copy_(sd[pre + "input_layernorm.weight"])
            blk.res_ffn.norm.weight.copy_(sd[pre + "post_attention_layernorm.weight"])
            att = pre + "self_attention."
            blk.mixer.kv_proj.weight.copy_(sd[att + "kv_proj.weight"])
            blk.mixer.router.proj.weight.copy_(sd[att + "experts.router.layer.weight"])
            blk.mixer.w_q.copy_(sd[att + "experts.input_linear.weight"].transpose(1, 2))
            blk.mixer.w_o.copy_(sd[att + "experts.output_linear.weight"].transpose(1, 2))
            blk.mixer.bias.copy_(sd[att + "experts.bias"])
            mlp = pre + "mlp."
            w_in = sd[mlp + "input_linear.weight"]                      # (e, 2h, d): [gate; up]
            gate, up = w_in.chunk(2, dim=1)
            blk.ffn.experts.w_gate.copy_(gate.transpose(1, 2))
            blk.ffn.experts.w_up.copy_(up.transpose(1, 2))
            blk.ffn.experts.w_down.copy_(sd[mlp + "output_linear.weight"].transpose(1, 2))
            blk.ffn.router.proj.weight.copy_(sd[mlp + "router.layer.weight"])
            blk.ffn.bias.copy_(sd[mlp + "bias"])
    return hf, ours


def test_jetmoe_logits_match_transformers():
    hf, ours = _pair()
    idx = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        ref = hf(idx).logits
        got = ours(idx).logits
    # HF computes RMSNorm, RoPE and the attention softmax in fp32 even for a float64 model, so agreement is
    # at fp32 precision; the logits are O(1) and a wrong routing/head order shifts them by O(0.1).
    assert ref.std() > 0.3
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_moa_decode_with_cache_equals_full_forward():
    _, ours = _pair(1)
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        full = ours(idx).logits
        states = ours.init_states(2, 16)
        out = ours(idx[:, :5], states=states)
        steps = [out.logits]
        for i in range(5, 9):
            out = ours(idx[:, i:i + 1], states=out.states)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)


def test_moa_fast_equals_naive_values_and_grads():
    _, ours = _pair(2)
    moa = ours.blocks[0].mixer
    x = torch.randn(2, 6, 32, dtype=torch.float64, requires_grad=True)
    y, _ = moa(x)
    yn = moa.naive_forward(x)
    torch.testing.assert_close(y, yn, rtol=1e-10, atol=1e-10)
    params = [x, moa.w_q, moa.w_o, moa.kv_proj.weight, moa.router.proj.weight]
    g1 = torch.autograd.grad((y * torch.cos(y)).sum(), params)
    g2 = torch.autograd.grad((yn * torch.cos(yn)).sum(), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert moa.aux_loss is not None and torch.isfinite(moa.aux_loss)
