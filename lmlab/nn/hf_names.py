"""HF Llama module names of a Decoder's layers: the one source of the lmlab <-> transformers name map.

State dicts (lmlab.models.hf) and LoRA adapters (lmlab.nn.peft.lora) both translate through `hf_weight_names`.
It lives beside the modules it names, below models/, so PEFT code can use it without importing upward.
"""
from __future__ import annotations

from typing import Optional


def hf_weight_names(n_layer: int) -> dict[str, str]:
    """HF Llama weight name -> lmlab Decoder weight name (the map in the module docstring; `lm_head.weight`
    included, drop it when the embeddings are tied). The one source of the name mapping: state dicts and
    LoRA adapters both translate through it."""
    out = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "head.weight"}
    for i in range(n_layer):
        a, m, b = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp.", f"blocks.{i}."
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[a + p + ".weight"] = b + f"mixer.{p}.weight"
        for p in ("gate", "up", "down"):
            out[m + p + "_proj.weight"] = b + f"ffn.{p}.weight"
        out[f"model.layers.{i}.input_layernorm.weight"] = b + "res_mixer.norm.weight"
        out[f"model.layers.{i}.post_attention_layernorm.weight"] = b + "res_ffn.norm.weight"
    return out


# ------------------------------------------------------------------------------ LoRA adapter names
HF_TWIN_ATTR = "hf_name_or_path"
LLAMA_TYPES = ("llama", "mistral", "qwen2")


def mark_hf_twin(model, name_or_path: Optional[str]) -> None:
    """Record that `model` has a transformers Llama twin (imported from it or exported to it): LoRA adapters
    saved from it then use HF module names and this `base_model_name_or_path` (see lmlab.nn.peft.lora)."""
    setattr(model, HF_TWIN_ATTR, str(name_or_path) if name_or_path else None)


def llama_mismatch(model) -> Optional[str]:
    """Why an lmlab Decoder has no HF Llama counterpart, or None when it maps onto LlamaForCausalLM."""
    cfg, blocks = getattr(model, "cfg", None), getattr(model, "blocks", None)
    if cfg is None or blocks is None:
        return f"{type(model).__name__} is not an lmlab Decoder"
    for i, blk in enumerate(blocks):
        if blk.mixer_name != "attn" or blk.ffn_name != "swiglu" or cfg.residual != "prenorm":
            return f"layer {i} is {blk.mixer_name}/{blk.ffn_name}/{cfg.residual}; only attn/swiglu/prenorm maps onto Llama"
        if blk.mixer.window is not None:
            return "sliding-window attention has no Llama equivalent"
    if cfg.head_rank is not None:
        return "a low-rank head has no Llama equivalent"
    return None


def hf_linear_names(n_layer: int) -> dict[str, str]:
    """lmlab Linear path -> HF Llama Linear path (blocks.i.mixer.q_proj -> model.layers.i.self_attn.q_proj,
    blocks.i.ffn.gate -> model.layers.i.mlp.gate_proj, head -> lm_head), from `hf_weight_names`. Adapter
    matrices need no re-layout: lmlab and HF share the rotate_half q/k layout (transformers already undoes
    llama.cpp's interleaved q/k when it dequantises a GGUF), so lora_B rows line up with the base rows."""
    return {lm[: -len(".weight")]: hf[: -len(".weight")] for hf, lm in hf_weight_names(n_layer).items()
            if hf.endswith("_proj.weight") or hf == "lm_head.weight"}


def is_hf_llama(model) -> bool:
    """A transformers Llama-family causal LM (module paths model.layers.i.self_attn.q_proj, ...)."""
    return getattr(getattr(model, "config", None), "model_type", None) in LLAMA_TYPES and hasattr(model, "model")
