"""A Llama-family GGUF straight into lmlab's weight-only quantized layers (lmlab.nn.quant), no float detour where
the format allows.

    model, tok = load_gguf_quantized("smollm2", "int4")     # Q4_1 blocks -> Int4Linear(group_size=32), bit-exact
    model, tok = load_gguf_quantized("model.gguf", "int8")  # tensors dequantised by gguf, then per-channel int8
    model, tok = load_gguf_quantized("smollm2", "int8g")    # Q4_1 and Q8_0 blocks -> Int8GroupLinear, lossless

llama.cpp's Q4_1 block is 32 weights sharing an fp16 scale d and minimum m, w = d·q + m with q ∈ 0..15 (two
codes a byte, q[j] in the low nibble of byte j and q[j+16] in its high nibble). That is Int4Linear's
group-32 asymmetric layout exactly, so those codes and scales are handed to the int4 kernel as they are.
Every other tensor (norms in F32, SmolLM2's Q8_0 token embedding / tied head, any other quantisation type, or
int4 with a group size other than 32) is dequantised by the `gguf` package and quantized by `quantize_`.

"int8g" (group 32) holds both Q4_1 (codes q, s = d, z = m) and Q8_0 (fp16 d and 32 int8 q: codes q + 128,
s = d, z = −128·d) blocks as they are, so every linear of such a file loads without loss, and so does the LM head
(which "int8g" quantizes too): tied to a Q8_0 token embedding, it is made from the embedding's blocks (the
embedding itself stays float for the lookup).

Names: the GGUF name of each lmlab weight is gguf-py's own map (`gguf.get_tensor_name_map`, what transformers
uses) applied to the HF name of `hf_weight_names`. llama.cpp stores q/k rows interleaved per head (its RoPE
pairs neighbours); transformers un-permutes them when it dequantises, and so do we, on the rows of the packed
codes and scales: a row permutation commutes with row-wise quantisation.

The tokenizer and the model config come from the file's weights-cache entry when `load_pretrained` has made one
(lmlab.models.hf: checked by size and checksum, keyed by the file's sha256), else from transformers
(`AutoTokenizer` / `AutoConfig` with `gguf_file`). transformers parses the whole GGUF header (49K vocabulary
strings for SmolLM2) once for each, which was most of a direct int4 load (9 s of it, at load 5).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lmlab.config import ConfigError
from lmlab.nn.hf_names import hf_weight_names, mark_hf_twin
from lmlab.nn.quant import (LAYERS, BF16Linear, Int4Linear, Int8GroupLinear, Int8Linear, check_scheme, head_skip,
                             quantize_, unpack_int4)

Q4_1_BLOCK, Q4_1_BYTES = 32, 20   # weights per block; bytes per block: fp16 d, fp16 m, 16 bytes of codes
Q8_0_BLOCK, Q8_0_BYTES = 32, 34   # fp16 d, 32 int8 codes


def q4_1_blocks(raw: np.ndarray, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_1 tensor's raw bytes (n, k/32·20) -> (codes (n, k) uint8 0..15, d (n, k/32), m (n, k/32) fp32)."""
    blocks = np.ascontiguousarray(raw).reshape(n, k // Q4_1_BLOCK, Q4_1_BYTES)      # (n, blocks, 20)
    d = torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))
    m = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
    q = unpack_int4(torch.from_numpy(blocks[..., 4:].copy()), block=Q4_1_BLOCK)     # (n, blocks, 32)
    return q.reshape(n, k), d, m


def q8_0_blocks(raw: np.ndarray, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q8_0 tensor's raw bytes (n, k/32·34) -> (codes (n, k) int8, d (n, k/32) fp32): w = d·q."""
    blocks = np.ascontiguousarray(raw).reshape(n, k // Q8_0_BLOCK, Q8_0_BYTES)      # (n, blocks, 34)
    d = torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))
    q = torch.from_numpy(blocks[..., 2:].copy().view(np.int8))                      # (n, blocks, 32)
    return q.reshape(n, k), d


