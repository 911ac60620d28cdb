"""Partial LoRA (InternLM-XComposer2, Dong et al., 2024): the LoRA update applies only to masked tokens.

Notation: b = batch, t = tokens, i = in_features, o = out_features, m = (b, t) bool token mask.

    y[b, t] = x[b, t] Wᵀ + bias + m[b, t] · (α/r) · x[b, t] Aᵀ Bᵀ

In XComposer2 the mask marks image tokens, so the language model's weights are untouched for text; any token
subset works (e.g. assistant turns during SFT). With the mask all true this is LoRA, all false the base model.

How the mask travels with the batch: `apply_partial_lora` puts one `TokenMask` holder on the model
(`model.peft_token_mask`) shared by every wrapped layer. Before a forward pass set it for that batch:

    with token_mask(model, batch["lora_mask"]):     # (b, t) bool, same (b, t) as the input ids
        out = model(batch["input_ids"], targets=batch["targets"])

(or `set_token_mask(model, mask)` / `set_token_mask(model, None)`). The mask must have the shape of the
layer input without its last dimension; a mismatch (e.g. decoding one token against a full-length mask)
raises. With no mask set, layers follow `when_unset`: "base" (no update; XComposer2 on text-only input),
"all" (plain LoRA) or "error".

Fast path: gather the masked rows, run the low-rank branch on those only, scatter-add back
(cost ∝ masked tokens). `naive_partial_lora_forward` multiplies a full LoRA delta by the mask.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.nn.peft.lora import LoRALinear, TargetSpec, freeze_except, replace_linears


class TokenMask:
    """Mutable holder shared by every PartialLoRALinear of one model."""

    def __init__(self, when_unset: str = "base"):
        if when_unset not in ("base", "all", "error"):
            raise ValueError(f"when_unset={when_unset!r}; choose one of base, all, error")
        self.mask: Optional[torch.Tensor] = None
        self.when_unset = when_unset


def naive_partial_lora_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                               lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float,
                               mask: torch.Tensor) -> torch.Tensor:
    """Reference: base output plus the full LoRA delta zeroed where mask is false."""
    y = x @ weight.T + (bias if bias is not None else 0)                      # (b, t, o)
    delta = scaling * (x @ lora_A.T @ lora_B.T)                               # (b, t, o)
    return y + delta * mask.unsqueeze(-1).to(delta.dtype)


class PartialLoRALinear(LoRALinear):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 holder: Optional[TokenMask] = None):
        super().__init__(base, r, alpha, dropout)
        self.holder = holder or TokenMask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            raise RuntimeError("a merged Partial LoRA layer would apply the update to every token; unmerge it first")
        y = F.linear(x, self.weight, self.bias)                               # (..., o)
        mask = self.holder.mask
        if mask is None:
            if self.holder.when_unset == "all":
                return y + self.lora_delta(x)
            if self.holder.when_unset == "error":
                raise RuntimeError("Partial LoRA: no token mask set; use lmlab.nn.peft.token_mask(model, mask)")
            return y
        if tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"Partial LoRA token mask shape {tuple(mask.shape)} != layer input tokens {tuple(x.shape[:-1])}")
        flat_x = x.reshape(-1, x.shape[-1])                                   # (b·t, i)
        rows = mask.reshape(-1).nonzero().squeeze(1)                          # (n_masked,)
        delta = self.lora_delta(flat_x.index_select(0, rows))                 # (n_masked, o)
        return y.reshape(-1, y.shape[-1]).index_add(0, rows, delta.to(y.dtype)).view_as(y)


def apply_partial_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                       target_modules: TargetSpec = ("q_proj", "v_proj"), exclude: Iterable[str] = (),
                       freeze_base: bool = True, when_unset: str = "base") -> TokenMask:
    """Wrap the selected linears; returns the shared mask holder (also at `model.peft_token_mask`)."""
    holder = TokenMask(when_unset)
    replace_linears(model, target_modules, lambda lin: PartialLoRALinear(lin, r, alpha, dropout, holder), exclude)
    if freeze_base:
        freeze_except(model, ("lora_",))
    model.peft_token_mask = holder
    model._lora_config = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout,
                          "target_modules": target_modules if isinstance(target_modules, str) else sorted(set(target_modules))}
    return holder


def _holder(model: nn.Module) -> TokenMask:
    h = getattr(model, "peft_token_mask", None)
    if h is None:
        raise ValueError(f"{type(model).__name__} has no Partial LoRA layers (call apply_partial_lora first)")
    return h


def set_token_mask(model: nn.Module, mask: Optional[torch.Tensor]) -> None:
    _holder(model).mask = None if mask is None else mask.bool()


@contextlib.contextmanager
def token_mask(model: nn.Module, mask: Optional[torch.Tensor]):
    h = _holder(model)
    prev = h.mask
    h.mask = None if mask is None else mask.bool()
    try:
        yield model
    finally:
        h.mask = prev
