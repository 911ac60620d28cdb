"""Greedy answers of a FerretVLM (lmlab.models.vlm_ferret) over precomputed feature views, through lmlab's
Engine: the table of every image and region of the call is the engine's extra-embedding table, so questions
about one image share its prefix.

    answer_views(vlm, examples, views, regions, max_new_tokens)   -> [text per example]
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from lmlab.backend import GenerationConfig
from lmlab.infer.engine import Engine
from lmlab.models.vlm_ferret import FerretVLM, place


@torch.no_grad()
def answer_views(vlm: FerretVLM, prompts: Sequence[tuple[list[int], int, list[int]]], views: Sequence[torch.Tensor],
                 regions: Optional[torch.Tensor] = None, max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
    """prompts: [(prompt ids with placeholder codes, image row, region rows)]; greedy decoding, stop at newline
    or EOS."""
    vlm.eval()
    engine = Engine(vlm.lm, vlm.tokenizer)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=["\n"])
    out: list[str] = []
    n, V = vlm.n_image_tokens, vlm.vocab
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        imgs = sorted({p[1] for p in chunk})
        slot = {i: k for k, i in enumerate(imgs)}
        regs = sorted({r for p in chunk for r in p[2]})
        rslot = {r: k for k, r in enumerate(regs)}
        idx = torch.tensor(imgs)
        table = vlm.table([v[idx] for v in views], regions[torch.tensor(regs)] if regs else None)
        ids = [place(p[0], slot[p[1]], [rslot[r] for r in p[2]], n, V, len(imgs) * n) for p in chunk]
        out += [row[0].text for row in engine.generate_ids(ids, gen, extra_embeds=table)]
    return out


__all__ = ["answer_views"]
