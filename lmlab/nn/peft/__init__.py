"""Parameter-efficient fine-tuning, selected by config: LoRA, Partial LoRA (token-masked), SpIEL sparse deltas.

    handle = apply_peft(model, {"method": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]})
    handle = apply_peft(model, {"method": "partial_lora", "r": 8, "target_modules": ".*proj"})
    handle = apply_peft(model, {"method": "spiel", "n_trainable": 20000, "regrow": "ag", "update_interval": 20})

`cfg_dict` (e.g. `RunConfig.extra["peft"]`) has `method` plus that method's keyword arguments (see
`apply_lora`, `apply_partial_lora`, `SpIEL`); `method: none` (or an empty dict) leaves the model as is.
Methods are looked up by name in `lmlab.registry.PEFT_METHODS` (`lmlab list` shows them): lora, partial_lora,
spiel (as published) and spiel_cycle_delta (the ablation); a new method registers a `PeftMethod` there.
The model is modified in place; afterwards only the PEFT parameters require grad (`train_also` lists extra
name fragments to keep trainable, e.g. ["norm"]). For SpIEL the prune/regrow cycle is driven by an optimizer
step post-hook: the handle attaches itself to the first optimizer that steps on its deltas, so any training
loop (lmlab's trainer, SFT, DPO) that builds its optimizer from `requires_grad` parameters works unchanged;
call `handle.attach(optimizer)` to do it explicitly.

Partial LoRA's token mask travels in the batch dict under "lora_mask" ((b, t) bool); a training step wraps
its forward in `with peft_context(model, batch): ...`, which sets the mask when the model has Partial LoRA
layers and does nothing otherwise.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from lmlab.nn.peft.lora import (LoRALinear, apply_lora, load_lora_adapter, lora_layers, merge_lora,
                                naive_lora_forward, save_lora_adapter, unmerge_lora, unwrap_lora)
from lmlab.nn.peft.partial_lora import (PartialLoRALinear, TokenMask, apply_partial_lora,
                                        naive_partial_lora_forward, set_token_mask, token_mask)
from lmlab.nn.peft.sparse_ft import SparseDeltaLinear, SpIEL, apply_spiel, naive_sparse_delta_linear
from lmlab.registry import PEFT_METHODS, RegistryError

_LORA_ARGS = frozenset({"r", "alpha", "dropout", "target_modules", "exclude"})
_SPIEL_ARGS = frozenset({"density", "n_trainable", "target_modules", "exclude", "regrow", "update_interval",
                         "drop_fraction", "accumulation_steps", "candidates", "sm3_beta", "total_steps", "seed",
                         "init", "rate_policy"})


@dataclass
class PeftHandle:
    method: str
    model: nn.Module
    layers: list[str] = field(default_factory=list)
    spiel: Optional[SpIEL] = None
    token_mask: Optional[TokenMask] = None
    _global_hook: Any = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def attach(self, optimizer) -> None:
        if self.spiel is not None:
            self.spiel.attach(optimizer)
            self._drop_global_hook()

    def _drop_global_hook(self) -> None:
        if self._global_hook is not None:
            self._global_hook.remove()
            self._global_hook = None

    def merge(self) -> nn.Module:
        """Fold the adaptation into plain dense nn.Linear layers (in place) and return the model."""
        if self.token_mask is not None:
            raise ValueError("Partial LoRA cannot be merged: its update depends on the token mask")
        if self.spiel is not None:
            self._drop_global_hook()
            self.spiel.merge(self.model)
        elif lora_layers(self.model):
            unwrap_lora(self.model)
        return self.model

    def save(self, out_dir, **kw):
        """PEFT-format adapter (see `save_lora_adapter`; names="auto"|"hf"|"native")."""
        if not lora_layers(self.model):
            raise ValueError(f"saving adapters is supported for LoRA only (method={self.method!r})")
        return save_lora_adapter(self.model, out_dir, **kw)


@dataclass
class PeftMethod:
    """A PEFT method as `apply_peft` builds it: `build(model, **options) -> PeftHandle`, the option names it
    accepts (anything else in the config is an error naming the allowed ones) and a one-line description."""
    build: Callable[..., PeftHandle]
    options: frozenset
    description: str

    def __post_init__(self):
        self.__doc__ = self.description                   # what `lmlab list` prints


def _lazy_attach(handle: PeftHandle) -> None:
    """Attach SpIEL to the first optimizer that steps on its delta parameters (global post-hook)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    ref = weakref.ref(handle)
    ids = {id(p) for p in handle.spiel.parameters()}

    def hook(opt, args, kwargs):
        h = ref()
        if h is None or h.spiel is None or h._global_hook is None:
            return
        if any(id(p) in ids for g in opt.param_groups for p in g["params"]):
            h._drop_global_hook()
            h.spiel.attach(opt)
            # The optimizer's own step count places us in the cycle, so a resumed run (optimizer state
            # restored from a checkpoint) keeps its prune/regrow schedule.
            st = opt.state.get(h.spiel.parameters()[0], {}).get("step")
            if st is not None:
                h.spiel.t = int(st) - 1
            h.spiel.step(opt)                     # this step already happened

    handle._global_hook = register_optimizer_step_post_hook(hook)


