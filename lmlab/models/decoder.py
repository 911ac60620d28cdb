"""The decoder-only LM: embeddings -> blocks -> final norm -> LM head, built from a ModelConfig.

Notation: b = batch, t = tokens, d = d_model, v = vocab.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import ModelConfig
from lmlab.nn.block import Block, Init
from lmlab.nn.norm import RMSNorm
from lmlab.nn.losses import linear_cross_entropy
from lmlab.registry import RESIDUALS


@dataclass
class DecoderOutput:
    """`logits` (b, t, v). When the loss was fused with the LM head (training with targets, see
    Decoder.forward) no logits tensor exists until `logits` is first read, which runs the head then."""
    loss: Optional[torch.Tensor] = None      # mean CLM loss over targets != -100
    aux_loss: Optional[torch.Tensor] = None  # sum of modules' auxiliary losses (unweighted)
    states: Optional[list] = None            # per-layer cache/state after this call
    hidden: Optional[torch.Tensor] = None    # (b, t, d) final-norm hidden states when asked
    metrics: dict = field(default_factory=dict)
    _logits: Optional[torch.Tensor] = field(default=None, repr=False)
    _make_logits: Optional[Callable[[], torch.Tensor]] = field(default=None, repr=False)

    @property
    def logits(self) -> Optional[torch.Tensor]:
        if self._logits is None and self._make_logits is not None:
            self._logits, self._make_logits = self._make_logits(), None
        return self._logits


class LowRankHead(nn.Module):
    """W = A·B with rank r (softmax-bottleneck studies)."""

    def __init__(self, d: int, v: int, rank: int):
        super().__init__()
        self.down = nn.Linear(d, rank, bias=False)
        self.up = nn.Linear(rank, v, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.up.weight @ self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.residual_cls = RESIDUALS.get(cfg.residual)
        if cfg.head_rank is not None:
            self.head = LowRankHead(cfg.d_model, cfg.vocab_size, cfg.head_rank)
        else:
            self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            if cfg.tie_embeddings:
                self.head.weight = self.embed.weight
        self.reset_parameters()

    def init_rule(self) -> Init:
        """Llama-style init, decided here and only here: N(0, σ) for every weight matrix, and the output
        weights of residual branches (what each block component names in RESIDUAL_OUT) scaled by
        1/sqrt(2·n_layer) (GPT-2/nanoGPT) so the residual stream's variance does not grow with depth."""
        std = self.cfg.init_std
        out = {id(p) for blk in self.blocks for part in (blk.mixer, blk.ffn)
               for p in (part.residual_out_params() if hasattr(part, "residual_out_params") else ())}
        return Init(std, std / math.sqrt(2 * self.cfg.n_layer), out)

    def reset_parameters(self) -> None:
        """Apply `init_rule()` module by module, in `self.modules()` order (so the RNG is drawn in a fixed
        order): nn.Linear/nn.Embedding weights here, other parameters by the module's
        `reset_extra_parameters(init)`; biases 0, RMSNorm weights 1."""
        init = self.init_rule()
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                init.normal_(m.weight)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif hasattr(m, "reset_extra_parameters"):
                m.reset_extra_parameters(init)
        for m in self.modules():
            if isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def init_states(self, batch: int, max_len: Optional[int] = None, device=None, dtype=None) -> list:
        device = device or self.embed.weight.device
        dtype = dtype or self.embed.weight.dtype
        return [blk.init_state(batch, max_len or self.cfg.max_seq_len, device, dtype) for blk in self.blocks]

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, states: Optional[list] = None,
                positions: Optional[torch.Tensor] = None, return_hidden: bool = False,
                reduction: str = "mean", embeds: Optional[torch.Tensor] = None) -> DecoderOutput:
        """idx (b, t) token ids; targets (b, t) with -100 = ignore; states from init_states() for decoding;
        `embeds` (b, t, d) replaces the token embeddings (a VLM's image tokens spliced into the text).

        With targets, a mean loss, gradients on and a plain linear head (training), the head and the
        cross-entropy run fused (lmlab.nn.losses.linear_cross_entropy): no (b, t, vocab) logits tensor is made
        unless the caller reads `out.logits`."""
        h = self.residual_cls.expand(self.embed(idx) if embeds is None else embeds, self.cfg)
        new_states = [] if states is not None else None
        for i, blk in enumerate(self.blocks):
            h, s = blk(h, state=states[i] if states is not None else None, positions=positions)
            if new_states is not None:
                new_states.append(s)
        x = self.norm(self.residual_cls.reduce(h, self.cfg))
        fused = (targets is not None and reduction == "mean" and type(self.head) is nn.Linear
                 and self.head.bias is None and torch.is_grad_enabled()
                 and not torch.is_autocast_enabled(x.device.type))
        logits = None if fused else self.head(x)
        out = DecoderOutput(_logits=logits, _make_logits=(lambda: self.head(x)) if fused else None,
                            states=new_states, hidden=x if return_hidden else None)
        aux = [m.aux_loss for m in self.modules() if getattr(m, "aux_loss", None) is not None]
        if aux:
            out.aux_loss = torch.stack([a.float() for a in aux]).sum()
        if fused:
            out.loss = linear_cross_entropy(x, self.head.weight, targets)
        elif targets is not None:
            acc = torch.promote_types(logits.dtype, torch.float32)   # at least fp32; float64 stays float64
            loss = F.cross_entropy(logits.to(acc).view(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=-100, reduction=reduction)
            out.loss = loss if reduction != "none" else loss.view(targets.shape)
        return out

    def num_params(self, non_embedding: bool = True) -> int:
        return count_params(self, non_embedding)


def count_params(model: nn.Module, non_embedding: bool = True) -> int:
    """Unique parameters; tied head counted once; embeddings excluded when asked (Kaplan convention)."""
    seen, n = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if non_embedding and name.startswith("embed."):
            continue
        n += p.numel()
    return n


def flops_per_token(model: Decoder, context: Optional[int] = None) -> int:
    """Forward FLOPs per token: 2·(matmul params) plus attention's context-dependent term.

    Training costs ≈ 3× this (forward + backward). MoE layers count only active experts when they
    expose `active_params()`.
    """
    cfg = model.cfg
    context = context or cfg.max_seq_len
    total = 0
    for blk in model.blocks:
        fn = getattr(blk.mixer, "flops_per_token", None)
        total += fn(context) if fn else 2 * sum(p.numel() for p in blk.mixer.parameters() if p.dim() >= 2)
        fn = getattr(blk.ffn, "flops_per_token", None)
        total += fn() if fn else 2 * sum(p.numel() for p in blk.ffn.parameters() if p.dim() >= 2)
    total += 2 * cfg.d_model * cfg.vocab_size if cfg.head_rank is None else 2 * cfg.head_rank * (cfg.d_model + cfg.vocab_size)
    return total


def build_model(cfg: ModelConfig) -> Decoder:
    return Decoder(cfg)
