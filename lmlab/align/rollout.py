"""Rollouts for online RL: n sampled completions per prompt from an lmlab Decoder with its KV cache.

Notation: p = prompts, n = samples per prompt, b = p·n rows, tp = prompt tokens, tn = new tokens.

`sample` is the single entry point the RL loops call; `set_sampler(fn)` swaps in another engine (e.g. the
batched engine in lmlab.infer) with the same signature. Shared prefix: the prompt batch (p rows) is
prefilled once and its KV cache is repeated n times, instead of prefilling b rows.
Prompts in one call must have the same length (the synthetic tasks pad prompts to a fixed width).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass
class Rollout:
    tokens: torch.Tensor         # (b, tp + tn) prompt + completion
    prompt_len: int
    response_mask: torch.Tensor  # (b, tn) 1 up to and including the first EOS
    logprobs: torch.Tensor       # (b, tn) log π_sample(token) at sampling time (temperature applied)

    @property
    def responses(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len:]


def _repeat_state(s, n: int):
    if s is None:
        return None
    if hasattr(s, "k") and hasattr(s, "v"):
        s.k = s.k.repeat_interleave(n, 0)
        s.v = s.v.repeat_interleave(n, 0)
        return s
    if isinstance(s, torch.Tensor):
        return s.repeat_interleave(n, 0)
    if isinstance(s, (tuple, list)):
        return type(s)(_repeat_state(x, n) for x in s)
    raise TypeError(f"cannot share a prefix for state of type {type(s).__name__}")


@torch.no_grad()
def naive_sample(model, prompts: torch.Tensor, max_new_tokens: int, n: int = 1, temperature: float = 1.0,
                 eos_id: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Rollout:
    """Reference sampler: full forward over the whole prefix for every new token (no cache)."""
    x = prompts.repeat_interleave(n, 0)
    lps = []
    for _ in range(max_new_tokens):
        logits = model(x).logits[:, -1].float() / max(temperature, 1e-6)
        logp = torch.log_softmax(logits, -1)
        tok = torch.multinomial(logp.exp(), 1, generator=generator)
        lps.append(logp.gather(-1, tok)[:, 0])
        x = torch.cat([x, tok], 1)
    tn = max_new_tokens
    return Rollout(x, prompts.shape[1], _response_mask(x[:, -tn:], eos_id), torch.stack(lps, 1))


@torch.no_grad()
def cached_sample(model, prompts: torch.Tensor, max_new_tokens: int, n: int = 1, temperature: float = 1.0,
                  eos_id: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Rollout:
    p, tp = prompts.shape
    states = model.init_states(p, tp + max_new_tokens)
    out = model(prompts, states=states)                           # prefill once per prompt
    states = [_repeat_state(s, n) for s in out.states]
    logits = out.logits[:, -1].float().repeat_interleave(n, 0)    # (b, v)
    toks, lps = [], []
    for i in range(max_new_tokens):
        logp = torch.log_softmax(logits / max(temperature, 1e-6), -1)
        tok = torch.multinomial(logp.exp(), 1, generator=generator)  # (b, 1)
        toks.append(tok)
        lps.append(logp.gather(-1, tok)[:, 0])
        if i + 1 < max_new_tokens:
            out = model(tok, states=states)
            states, logits = out.states, out.logits[:, -1].float()
    resp = torch.cat(toks, 1)
    x = torch.cat([prompts.repeat_interleave(n, 0), resp], 1)
    return Rollout(x, tp, _response_mask(resp, eos_id), torch.stack(lps, 1))


def _response_mask(resp: torch.Tensor, eos_id: Optional[int]) -> torch.Tensor:
    if eos_id is None:
        return torch.ones_like(resp)
    is_eos = (resp == eos_id).long()
    after = (is_eos.cumsum(1) - is_eos) > 0                       # strictly after the first EOS
    return (~after).long()


_SAMPLER: Callable[..., Rollout] = cached_sample


def set_sampler(fn: Callable[..., Rollout]) -> None:
    global _SAMPLER
    _SAMPLER = fn


def sample(model, prompts: torch.Tensor, max_new_tokens: int, n: int = 1, temperature: float = 1.0,
           eos_id: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Rollout:
    was_training = model.training
    model.eval()
    try:
        return _SAMPLER(model, prompts, max_new_tokens, n=n, temperature=temperature, eos_id=eos_id,
                        generator=generator)
    finally:
        model.train(was_training)