def peft_context(model: nn.Module, batch: dict, key: str = "lora_mask"):
    """Context for one forward: sets the Partial LoRA token mask from batch[key] when both exist."""
    model = getattr(model, "module", model)                 # DDP/compiled wrappers keep the model in .module
    if getattr(model, "peft_token_mask", None) is not None and key in batch:
        return token_mask(model, batch[key])
    return contextlib.nullcontext()


def _build_lora(model: nn.Module, **cfg) -> PeftHandle:
    return PeftHandle("lora", model, apply_lora(model, **cfg))


def _build_partial_lora(model: nn.Module, **cfg) -> PeftHandle:
    holder = apply_partial_lora(model, **cfg)
    return PeftHandle("partial_lora", model, sorted(lora_layers(model)), token_mask=holder)


def _spiel_builder(name: str, variant: str) -> Callable[..., PeftHandle]:
    def build(model: nn.Module, **cfg) -> PeftHandle:
        cfg.setdefault("target_modules", r".*")
        sp = SpIEL(model, variant=variant, **cfg)
        handle = PeftHandle(name, model, sorted(sp.layers), spiel=sp)
        _lazy_attach(handle)
        return handle
    return build


PEFT_METHODS.register("lora", PeftMethod(
    _build_lora, _LORA_ARGS,
    "LoRA (Hu et al., 2021): frozen linear + trainable (α/r)·B A; PEFT-format adapters that peft loads"))
PEFT_METHODS.register("partial_lora", PeftMethod(
    _build_partial_lora, _LORA_ARGS | {"when_unset"},
    "Partial LoRA (InternLM-XComposer2): the LoRA update only on the tokens of the batch's lora_mask"))
PEFT_METHODS.register("spiel", PeftMethod(
    _spiel_builder("spiel", "spiel"), _SPIEL_ARGS,
    "SpIEL (Ansell et al., 2024) as published: gradient-chosen sparse deltas, prune smallest |φ|, regrow by "
    "|Σg|, seeded Adam moments"))
PEFT_METHODS.register("spiel_cycle_delta", PeftMethod(
    _spiel_builder("spiel_cycle_delta", "cycle_delta"), _SPIEL_ARGS,
    "SpIEL ablation: random init, prune by change over the cycle |φ − φ_start|, regrow never-active, zeroed moments"))


def peft_methods() -> list[str]:
    """'none' and every registered method name."""
    return ["none"] + PEFT_METHODS.names()


def apply_peft(model: nn.Module, cfg: Optional[dict]) -> PeftHandle:
    cfg = dict(cfg or {})
    method = cfg.pop("method", "none" if not cfg else None)
    if method != "none":
        try:
            spec = PEFT_METHODS.get(str(method))
        except RegistryError:
            raise ValueError(f"peft.method={method!r}; choose one of: {', '.join(peft_methods())}") from None
    train_also = cfg.pop("train_also", [])
    if method == "none":
        if cfg:
            raise ValueError(f"peft.{sorted(cfg)[0]} given with method=none")
        return PeftHandle("none", model)
    unknown = sorted(set(cfg) - spec.options)
    if unknown:
        raise ValueError(f"peft.{unknown[0]} is not an option of method={method}; allowed: {', '.join(sorted(spec.options))}")
    for key in ("target_modules", "exclude"):
        if isinstance(cfg.get(key), (list, tuple)):
            cfg[key] = list(cfg[key])
    handle = spec.build(model, **cfg)
    if train_also:
        for n, p in model.named_parameters():
            if any(t in n for t in train_also) and p.is_floating_point():
                p.requires_grad_(True)
    model.peft = handle
    return handle


__all__ = ["apply_peft", "peft_context", "peft_methods", "PeftHandle", "PeftMethod", "LoRALinear", "apply_lora", "merge_lora", "unmerge_lora", "unwrap_lora",
           "save_lora_adapter", "load_lora_adapter", "lora_layers", "naive_lora_forward", "PartialLoRALinear",
           "TokenMask", "apply_partial_lora", "set_token_mask", "token_mask", "naive_partial_lora_forward",
           "SparseDeltaLinear", "SpIEL", "apply_spiel", "naive_sparse_delta_linear"]
