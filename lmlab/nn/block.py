"""A block = token mixer + channel mixer, each wrapped by the residual policy (see DESIGN.md).

All three parts come from registries, so new mixers and policies plug in without editing this file.
Constructor contract for registered classes:
    TOKEN_MIXERS[name](cfg, layer_idx, **cfg.mixer_args[name])     -> forward(x, state=None, positions=None) -> (y, state)
    CHANNEL_MIXERS[name](cfg, layer_idx, **cfg.ffn_args[name])     -> forward(x) -> y
    RESIDUALS[name](cfg, layer_idx, sublayer_idx, **cfg.residual_args)
A module that has an auxiliary loss (MoE balance, z-loss …) sets `self.aux_loss` in forward; the decoder
sums them.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from lmlab.registry import CHANNEL_MIXERS, RESIDUALS, TOKEN_MIXERS


def build(registry, name: str, *args: Any, section: str, **kwargs: Any) -> nn.Module:
    cls = registry.get(name)
    try:
        return cls(*args, **kwargs)
    except TypeError as e:
        # Bad keyword from YAML: surface it as a config error naming the section.
        from lmlab.config import ConfigError

        raise ConfigError(f"model.{section}: {name}: {e}") from None


class Block(nn.Module):
    def __init__(self, cfg, layer_idx: int):
        super().__init__()
        mixer_name, ffn_name = cfg.mixer_for(layer_idx), cfg.ffn_for(layer_idx)
        self.mixer_name, self.ffn_name = mixer_name, ffn_name
        self.mixer = build(TOKEN_MIXERS, mixer_name, cfg, layer_idx, section=f"mixer_args.{mixer_name}",
                           **cfg.mixer_args.get(mixer_name, {}))
        self.ffn = build(CHANNEL_MIXERS, ffn_name, cfg, layer_idx, section=f"ffn_args.{ffn_name}",
                         **cfg.ffn_args.get(ffn_name, {}))
        self.res_mixer = build(RESIDUALS, cfg.residual, cfg, layer_idx, 0, section="residual_args",
                               **cfg.residual_args)
        self.res_ffn = build(RESIDUALS, cfg.residual, cfg, layer_idx, 1, section="residual_args",
                             **cfg.residual_args)

    def init_state(self, batch: int, max_len: int, device=None, dtype=torch.float32):
        fn = getattr(self.mixer, "init_state", None)
        return fn(batch, max_len, device, dtype) if fn else None

    def forward(self, h: torch.Tensor, state: Any = None,
                positions: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Any]:
        h, state = self.res_mixer(h, lambda x: self.mixer(x, state=state, positions=positions))
        h, _ = self.res_ffn(h, lambda x: (self.ffn(x), None))
        return h, state