def int8g_from_blocks(t, shape: tuple[int, int], rows: Optional[torch.Tensor] = None) -> Optional[Int8GroupLinear]:
    """An Int8GroupLinear(group 32) holding a Q4_1 or Q8_0 GGUF tensor `t` of `shape` (n, k) exactly (rows
    reordered by `rows` if given), or None for any other type."""
    import gguf

    kind = gguf.GGMLQuantizationType
    if t.tensor_type == kind.Q4_1:
        c, s, z = q4_1_blocks(t.data, *shape)
    elif t.tensor_type == kind.Q8_0:
        q, s = q8_0_blocks(t.data, *shape)
        c, z = (q.to(torch.int16) + 128).to(torch.uint8), -128 * s
    else:
        return None
    if rows is not None:
        c, s, z = c[rows], s[rows], z[rows]
    return Int8GroupLinear.from_qparams(c, s, z, Q4_1_BLOCK)


def int4_from_blocks(t, shape: tuple[int, int], rows: Optional[torch.Tensor] = None,
                     compute: str = "bf16") -> Optional[Int4Linear]:
    """An Int4Linear(group 32) holding a Q4_1 GGUF tensor `t` of `shape` (n, k) exactly (rows reordered by `rows`
    if given), or None for any other type."""
    import gguf

    if t.tensor_type != gguf.GGMLQuantizationType.Q4_1:
        return None
    q, d, m = q4_1_blocks(t.data, *shape)
    if rows is not None:
        q, d, m = q[rows], d[rows], m[rows]
    return Int4Linear.from_qparams(q, d, m, Q4_1_BLOCK, compute=compute)


