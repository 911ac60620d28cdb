"""Greedy answers of a VLM to prompts with several images each (MM1.5's overview + tiles), from precomputed
features: example i's k images become k slots of the engine's extra-embedding table (ids ≥ vocabulary), as in
lmlab.infer.vlm, without re-encoding the tiles.

    outputs = answer_tiled(vlm, prompts, feats)       # feats from lmlab.train.tiled.tile_features
"""
from __future__ import annotations

import torch

from lmlab.backend import GenerationConfig


@torch.no_grad()
def answer_tiled(vlm, prompts: list[str], feats: list[torch.Tensor], max_new_tokens: int = 12,
                 batch_size: int = 64) -> list[str]:
    """Greedy answers; example i's k images are slots of the engine's extra-embedding table (ids ≥ vocab)."""
    from lmlab.infer.engine import Engine
    from lmlab.infer.vlm import ImageTable

    engine = Engine(vlm.lm, vlm.tokenizer, hydragen=False)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=["\n"])
    out: list[str] = []
    for s in range(0, len(prompts), batch_size):
        table, ids, rows = ImageTable(vlm), [], []
        slot = 0
        for p, f in zip(prompts[s:s + batch_size], feats[s:s + batch_size]):
            ids.append(table.prompt_ids(p, list(range(slot, slot + f.shape[0]))))
            slot += f.shape[0]
            rows.append(f)
        extra = vlm.image_tokens(features=torch.cat(rows)).reshape(-1, vlm.lm.cfg.d_model)
        out += [c[0].text.strip() for c in engine.generate_ids(ids, gen, extra_embeds=extra)]
    return out


__all__ = ["answer_tiled"]
