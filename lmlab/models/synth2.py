"""Synth² (Sharifzadeh et al., 2024, arXiv:2403.07750): a text-to-image generator that synthesises in the image-
*embedding* space, so its samples feed a VLM without decoding pixels and re-encoding them; and the pixel-space
peer it is compared with.

Stand-in (named as one): Synth²'s generator is a MaskGIT-style model over a VQ-GAN's discrete tokens; ours is a
small deterministic transformer that regresses the frozen encoder's continuous feature grid (MSE on per-channel
standardised features) — the same place in the pipeline (caption -> image embedding -> VLM), at CPU size.

Notation: b = batch, t = caption bytes, d = generator width, n = grid tokens (4 × 4 = 16 at 128 px), c = encoder
channels (1280), p = pixel patch side (32), S = image side (128).

    text      h = TransformerEncoder(byte_embed(ids) + pos)                  (b, t, d)
    queries   q = TransformerDecoder(Q, memory = h)   Q learned              (b, n, d)
    TextToGrid    out = W q                                                   (b, n, c)      embedding space
    TextToPixels  out = unpatchify(W' q)                                      (b, 3, S, S)   pixel space; the VLM
                  then needs encoder(out) -> (b, n, c)

Both share the trunk (same d, layers, heads), so they differ by the output head only: a comparable-size pair
for the cost comparison (Synth²: embedding-space synthesis is cheaper than pixel-space).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def byte_batch(texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (b, t), pad mask (b, t) True on padding) of UTF-8 bytes, truncated to max_len."""
    rows = [list(s.encode("utf-8"))[:max_len] or [32] for s in texts]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    pad = torch.ones(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        pad[i, :len(r)] = False
    return ids, pad


class TextToGrid(nn.Module):
    """Caption bytes -> an (n, out_dim) grid: a text encoder and n learned queries that cross-attend to it."""

    def __init__(self, n_tokens: int = 16, out_dim: int = 1280, d: int = 96, n_layer: int = 2, n_head: int = 4,
                 max_len: int = 128):
        super().__init__()
        self.n_tokens, self.out_dim, self.max_len = n_tokens, out_dim, max_len
        self.embed = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.02)
        self.queries = nn.Parameter(torch.randn(n_tokens, d) * 0.02)
        enc = nn.TransformerEncoderLayer(d, n_head, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        dec = nn.TransformerDecoderLayer(d, n_head, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.text = nn.TransformerEncoder(enc, n_layer, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, n_layer)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, out_dim)

    def trunk(self, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(b, t) bytes -> (b, n, d) query states."""
        h = self.text(self.embed(ids) + self.pos[:ids.shape[1]], src_key_padding_mask=pad)     # (b, t, d)
        q = self.queries.expand(ids.shape[0], -1, -1)
        return self.norm(self.decoder(q, h, memory_key_padding_mask=pad))                      # (b, n, d)

    def forward(self, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(ids, pad))                                                 # (b, n, out)

    def generate(self, texts: Sequence[str]) -> torch.Tensor:
        ids, pad = byte_batch(texts, self.max_len)
        return self(ids.to(self.pos.device), pad.to(self.pos.device))


class TextToPixels(TextToGrid):
    """The pixel-space peer: the same trunk, a head to p × p × 3 pixel patches, unpatchified to (3, S, S)."""

    def __init__(self, image_size: int = 128, patch: int = 32, **kw):
        if image_size % patch:
            raise ValueError(f"TextToPixels: image_size {image_size} is not a multiple of patch {patch}")
        self.image_size, self.patch = image_size, patch
        g = image_size // patch
        super().__init__(n_tokens=g * g, out_dim=3 * patch * patch, **kw)

    def forward(self, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = self.head(self.trunk(ids, pad))                                    # (b, g·g, 3·p·p)
        b, g, p = x.shape[0], self.image_size // self.patch, self.patch
        return x.reshape(b, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, g * p, g * p)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(b, 3, S, S) -> (b, g·g, 3·p·p), the inverse of TextToPixels' unpatchify."""
    b, c, S, _ = images.shape
    g = S // patch
    return images.reshape(b, c, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * patch * patch)


__all__ = ["byte_batch", "TextToGrid", "TextToPixels", "patchify"]
