"""LoRA: a frozen linear layer plus a trainable low-rank update (Hu et al., 2021).

Notation: b = batch, t = tokens, i = in_features, o = out_features, r = rank, α = lora_alpha.

    y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ        A: (r, i) ~ Kaiming-uniform, B: (o, r) = 0

so training starts at the base model. `merge()` folds the update into the weight, W ← W + (α/r)·B A, and
`unmerge()` takes it out again. Layers are chosen by name like HF `peft`: a list of names matches a module
whose dotted path equals the name or ends with ".name"; a single string is a regex that must match the whole
path. Adapters are saved in the PEFT format (`adapter_config.json` + `adapter_model.safetensors`, keys
`base_model.model.<path>.lora_A.weight`). For a Decoder with a transformers Llama twin (imported from HF or a
GGUF, or exported with `export_hf`) <path> and `target_modules` are the HF names
(`model.layers.0.self_attn.q_proj`, via lmlab.nn.hf_names' weight map), so
`peft.PeftModel.from_pretrained(LlamaForCausalLM..., dir)` applies the adapter; otherwise they are the model's
own paths. `load_lora_adapter` reads either naming, and adapters that `peft` saved on the HF model; a tensor
that names no layer of the model is an error, never a warning.

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
from lmlab.nn.hf_names import HF_TWIN_ATTR, hf_linear_names, is_hf_llama, llama_mismatch
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
        for k, v in vars(base).items():                                      # keep attributes set on the wrapped layer
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
NAMINGS = ("auto", "hf", "native")


def _naming(model: nn.Module, names: str) -> str:
    """'hf' when the adapter should carry HF Llama module paths, else 'native' (the model's own paths)."""
    if names not in NAMINGS:
        raise ValueError(f"names={names!r}; choose one of: {', '.join(NAMINGS)}")
    if is_hf_llama(model):
        return "native"                                   # a transformers model's own paths are the HF names
    if names == "auto":
        return "hf" if hasattr(model, HF_TWIN_ATTR) else "native"
    return names


def _hf_table(model: nn.Module) -> dict[str, str]:
    """lmlab linear path -> HF Llama linear path for a Llama-shaped Decoder; raises otherwise."""
    why = llama_mismatch(model)
    if why is not None:
        raise ValueError(f"adapter with HF names: {why}; save it with names='native'")
    return hf_linear_names(model.cfg.n_layer)


def _aliases(model: nn.Module) -> dict[str, str]:
    """Foreign adapter path -> this model's path: HF names for a Llama-shaped Decoder, lmlab names for a
    transformers Llama; empty for anything else."""
    if is_hf_llama(model):
        return hf_linear_names(model.config.num_hidden_layers)
    if llama_mismatch(model) is None:
        return {hf: lm for lm, hf in hf_linear_names(model.cfg.n_layer).items()}
    return {}


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def lora_state_dict(model: nn.Module, rename: Optional[dict[str, str]] = None) -> dict[str, torch.Tensor]:
    """Adapter tensors under peft's key names: base_model.model.<path>.lora_{A,B}.weight (path renamed)."""
    rename = rename or {}
    out = {}
    for n, m in lora_layers(model).items():
        path = rename.get(n, n)
        out[f"{PEFT_PREFIX}{path}.lora_A.weight"] = m.lora_A.weight.detach().contiguous().cpu()
        out[f"{PEFT_PREFIX}{path}.lora_B.weight"] = m.lora_B.weight.detach().contiguous().cpu()
    return out


def save_lora_adapter(model: nn.Module, out_dir: Union[str, Path], base_model_name_or_path: Optional[str] = None,
                      task_type: Optional[str] = None, names: str = "auto") -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` in peft's format.

    names="hf": module paths and `target_modules` of the transformers Llama (model.layers.i.self_attn.q_proj,
    ...), so `peft.PeftModel.from_pretrained(LlamaForCausalLM, dir)` finds every tensor; the default "auto"
    picks it for a Decoder imported from HF or exported with `export_hf` (and records that checkpoint as
    `base_model_name_or_path`). names="native": the model's own paths (peft then loads it on this model).
    """
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to save; call apply_lora first")
    first = next(iter(layers.values()))
    odd = next((n for n, m in layers.items() if (m.r, m.lora_alpha) != (first.r, first.lora_alpha)), None)
    if odd is not None:
        raise ValueError(f"LoRA layer {odd!r} has r/alpha different from the others; peft's format needs one r and alpha")
    cfg = getattr(model, "_lora_config", None) or {
        "r": first.r, "lora_alpha": first.lora_alpha, "lora_dropout": 0.0,
        "target_modules": sorted({_leaf(n) for n in layers})}
    if isinstance(first.lora_dropout, nn.Dropout):
        cfg = {**cfg, "lora_dropout": first.lora_dropout.p}
    rename: dict[str, str] = {}
    targets = cfg["target_modules"]
    if _naming(model, names) == "hf":
        table = _hf_table(model)
        unmapped = sorted(set(layers) - set(table))
        if unmapped:
            raise ValueError(f"LoRA layer {unmapped[0]!r} has no HF Llama module; save with names='native'")
        rename = {n: table[n] for n in layers}
        paths = set(rename.values())
        leaves = sorted({_leaf(p) for p in paths})
        # bare leaf names when peft would select exactly these layers with them, else the full paths
        targets = leaves if {p for p in table.values() if _leaf(p) in leaves} == paths else sorted(paths)
        base_model_name_or_path = base_model_name_or_path or getattr(model, HF_TWIN_ATTR, None)
        task_type = task_type or "CAUSAL_LM"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
        "r": cfg["r"], "lora_alpha": cfg["lora_alpha"], "lora_dropout": cfg["lora_dropout"],
        "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {},
    }
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    save_file(lora_state_dict(model, rename), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return out


def load_lora_adapter(model: nn.Module, adapter_dir: Union[str, Path], freeze_base: bool = True) -> list[str]:
    """Wrap `model` where the adapter has tensors and load them; returns the wrapped paths.

    Reads adapters saved by lmlab or by `peft`, under this model's own module paths or under the other
    naming of the same Llama layer (HF paths on an lmlab Decoder, lmlab paths on a transformers Llama).
    Every tensor must land on a layer and every wrapped layer must get both matrices, else a ValueError:
    an adapter for another model never loads silently as the base model.
    """
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    cfg_file, w_file = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found (not a PEFT adapter directory)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_file}: peft_type={cfg.get('peft_type')!r}; only LORA is supported")
    for k in ("use_dora", "use_rslora", "fan_in_fan_out", "lora_bias"):
        if cfg.get(k):
            raise ValueError(f"{cfg_file}: {k}=true is not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{cfg_file}: per-layer rank_pattern/alpha_pattern are not supported")
    tensors = load_file(str(w_file))
    if not tensors:
        raise ValueError(f"{w_file}: holds no tensors")
    modules = {n: m for n, m in model.named_modules() if n and ".lora_" not in n and isinstance(m, (nn.Linear, LoRALinear))}
    aliases = _aliases(model)
    plan: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        path = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B|base_layer)(?:\.default)?\.weight", path)
        if m is None:
            raise ValueError(f"{w_file}: key {key!r} is not a LoRA A/B matrix (only plain LoRA adapters load)")
        layer = m.group(1) if m.group(1) in modules else aliases.get(m.group(1))
        if layer not in modules:
            raise ValueError(f"{w_file}: key {key!r} matches no linear layer of this {type(model).__name__} "
                             f"(adapter saved for another model?)")
        plan.setdefault(layer, {})[m.group(2)] = t
    r = int(cfg["r"])
    for n, pair in sorted(plan.items()):
        lin = modules[n]
        if not {"lora_A", "lora_B"} <= set(pair):
            raise ValueError(f"{w_file}: layer {n!r} lacks {sorted({'lora_A', 'lora_B'} - set(pair))[0]}")
        rank = lin.r if isinstance(lin, LoRALinear) else r
        want = {"lora_A": (rank, lin.in_features), "lora_B": (lin.out_features, rank),
                "base_layer": (lin.out_features, lin.in_features)}
        for ab, t in pair.items():
            if tuple(t.shape) != want[ab]:
                raise ValueError(f"{w_file}: {n}.{ab} has shape {tuple(t.shape)}, this model needs {want[ab]}")
    existing = lora_layers(model)
    if not existing:
        apply_lora(model, r, cfg["lora_alpha"], cfg.get("lora_dropout", 0.0), sorted(plan), freeze_base=freeze_base)
    else:
        if set(existing) != set(plan):
            odd = sorted(set(existing) ^ set(plan))[0]
            raise ValueError(f"{w_file}: the model's LoRA layers and the adapter's differ (first: {odd!r})")
        if any((m.r, m.lora_alpha) != (r, cfg["lora_alpha"]) for m in existing.values()):
            raise ValueError(f"{cfg_file}: r={r}, lora_alpha={cfg['lora_alpha']} differ from the model's LoRA layers")
    layers = lora_layers(model)
    with torch.no_grad():
        for n, pair in plan.items():
            for ab, t in pair.items():
                # peft saves the base weight of a targeted lm_head/embedding too; loading sets it, as peft does
                (layers[n] if ab == "base_layer" else getattr(layers[n], ab)).weight.copy_(t)
    return sorted(plan)
