"""A block = token mixer + channel mixer, each wrapped by the residual policy (see DESIGN.md).

All three parts come from registries, so new mixers and policies plug in without editing this file.
Constructor contract for registered classes (`Component` subclasses):
    class Args(ComponentArgs)      the keys `model.<kind>_args.<name>` may hold: typed, defaults, ranges,
                                   unknown keys forbidden; `Args.check(dims)` for rules that need model sizes.
                                   ModelConfig validates every entry against it at load time, so a bad
                                   argument is a one-line ConfigError before any tensor exists.
    TOKEN_MIXERS[name](dims, args)            -> forward(x, state=None, positions=None) -> (y, state)
    CHANNEL_MIXERS[name](dims, args)          -> forward(x) -> y
    RESIDUALS[name](dims, args, sublayer_idx) -> forward(h, fn) -> (h, extra)
`dims` (lmlab.config.Dims) holds the model-wide sizes and the layer index; `args` is the component's
validated `Args`. `Cls.from_config(cfg, layer_idx, **args)` builds one outside a decoder (tests, benchmarks).

Initialisation is the decoder's (`Decoder.reset_parameters`): constructors only allocate parameters (drawing
from the global RNG in a fixed order), and a component names its residual-branch output weights in
`RESIDUAL_OUT` (parameter names) so the decoder gives them the depth-scaled std. Parameters that are not an
`nn.Linear`/`nn.Embedding` weight are set by the module's `reset_extra_parameters(init)` (see `Init`).
A module that has an auxiliary loss (MoE balance, z-loss …) sets `self.aux_loss` in forward; the decoder
sums them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from lmlab.config import ArgError, ComponentArgs, ConfigError, Dims, config_error
from lmlab.registry import CHANNEL_MIXERS, RESIDUALS, TOKEN_MIXERS

REGISTRIES = {"mixer": TOKEN_MIXERS, "ffn": CHANNEL_MIXERS, "residual": RESIDUALS}


@dataclass
class Init:
    """The decoder's initialisation rule, handed to `reset_extra_parameters(init)`: N(0, std) for every weight
    matrix, N(0, out_std) for the residual-branch outputs (`residual_out`: ids of those parameters)."""

    std: float = 0.02
    out_std: float = 0.02
    residual_out: set = field(default_factory=set)

    def std_for(self, p: torch.Tensor) -> float:
        return self.out_std if id(p) in self.residual_out else self.std

    def normal_(self, p: torch.Tensor) -> torch.Tensor:
        return nn.init.normal_(p, 0.0, self.std_for(p))


class Component(nn.Module):
    """Base of registered token mixers, channel mixers and residual policies."""

    Args: ClassVar[type[ComponentArgs]] = ComponentArgs
    RESIDUAL_OUT: ClassVar[tuple[str, ...]] = ()   # parameters that write into the residual stream

    def residual_out_params(self) -> list[nn.Parameter]:
        """The parameters named in RESIDUAL_OUT that this instance has (optional parts may be absent)."""
        out = []
        for name in self.RESIDUAL_OUT:
            try:
                out.append(self.get_parameter(name))
            except AttributeError:
                pass
        return out

    @classmethod
    def from_config(cls, cfg, layer_idx: int = 0, *extra: Any, **args: Any) -> "Component":
        """Build outside a decoder: sizes from ModelConfig `cfg`, arguments as keywords (validated, one-line
        ConfigError naming the key when bad). `extra`: the sublayer index of a residual policy."""
        from pydantic import ValidationError

        try:
            a = cls.Args.model_validate(args)
        except ValidationError as e:
            raise config_error(e, cls.Args, cls.__name__) from None
        dims = cfg.dims(layer_idx)
        try:
            a.check(dims)
        except ArgError as e:
            raise ConfigError(f"{cls.__name__}: {e.field}={getattr(a, e.field, None)!r}: {e.why}") from None
        return cls(dims, a, *extra)


def build(kind: str, name: str, cfg, layer_idx: int, *extra: Any) -> nn.Module:
    """Component `name` of `kind` ('mixer', 'ffn', 'residual') for layer `layer_idx` of ModelConfig `cfg`."""
    cls = REGISTRIES[kind].get(name)
    return cls(cfg.dims(layer_idx), cfg.component_args(kind, name), *extra)


class Block(nn.Module):
    def __init__(self, cfg, layer_idx: int):
        super().__init__()
        mixer_name, ffn_name = cfg.mixer_for(layer_idx), cfg.ffn_for(layer_idx)
        self.mixer_name, self.ffn_name = mixer_name, ffn_name
        self.mixer = build("mixer", mixer_name, cfg, layer_idx)
        self.ffn = build("ffn", ffn_name, cfg, layer_idx)
        self.res_mixer = build("residual", cfg.residual, cfg, layer_idx, 0)
        self.res_ffn = build("residual", cfg.residual, cfg, layer_idx, 1)

    def init_state(self, batch: int, max_len: int, device=None, dtype=torch.float32):
        fn = getattr(self.mixer, "init_state", None)
        return fn(batch, max_len, device, dtype) if fn else None

    def forward(self, h: torch.Tensor, state: Any = None,
                positions: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Any]:
        h, state = self.res_mixer(h, lambda x: self.mixer(x, state=state, positions=positions))
        h, _ = self.res_ffn(h, lambda x: (self.ffn(x), None))
        return h, state
