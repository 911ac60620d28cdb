"""A VLM over precomputed feature views with `<region>` tokens (Ferret-v2, Zhang et al., 2024, arXiv:2404.07973):
the image is one or more feature views (Ferret-v2: the global view of encoder A and the stitched high-resolution
tile map of encoder B, lmlab.vision.anyres), each with its own projector, concatenated into the image's tokens
at `<image>`; a referred region's pooled feature (lmlab.vision.region) goes through the region projector into
the one position of a `<region>` marker. With one view and no regions it is a plain LLaVA-style VLM over
features, which is how Synth² trains on real and generated image embeddings alike.

Notation: b = batch, t = tokens, m = images, V = LM vocabulary, views v = 1..k with (m, n_v, c_v) features,
n = Σ n_v image tokens per image, r = regions, d = LM width.

    I = concat_v P_v(F_v)                     (m, n, d)      per-view projector (LLaVA-1.5 MLP)
    R = P_r(region features)                  (r, d)
    table = [I.reshape(m·n, d); R]            (m·n + r, d)
    E[t] = embed(id_t)        if id_t < V
           table[id_t − V]    otherwise       (the engine's extra-embedding convention, lmlab.infer.engine)

A prompt is encoded once with placeholder codes (IMAGE = −1 for each of the n image positions, REGION = −2
per `<region>`); `place` maps them onto a table: image slot s → V + s·n + j, region k → V + m·n + k.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lmlab.models.vlm import IMAGE_MARKER, Projector

REGION_MARKER = "<region>"
IMAGE, REGION = -1, -2


def encode_views_prompt(tok, prompt: str, n_image: int) -> list[int]:
    """Ids of a prompt: each `<image>` -> n_image IMAGE codes, each `<region>` -> one REGION code."""
    ids: list[int] = []
    for i, part in enumerate(prompt.split(IMAGE_MARKER)):
        if i:
            ids += [IMAGE] * n_image
        for k, piece in enumerate(part.split(REGION_MARKER)):
            if k:
                ids.append(REGION)
            ids += tok.encode(piece) if piece else []
    if getattr(tok, "add_bos", False) and getattr(tok, "bos_id", None) is not None:
        ids = [tok.bos_id] + ids
    return ids


def encode_views_example(tok, prompt: str, answer: str, n_image: int) -> tuple[list[int], list[int]]:
    """(input ids with placeholder codes, targets) of prompt + " answer" + EOS, loss on the answer only."""
    p = encode_views_prompt(tok, prompt, n_image)
    a = tok.encode(" " + answer) + [tok.eos_id]
    full = p + a
    return full[:-1], [-100] * (len(p) - 1) + a


def place(ids: Sequence[int], image_slot: int, region_slots: Sequence[int], n: int, vocab: int,
          region_base: int) -> list[int]:
    """Placeholder codes -> table ids: j-th IMAGE -> V + slot·n + j, k-th REGION -> V + region_base + slots[k]."""
    out, j, k = [], 0, 0
    for t in ids:
        if t == IMAGE:
            out.append(vocab + image_slot * n + j)
            j += 1
        elif t == REGION:
            if k >= len(region_slots):
                raise ValueError(f"prompt has more {REGION_MARKER} markers than regions ({len(region_slots)})")
            out.append(vocab + region_base + region_slots[k])
            k += 1
        else:
            out.append(t)
    if j not in (0, n):
        raise ValueError(f"prompt has {j} image positions; one image needs {n}")
    return out


class FerretVLM(nn.Module):
    """Feature views -> projectors -> image tokens, region features -> region projector, spliced by table ids
    into an lmlab decoder. `tokenizer` rides along (not a module)."""

    def __init__(self, lm: nn.Module, tokenizer, view_dims: Sequence[int], view_tokens: Sequence[int],
                 region_dim: Optional[int] = None, kind: str = "mlp"):
        super().__init__()
        if len(view_dims) != len(view_tokens) or not view_dims:
            raise ValueError("FerretVLM: give one token count per view, at least one view")
        d = lm.cfg.d_model
        self.lm, self.tokenizer = lm, tokenizer
        self.projectors = nn.ModuleList(Projector(c, d, kind) for c in view_dims)
        self.region_projector = Projector(region_dim, d, kind) if region_dim else None
        self.view_tokens = list(view_tokens)
        self.n_image_tokens = sum(view_tokens)

    @property
    def vocab(self) -> int:
        return self.lm.embed.num_embeddings

    def image_tokens(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """[(m, n_v, c_v)] -> (m, n, d)."""
        if len(views) != len(self.projectors):
            raise ValueError(f"FerretVLM: {len(views)} views for {len(self.projectors)} projectors")
        dt = self.projectors[0].fc1.weight.dtype
        return torch.cat([p(v.to(dt)) for p, v in zip(self.projectors, views)], dim=1)

    def region_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """(r, c) -> (r, d)."""
        if self.region_projector is None:
            raise ValueError(f"FerretVLM: this model has no region projector; remove {REGION_MARKER}")
        return self.region_projector(feats.to(self.region_projector.fc1.weight.dtype))

    def table(self, views: Sequence[torch.Tensor], regions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(m·n + r, d) extra-embedding table: image tokens in slot order, then region tokens."""
        img = self.image_tokens(views)
        rows = [img.reshape(-1, img.shape[-1])]
        if regions is not None and regions.shape[0]:
            rows.append(self.region_tokens(regions))
        return torch.cat(rows)

    def embed_ids(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(b, t) ids -> (b, t, d): the LM's embeddings below V, table rows at and above."""
        V = self.vocab
        ext = ids >= V
        emb = self.lm.embed(ids.masked_fill(ext, 0))
        return torch.where(ext[..., None], table[(ids - V).clamp(min=0)].to(emb.dtype), emb)

    def forward(self, ids: torch.Tensor, table: torch.Tensor, targets: Optional[torch.Tensor] = None, **kw):
        V = self.vocab
        return self.lm(ids.masked_fill(ids >= V, 0), targets=targets, embeds=self.embed_ids(ids, table), **kw)


def naive_embed_ids(vlm: FerretVLM, ids: list[int], views: Sequence[torch.Tensor], image: int,
                    regions: Optional[torch.Tensor]) -> torch.Tensor:
    """Reference for place + table + embed_ids on one prompt with placeholder codes: image tokens of `image`
    projected view by view and region rows projected one at a time, concatenated with text embeddings."""
    img = torch.cat([p(v[image:image + 1].to(p.fc1.weight.dtype))[0] for p, v in zip(vlm.projectors, views)])
    rows, j, k = [], 0, 0
    for t in ids:
        if t == IMAGE:
            rows.append(img[j])
            j += 1
        elif t == REGION:
            rows.append(vlm.region_projector(regions[k:k + 1].to(img.dtype))[0])
            k += 1
        else:
            rows.append(vlm.lm.embed(torch.tensor([t]))[0])
    return torch.stack(rows)


__all__ = ["REGION_MARKER", "IMAGE", "REGION", "encode_views_prompt", "encode_views_example", "place",
           "FerretVLM", "naive_embed_ids"]
