"""Memory of a training run, estimated from its validated config by plain arithmetic (no tensor is made),
and a refusal in one line when it exceeds what the machine has.

Notation: V = vocab_size, d = d_model, L = n_layer, H = n_head, K = kv heads, h = head_dim = d/H,
f = channel-mixer hidden width, E = MoE experts (hidden e_h each), S shared experts, B = sequences per
micro-batch (batch_size / grad_accum), T = data.seq_len.

    params      = V·d  (+ V·d untied head | r·(d+V) low-rank head)  + d (final norm)
                + L · [ d·h·(2H + 2K)               token mixer (q, k, v, o projections)
                      + 3·d·f                       SwiGLU   | 3·d·E·e_h + d·E + 3·d·S·e_h   MoE
                      + 2·d ]                       the two RMSNorm weights
    state bytes = 16 · params                       fp32 weights, gradients, AdamW m and v
    activations = 4 · B·T · [ L·(12·d + 4·f') + 2·d ]   fp32 values kept for backward: per layer the norm
                                                    inputs/outputs, q, k, v, attention and projection
                                                    outputs, residual sums (~12 d) and the SwiGLU gate,
                                                    up, activation and product (~4 f', f' = f or k·e_h for
                                                    MoE with top-k); the fused head keeps no (B, T, V) logits
    total       = state bytes + activations

Other token mixers (HGRN2, RG-LRU, local attention, MoA) are counted as attention: the estimate is a guard
against configs off by orders of magnitude (it agrees with built models within a few percent for attention +
SwiGLU/MoE stacks, see tests/test_resources.py), not a profiler.

    est = estimate(cfg)                      # cfg: a RunConfig (or anything with .model, .data, .train)
    check_memory(cfg, allow_large=False)     # raises ResourceError naming the key that drives the estimate
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

__all__ = ["MemoryEstimate", "ResourceError", "estimate", "estimate_params", "available_memory",
           "check_memory", "fmt_bytes", "ALLOW_ENV"]

ALLOW_ENV = "LMLAB_ALLOW_LARGE"       # =1: the same as --allow-large, for every command that trains
BYTES_PER_PARAM = 16                  # fp32 weight + gradient + AdamW first and second moments
BYTES_PER_ACT = 4


class ResourceError(ValueError):
    """A run that does not fit: the message is one line naming the key and the estimate."""


@dataclass
class MemoryEstimate:
    params: int
    state_bytes: int          # weights + gradients + optimizer
    activation_bytes: int

    @property
    def total(self) -> int:
        return self.state_bytes + self.activation_bytes


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


# ------------------------------------------------------------------------------------------ the formula
def _g(obj: Any, name: str, default: Any = None) -> Any:
    v = getattr(obj, name, default)
    return default if v is None else v


def _dims(model: Any) -> dict[str, Any]:
    """The numbers the formula needs, read from a model config (missing fields take the usual defaults)."""
    d = int(_g(model, "d_model", 128))
    H = int(_g(model, "n_head", 4))
    ff = _g(model, "d_ff", None) or ((int(8 * d / 3) + 31) // 32 * 32)
    ffn_names = list(_g(model, "ffn_pattern", None) or [_g(model, "ffn", "swiglu")])
    moe = (_g(model, "ffn_args", {}) or {}).get("moe", {}) if "moe" in ffn_names else {}
    return {"V": int(_g(model, "vocab_size", 4096)), "d": d, "L": int(_g(model, "n_layer", 4)), "H": H,
            "K": int(_g(model, "n_kv_head", None) or H), "f": int(ff), "tie": bool(_g(model, "tie_embeddings", True)),
            "rank": _g(model, "head_rank", None), "ffn_names": ffn_names, "moe": dict(moe)}


def _layer_params(x: dict, ffn: str) -> tuple[int, int]:
    """(parameters, activation width f') of one block with channel mixer `ffn`."""
    d, H, K, f = x["d"], x["H"], x["K"], x["f"]
    h = d // max(H, 1)
    mixer = d * h * (2 * H + 2 * K)
    if ffn == "moe":
        m = x["moe"]
        g = int(m.get("granularity", 1))
        eh = int(m.get("d_expert") or f) // g
        E = int(m.get("n_experts", 8)) * g
        k = int(m.get("top_k", 2)) * g
        S = int(m.get("n_shared", 0))
        channel = 3 * d * E * eh + d * E + 3 * d * S * eh + (d if m.get("out_bias") else 0)
        width = (k + S) * eh
    else:
        channel, width = 3 * d * f, f
    return mixer + channel + 2 * d, width


def _count(x: dict) -> tuple[int, int]:
    """(parameters, Σ over layers of the activation width 12·d + 4·f')."""
    V, d, L = x["V"], x["d"], x["L"]
    head = 0 if x["tie"] and x["rank"] is None else (x["rank"] * (d + V) if x["rank"] is not None else V * d)
    names = x["ffn_names"]
    if L <= len(names) or len(set(names)) == 1:
        per = [_layer_params(x, names[i % len(names)]) for i in range(min(L, len(names)))]
        reps = [1] * len(per) if L <= len(names) else [L]
    else:  # cycled pattern: count one cycle, scale by whole cycles, add the remainder
        per = [_layer_params(x, n) for n in names]
        full, rem = divmod(L, len(names))
        reps = [full + (1 if i < rem else 0) for i in range(len(names))]
    params = V * d + head + d + sum(p * r for (p, _), r in zip(per, reps))
    act_width = sum((12 * d + 4 * w) * r for (_, w), r in zip(per, reps))
    return params, act_width


def estimate_params(model: Any) -> int:
    """Parameter count of the decoder a model config builds (see the module docstring)."""
    return _count(_dims(model))[0]


def _estimate(x: dict, micro_batch: int, seq_len: int) -> MemoryEstimate:
    params, act_width = _count(x)
    acts = BYTES_PER_ACT * micro_batch * seq_len * (act_width + 2 * x["d"])
    return MemoryEstimate(params, BYTES_PER_PARAM * params, acts)


def _run_shape(cfg: Any) -> tuple[int, int]:
    train, data = getattr(cfg, "train", None), getattr(cfg, "data", None)
    batch = int(_g(train, "batch_size", 16))
    accum = max(int(_g(train, "grad_accum", 1)), 1)
    return max(batch // accum, 1), int(_g(data, "seq_len", 128))


def estimate(cfg: Any) -> MemoryEstimate:
    """Peak training memory of a RunConfig-shaped object (model, data.seq_len, train.batch_size/grad_accum)."""
    micro, T = _run_shape(cfg)
    return _estimate(_dims(cfg.model), micro, T)


# ----------------------------------------------------------------------------------- available memory
def _cgroup_limit() -> Optional[int]:
    """Memory left under this process's cgroup limit (v2 memory.max - memory.current, or v1), if any."""
    for lim_f, use_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(lim_f).read_text().strip()
        except OSError:
            continue
        if not raw.isdigit() or int(raw) >= 1 << 60:
            return None
        try:
            used = int(Path(use_f).read_text().strip())
        except (OSError, ValueError):
            used = 0
        return max(int(raw) - used, 0)
    return None


def _host_available() -> int:
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except ImportError:
        avail = 0
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            pass
        if not avail:
            try:
                avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                avail = 1 << 62  # unknown: do not refuse
    cg = _cgroup_limit()
    return min(avail, cg) if cg is not None else avail


def available_memory(device: str = "cpu") -> int:
    """Bytes free for a run on `device`: free accelerator memory for cuda (or auto with CUDA present), else
    the host's available memory, capped by the cgroup limit."""
    if device.startswith("cuda") or device == "auto":
        try:
            import torch

            if torch.cuda.is_available():
                idx = int(device.split(":")[1]) if ":" in device else 0
                return int(torch.cuda.mem_get_info(idx)[0])
        except (ImportError, RuntimeError, ValueError):
            pass
    return _host_available()


# -------------------------------------------------------------------------------------------- refusal
_DEFAULTS = {"model.n_layer": 4, "model.d_model": 128, "model.vocab_size": 4096, "model.d_ff": None,
             "train.batch_size": 16, "data.seq_len": 128, "model.ffn_args.moe.n_experts": 8,
             "model.ffn_args.moe.d_expert": None}
_DIM_OF = {"model.n_layer": "L", "model.d_model": "d", "model.vocab_size": "V", "model.d_ff": "f"}


def _value_of(cfg: Any, key: str) -> Any:
    cur = cfg
    for part in key.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else getattr(cur, part, None)
        if cur is None:
            return None
    return cur


def culprit(cfg: Any, prefix: str = "") -> str:
    """The dotted key whose return to its default value shrinks the estimate the most, as `key=value`."""
    x0 = _dims(cfg.model)
    micro, T = _run_shape(cfg)
    base = _estimate(x0, micro, T).total
    best, best_total = None, base
    for key, dflt in _DEFAULTS.items():
        val = _value_of(cfg, key)
        if val is None or val == dflt:
            continue
        x, m, t = dict(x0), micro, T
        if key == "model.d_ff":
            x["f"] = (int(8 * x["d"] / 3) + 31) // 32 * 32
        elif key in _DIM_OF:
            x[_DIM_OF[key]] = dflt
        elif key == "train.batch_size":
            m = max(_DEFAULTS[key] // max(int(_g(cfg.train, "grad_accum", 1)), 1), 1)
        elif key == "data.seq_len":
            t = _DEFAULTS[key]
        else:
            x["moe"] = {**x["moe"], key.rsplit(".", 1)[1]: _DEFAULTS[key]}
        total = _estimate(x, m, t).total
        if total < best_total:
            best, best_total = key, total
    key = best or "model.d_model"
    return f"{prefix}{key}={_value_of(cfg, key)}"


def check_memory(cfg: Any, allow_large: bool = False, available: Optional[int] = None, device: str = "auto",
                 flag: str = "--allow-large", prefix: str = "") -> MemoryEstimate:
    """Raise ResourceError when the estimate exceeds the available memory, unless allowed (argument or
    $LMLAB_ALLOW_LARGE=1). `prefix` is put before the key in the message (e.g. '' for RunConfig keys)."""
    est = estimate(cfg)
    if allow_large or os.environ.get(ALLOW_ENV, "") not in ("", "0"):
        return est
    avail = available if available is not None else available_memory(device)
    if est.total > avail:
        raise ResourceError(
            f"{culprit(cfg, prefix)}: estimated {fmt_bytes(est.total)} of parameters+optimizer+activations "
            f"({_sci(est.params)} parameters) exceeds {fmt_bytes(avail)} available; pass {flag} "
            f"(or {ALLOW_ENV}=1) to try anyway")
    return est


def _sci(n: int) -> str:
    return f"{n:,}" if n < 10**7 else f"{n:.2e}"


def check_model_memory(model: Any, batch_size: int, seq_len: int, allow_large: bool = False,
                       device: str = "auto") -> MemoryEstimate:
    """check_memory for a bare model config (align stages): keys are reported as `model.*` / `batch_size`."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(model=model, train=SimpleNamespace(batch_size=batch_size, grad_accum=1),
                          data=SimpleNamespace(seq_len=seq_len))
    try:
        return check_memory(cfg, allow_large=allow_large, device=device)
    except ResourceError as e:
        msg = str(e).replace("train.batch_size=", "batch_size=").replace("data.seq_len=", "seq_len=")
        raise ResourceError(msg) from None
