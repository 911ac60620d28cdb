"""LoRA: a frozen linear layer plus a trainable low-rank update (Hu et al., 2021).

Notation: b = batch, t = tokens, i = in_features, o = out_features, r = rank, α = lora_alpha.

    y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ        A: (r, i) ~ Kaiming-uniform, B: (o, r) = 0

so training starts at the base model. `merge()` folds the update into the weight, W ← W + (α/r)·B A, and
`unmerge()` takes it out again. Layers are chosen by name like HF `peft`: a list of names matches a module
whose dotted path equals the name or ends with ".name"; a single string is a regex that must match the whole
path. Adapters are saved in the PEFT format (`adapter_config.json` + `adapter_model.safetensors`, keys
`base_model.model.<path>.lora_A.weight`), so `peft.PeftModel.from_pretrained(base, dir)` loads them and
`load_lora_adapter` reads adapters that `peft` saved.

`LoRALinear` keeps the base `weight`/`bias` under their original names, so a base-model state dict still loads
into a wrapped model and the wrapped model's extra keys are exactly `<path>.lora_A.weight`/`<path>.lora_B.weight`.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

TargetSpec = Union[str, Iterable[str]]
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def naive_lora_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """Reference: one linear map with the merged weight W + (α/r)·B A (no dropout)."""
    w = weight + scaling * (lora_B @ lora_A)                                 # (o, i)
    y = x @ w.T
    return y + bias if bias is not None else y


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"lora rank r={r} must be >= 1")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight                                            # shared Parameter, frozen by apply_lora
        self.bias = base.bias
        for k, v in vars(base).items():                                      # keep markers such as _is_residual_out
            if k.startswith("_is_"):
                setattr(self, k, v)
        self.r, self.lora_alpha = r, alpha
        self.scaling = alpha / r
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=dev, dtype=dt)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=dev, dtype=dt)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))           # same init as peft
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)       # (o, i)

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling  # (..., o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + self.lora_delta(x)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding the merged weight (for export after training)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            w = self.weight if self.merged else self.weight + self.delta_weight().to(self.weight.dtype)
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.lora_alpha}, merged={self.merged}"


# ----------------------------------------------------------------------------------------- selection
def matches(name: str, target: TargetSpec) -> bool:
    """peft's rule: a str is a full-match regex; a list matches the exact path or a '.'-suffix."""
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith("." + t) for t in target)


def find_linears(model: nn.Module, target: TargetSpec, exclude: Iterable[str] = ()) -> list[str]:
    exclude = list(exclude)
    out = [n for n, m in model.named_modules()
           if isinstance(m, nn.Linear) and n and ".lora_" not in n and matches(n, target)
           and not any(matches(n, [e]) for e in exclude)]
    return out


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def replace_linears(model: nn.Module, target: TargetSpec, make, exclude: Iterable[str] = ()) -> list[str]:
    """Swap every selected nn.Linear for `make(linear)`; returns the paths. Raises if nothing matches."""
    names = find_linears(model, target, exclude)
    if not names:
        raise ValueError(f"target_modules={target!r} matches no nn.Linear in {type(model).__name__}")
    for n in names:
        _set_submodule(model, n, make(model.get_submodule(n)))
    return names


def freeze_except(model: nn.Module, keep: Iterable[str] = ("lora_",)) -> None:
    """requires_grad only for parameters whose path contains one of `keep`."""
    keep = tuple(keep)
    for n, p in model.named_parameters():
        p.requires_grad_(any(k in n for k in keep))


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               target_modules: TargetSpec = ("q_proj", "v_proj"), exclude: Iterable[str] = (),
               freeze_base: bool = True) -> list[str]:
    """Wrap the selected linears in place; returns their paths. Base weights are frozen unless told not to."""
    names = replace_linears(model, target_modules, lambda lin: LoRALinear(lin, r, alpha, dropout), exclude)
    if freeze_base:
        freeze_except(model, ("lora_",))
    model._lora_config = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout,
                          "target_modules": target_modules if isinstance(target_modules, str) else sorted(set(target_modules))}
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.unmerge()


def unwrap_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain nn.Linear with the merged weight (in place)."""
    for n, m in list(lora_layers(model).items()):
        _set_submodule(model, n, m.to_linear())
    return model


# ------------------------------------------------------------------------------------- PEFT format
def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors under peft's key names: base_model.model.<path>.lora_{A,B}.weight."""
    out = {}
    for n, m in lora_layers(model).items():
        out[f"{PEFT_PREFIX}{n}.lora_A.weight"] = m.lora_A.weight.detach().contiguous().cpu()
        out[f"{PEFT_PREFIX}{n}.lora_B.weight"] = m.lora_B.weight.detach().contiguous().cpu()
    return out


def save_lora_adapter(model: nn.Module, out_dir: Union[str, Path], base_model_name_or_path: Optional[str] = None,
                      task_type: Optional[str] = None) -> Path:
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to save; call apply_lora first")
    first = next(iter(layers.values()))
    cfg = getattr(model, "_lora_config", None) or {
        "r": first.r, "lora_alpha": first.lora_alpha, "lora_dropout": 0.0,
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in layers})}
    if isinstance(first.lora_dropout, nn.Dropout):
        cfg = {**cfg, "lora_dropout": first.lora_dropout.p}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
        "r": cfg["r"], "lora_alpha": cfg["lora_alpha"], "lora_dropout": cfg["lora_dropout"],
        "target_modules": cfg["target_modules"], "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {},
    }
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    save_file(lora_state_dict(model), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return out


def load_lora_adapter(model: nn.Module, adapter_dir: Union[str, Path], freeze_base: bool = True) -> list[str]:
    """Wrap `model` as the adapter's config says and load its tensors (lmlab- or peft-saved)."""
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    if not (d / ADAPTER_CONFIG).exists():
        raise FileNotFoundError(f"{d / ADAPTER_CONFIG} not found (not a PEFT adapter directory)")
    cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{d / ADAPTER_CONFIG}: peft_type={cfg.get('peft_type')!r}; only LORA is supported")
    for k in ("use_dora", "use_rslora"):
        if cfg.get(k):
            raise ValueError(f"{d / ADAPTER_CONFIG}: {k}=true is not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{d / ADAPTER_CONFIG}: per-layer rank_pattern/alpha_pattern are not supported")
    if not lora_layers(model):
        apply_lora(model, cfg["r"], cfg["lora_alpha"], cfg.get("lora_dropout", 0.0), cfg["target_modules"],
                   freeze_base=freeze_base)
    tensors = load_file(str(d / ADAPTER_WEIGHTS))
    layers = lora_layers(model)
    loaded = set()
    for key, t in tensors.items():
        path = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        m = re.fullmatch(r"(.+)\.(lora_[AB])(?:\.default)?\.weight", path)
        if m is None or m.group(1) not in layers:
            raise ValueError(f"{d / ADAPTER_WEIGHTS}: key {key!r} does not name a LoRA layer of this model")
        getattr(layers[m.group(1)], m.group(2)).weight.data.copy_(t)
        loaded.add(m.group(1))
    missing = sorted(set(layers) - loaded)
    if missing:
        raise ValueError(f"{d / ADAPTER_WEIGHTS}: no tensors for LoRA layer {missing[0]!r}")
    return sorted(loaded)
