"""Row-seeded rollouts: every sampled token depends only on (seed, row), never on how rows are split.

The dataflow splits a rollout batch across rollout workers; with one shared torch.Generator the tokens of a
row would depend on which other rows were sampled in the same call, so 1 worker and 2 workers would draw
different samples. Here row r (r = prompt_index·n + j, j-th sample of its prompt) draws from its own
generator seeded with mix(seed, r), so the rollout of a batch is the same whatever the split. `seed` is drawn
once per rollout from the loop's generator (one draw, whoever samples), so a single-process `rl_train` with
`lmlab.align.rollout.set_sampler(row_seeded_sample)` consumes its generator exactly as the dataflow's
controller does, and the two produce the same iteration.

Decoding is lmlab's KV-cache sampler (lmlab.align.rollout.cached_sample): one prefill per prompt, the cache
repeated n times, then one token per step; only the draw differs (b multinomials with b generators).
"""
from __future__ import annotations

from typing import Optional

import torch

from lmlab.align.rollout import Rollout, _repeat_state, _response_mask

_MIX = 0x9E3779B97F4A7C15  # golden-ratio increment (splitmix64)
_MASK = (1 << 63) - 1


def draw_seed(generator: Optional[torch.Generator]) -> int:
    """One 62-bit seed from the loop's generator (the only draw a rollout makes from it)."""
    return int(torch.randint(0, 1 << 62, (1,), generator=generator).item())


def row_generator(seed: int, row: int) -> torch.Generator:
    """The generator of global row `row` of a rollout seeded with `seed` (splitmix64-style mixing)."""
    z = (seed + (row + 1) * _MIX) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return torch.Generator().manual_seed((z ^ (z >> 31)) & _MASK)


def row_ids(prompt_index: torch.Tensor, n: int) -> torch.Tensor:
    """Global row of every (prompt, sample): prompt_index (p,) -> (p·n,) = prompt_index·n + j."""
    return (prompt_index.long()[:, None] * n + torch.arange(n)[None, :]).reshape(-1)


@torch.no_grad()
def seeded_sample(model, prompts: torch.Tensor, max_new_tokens: int, n: int, temperature: float,
                  eos_id: Optional[int], seed: int, prompt_index: Optional[torch.Tensor] = None) -> Rollout:
    """n samples per prompt with the KV cache; prompt i is global prompt prompt_index[i] (default 0..p-1)."""
    p, tp = prompts.shape
    if prompt_index is None:
        prompt_index = torch.arange(p)
    gens = [row_generator(seed, int(r)) for r in row_ids(prompt_index, n)]
    was_training = model.training
    model.eval()
    try:
        states = model.init_states(p, tp + max_new_tokens)
        out = model(prompts, states=states)
        states = [_repeat_state(s, n) for s in out.states]
        logits = out.logits[:, -1].float().repeat_interleave(n, 0)
        toks, lps = [], []
        for i in range(max_new_tokens):
            logp = torch.log_softmax(logits / max(temperature, 1e-6), -1)
            probs = logp.exp().cpu()                     # the row generators are CPU generators
            tok = torch.stack([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(gens)])  # (b, 1)
            tok = tok.to(logp.device)
            toks.append(tok)
            lps.append(logp.gather(-1, tok)[:, 0])
            if i + 1 < max_new_tokens:
                out = model(tok, states=states)
                states, logits = out.states, out.logits[:, -1].float()
    finally:
        model.train(was_training)
    resp = torch.cat(toks, 1)
    x = torch.cat([prompts.repeat_interleave(n, 0), resp], 1)
    return Rollout(x, tp, _response_mask(resp, eos_id), torch.stack(lps, 1))


def row_seeded_sample(model, prompts: torch.Tensor, max_new_tokens: int, n: int = 1, temperature: float = 1.0,
                      eos_id: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Rollout:
    """`lmlab.align.rollout.sample`'s signature: draws the rollout seed from `generator`, then samples by row.
    Install it with `lmlab.align.rollout.set_sampler(row_seeded_sample)` to run rl_train on the same samples
    as the dataflow."""
    return seeded_sample(model, prompts, max_new_tokens, n, temperature, eos_id, draw_seed(generator))