def unpermute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's per-head q/k interleave (transformers' `_reverse_permute_weights`):
    new[h, p, i] = old[h, i, p] with rows seen as (head, head_dim/2, 2)."""
    dim = n_rows // n_head // 2
    return torch.arange(n_rows).reshape(n_head, dim, 2).transpose(1, 2).reshape(-1)


def cached_config_and_tokenizer(gguf_path: str) -> Optional[tuple[Any, Any]]:
    """(lmlab ModelConfig, tokenizer) of a GGUF from its weights-cache entry, or None (no entry, a damaged one, or
    the cache turned off with $LMLAB_WEIGHTS_CACHE=0)."""
    from lmlab.models.hf import gguf_cache_entry, read_cache_entry

    if not _cache_on():
        return None
    hit = read_cache_entry(gguf_cache_entry(gguf_path))
    return None if hit is None else (hit[0], hit[2])


def load_gguf_quantized(spec: str, scheme: str = "int4", group_size: int = 32,
                        compute: str = "bf16", input_group_size: int | None = None) -> tuple[Any, Any]:
    """(Decoder with Int8Linear/Int4Linear/Int8GroupLinear layers, tokenizer) from 'smollm2' or a Llama-family GGUF
    file. The LM head follows `quantize_`'s default (left in float, tied to the embedding when the file ties them),
    except under "int8g", which quantizes it too (from the embedding's Q8_0 blocks when tied; module doc).
    `compute`: how the layers feed their kernels ("bf16", "bf16x2", "fp32"; lmlab.nn.quant); `input_group_size`:
    int8's per-input-group grid (`quantize_`; int8 only).

    The converted model is kept in the weights cache (`quant_cache_entry`: keyed by the file's sha256, the scheme
    and the group sizes) and read back from there on later loads, unless $LMLAB_WEIGHTS_CACHE=0."""
    from lmlab.models.hf import resolve

    check_scheme(scheme, compute, input_group_size)      # also when the converted model comes from the cache
    path, file = resolve(spec)
    if file is None:
        raise ConfigError(f"model {spec!r}: direct quantized loading needs a GGUF file")
    entry = quant_cache_entry(os.path.join(path, file), scheme, group_size, input_group_size) if _cache_on() else None
    hit = read_quant_entry(entry, compute) if entry is not None else None
    if hit is not None:
        model, tok = hit
    else:
        model, tok = _convert(path, file, scheme, group_size, compute, input_group_size)
        if entry is not None:
            try:
                write_quant_entry(entry, model, tok)
            except OSError as e:  # a read-only or full disk: the model is loaded all the same
                warnings.warn(f"weights cache: could not write {entry}: {e}", stacklevel=2)
    mark_hf_twin(model, spec)
    return model.eval(), tok


def _convert(path: str, file: str, scheme: str, group_size: int, compute: str,
             input_group_size: int | None) -> tuple[Any, Any]:
    """The GGUF read and converted (the module doc): Q4_1 blocks packed as they are, the rest through quantize_."""
    import gguf

    from lmlab.models.decoder import Decoder
    from lmlab.models.hf import HFTokenizer, config_from_hf

    cached = cached_config_and_tokenizer(os.path.join(path, file))
    if cached is not None:
        cfg, tok = cached
    else:
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        tok = HFTokenizer(AutoTokenizer.from_pretrained(path, gguf_file=file))
        cfg = config_from_hf(AutoConfig.from_pretrained(path, gguf_file=file))
    reader = gguf.GGUFReader(os.path.join(path, file))
    tensors = {t.name: t for t in reader.tensors}
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.n_layer)

    with torch.device("meta"):
        model = Decoder(cfg)
    model.to_empty(device="cpu")
    as_blocks = group_size == Q4_1_BLOCK and scheme in ("int4", "int8g")     # file blocks -> layers, no float
    float_sd, done = {}, set()
    for hf_name, lm_name in hf_weight_names(cfg.n_layer).items():
        if hf_name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        g_name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        t = tensors.get(g_name)
        if t is None:
            raise ConfigError(f"GGUF {file}: tensor {g_name} ({hf_name}) missing")
        n_head = cfg.n_head if ".attn_q." in g_name else cfg.kv_heads if ".attn_k." in g_name else None
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))                 # (n, k): ggml lists k first
        rows = None if n_head is None else unpermute_rows(shape[0], n_head)
        # the linear these blocks can become: a block's layer, an untied head, or (int8g) the head tied to them
        target = lm_name[: -len(".weight")] if lm_name.startswith(("blocks.", "head.")) else \
            "head" if scheme == "int8g" and lm_name == "embed.weight" and cfg.tie_embeddings else None
        layer = None
        if as_blocks and target is not None and len(shape) == 2:
            layer = int8g_from_blocks(t, shape, rows) if scheme == "int8g" else \
                int4_from_blocks(t, shape, rows, compute) if target.startswith("blocks.") else None
        if layer is not None:
            parent, _, attr = target.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, layer)
            done.add(target)
            if not lm_name.startswith("embed."):
                continue                                                # the embedding also loads as float
        w = torch.from_numpy(np.array(gguf.dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(shape)
        if rows is not None:
            w = w[rows]
        float_sd[lm_name] = w
    missing, unexpected = model.load_state_dict(float_sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "head.weight") and k.rpartition(".")[0] not in done]
    if missing or unexpected:
        raise ConfigError(f"GGUF {file}: weight mapping mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if cfg.tie_embeddings and type(model.head) is torch.nn.Linear:
        model.head.weight = model.embed.weight
    # whatever was not loaded packed (int8, other types, other groups); int8g takes the head as well
    quantize_(model, scheme, group_size, compute=compute, input_group_size=input_group_size, skip=head_skip(scheme))
    return model, tok


# ---------------------------------------------------------------------------------- converted-model cache
QUANT_CACHE_FORMAT = 1
QUANT_META = "lmlab_quant_cache.json"
QUANT_WEIGHTS = "model.safetensors"


def _cache_on() -> bool:
    from lmlab.models.hf import WEIGHTS_CACHE_ENV

    return os.environ.get(WEIGHTS_CACHE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def quant_cache_entry(gguf_path: str, scheme: str, group_size: int, input_group_size: int | None = None) -> Path:
    """<weights_cache_dir>/gguf-quant-v<format>/<sha256 of the file>-<scheme>-g<group>[-ig<input group>]/: the
    converted Decoder's state dict (model.safetensors: packed codes, scales, float norms and embedding), the
    tokenizer's files, and lmlab_quant_cache.json (lmlab ModelConfig, every quantized layer's kind and shape,
    transformers version, size and checksum of every file). Written with lmlab.io.atomic_dir."""
    from lmlab.models.hf import file_sha256, weights_cache_dir

    tag = f"{scheme}-g{group_size}" + (f"-ig{input_group_size}" if input_group_size else "")
    return weights_cache_dir() / f"gguf-quant-v{QUANT_CACHE_FORMAT}" / f"{file_sha256(gguf_path)}-{tag}"


def _layer_spec(m: torch.nn.Module) -> dict:
    spec = {"kind": next(k for k, c in LAYERS.items() if type(m) is c), "in": m.in_features, "out": m.out_features,
            "bias": m.bias is not None}
    if isinstance(m, (Int4Linear, Int8GroupLinear)):
        spec["group_size"] = m.group_size
    if isinstance(m, Int8Linear) and m.input_group_size is not None:
        spec.update(input_group_size=m.input_group_size, zero_points=m.zeros is not None)
    return spec


def _layer_shell(spec: dict, compute: str) -> torch.nn.Module:
    k, n, bias = spec["in"], spec["out"], spec["bias"]
    if spec["kind"] == "int4":
        return Int4Linear(k, n, spec["group_size"], bias=bias, compute=compute)
    if spec["kind"] == "int8g":
        return Int8GroupLinear(k, n, spec["group_size"], bias=bias)
    if spec["kind"] == "int8":
        return Int8Linear(k, n, bias=bias, compute=compute, input_group_size=spec.get("input_group_size"),
                          zero_points=spec.get("zero_points", False))
    return BF16Linear(k, n, bias=bias)


def write_quant_entry(entry: Path, model, tok) -> Path:
    """Store a converted quantized Decoder and its tokenizer as the cache entry `entry`."""
    import importlib.metadata

    from safetensors.torch import save_file

    from lmlab.config import to_dict
    from lmlab.io import atomic_dir
    from lmlab.models.hf import _digest

    tied = model.cfg.tie_embeddings
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not (tied and k == "head.weight")}
    layers = {name: _layer_spec(m) for name, m in model.named_modules() if type(m) in LAYERS.values()}
    with atomic_dir(entry) as tmp:
        save_file(sd, str(tmp / QUANT_WEIGHTS))
        tok.tok.save_pretrained(str(tmp))
        files = {f.name: {"size": f.stat().st_size, "digest": _digest(f.read_bytes())}
                 for f in sorted(tmp.iterdir()) if f.is_file()}
        meta = {"format": QUANT_CACHE_FORMAT, "transformers": importlib.metadata.version("transformers"),
                "model_config": to_dict(model.cfg), "layers": layers, "files": files}
        (tmp / QUANT_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return entry


def read_quant_entry(entry: Path, compute: str = "bf16") -> Optional[tuple[Any, Any]]:
    """(Decoder, tokenizer) from a converted-model cache entry, or None when there is none. An entry that does not
    check out (another format or transformers version, a file missing, resized or changed, tensors that do not
    fit the recorded layers) is reported with a warning and None, and the caller converts the file again."""
    meta_path = entry / QUANT_META
    if not meta_path.exists():
        return None
    try:
        return _read_quant_entry(entry, json.loads(meta_path.read_text(encoding="utf-8")), compute)
    except Exception as e:  # noqa: BLE001 - any fault in a cache entry means: convert again
        warnings.warn(f"weights cache: rebuilding {entry} ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                      stacklevel=3)
        return None


def _read_quant_entry(entry: Path, meta: dict, compute: str) -> tuple[Any, Any]:
    import importlib.metadata

    import transformers
    from safetensors.torch import load

    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder
    from lmlab.models.hf import HFTokenizer, _digest

    if meta.get("format") != QUANT_CACHE_FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, this is {QUANT_CACHE_FORMAT}")
    if meta.get("transformers") != importlib.metadata.version("transformers"):
        raise ValueError(f"written by transformers {meta.get('transformers')}")
    weights = b""
    for name, want in meta["files"].items():
        data = (entry / name).read_bytes()
        if len(data) != want["size"] or _digest(data) != want["digest"]:
            raise ValueError(f"{name}: size or checksum differs from the one written")
        if name == QUANT_WEIGHTS:
            weights = data
    cfg = ModelConfig(**meta["model_config"])
    with torch.device("meta"):
        model = Decoder(cfg)
    model.to_empty(device="cpu")
    for name, spec in meta["layers"].items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, _layer_shell(spec, compute))
    if cfg.tie_embeddings and type(model.head) is torch.nn.Linear:
        model.head.weight = model.embed.weight
    missing, unexpected = model.load_state_dict(load(weights), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "head.weight")]
    if missing or unexpected:
        raise ValueError(f"{QUANT_WEIGHTS}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    name = json.loads((entry / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    return model, HFTokenizer((cls or transformers.AutoTokenizer).from_pretrained(str(entry)))
