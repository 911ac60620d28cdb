"""On-disk cache of frozen-encoder features: one safetensors file per (encoder, weights, preprocessing, image).

    key = sha256(CACHE_VERSION, encoder name, encoder.weights_id, preprocess mode, input side S,
                 image mode, image size, raw pixel bytes)
    path = <root>/<encoder name>/<key[:2]>/<key>.safetensors        tensor "features": (n, c), float32

Only a frozen encoder may be cached (its features are a function of the image alone). A hit returns the
tensor that was stored, bit for bit; a changed preprocessing mode, size or weights id is a different key,
hence a miss. Files are written to a temporary name in the same directory and renamed into place, so a
crash never leaves a truncated entry and concurrent writers of the same key are harmless.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image
from safetensors.torch import load_file, save

from lmlab.io import atomic_write_bytes
from lmlab.vision.base import VisionEncoder
from lmlab.vision.preprocess import _check_mode, preprocess_batch

CACHE_VERSION = "1"


def image_digest(img: Image.Image) -> str:
    h = hashlib.sha256()
    h.update(f"{img.mode}|{img.size[0]}x{img.size[1]}|".encode())
    h.update(img.tobytes())
    return h.hexdigest()

class FeatureCache:
    """Features of a frozen encoder for PIL images, computed once and read back from disk afterwards."""

    def __init__(self, root: "str | Path", encoder: VisionEncoder, name: str, mode: str = "resize",
                 size: int = 224):
        _check_mode(mode)
        if not encoder.frozen:
            raise ValueError(f"feature cache: encoder {name!r} is not frozen; its features would go stale")
        self.root, self.encoder, self.name, self.mode, self.size = Path(root), encoder, name, mode, size
        self.hits = self.misses = 0

    def key(self, img: Image.Image) -> str:
        h = hashlib.sha256(f"{CACHE_VERSION}|{self.name}|{self.encoder.weights_id}|{self.mode}|{self.size}|"
                           .encode())
        h.update(image_digest(img).encode())
        return h.hexdigest()

    def path(self, img: Image.Image) -> Path:
        k = self.key(img)
        return self.root / self.name / k[:2] / f"{k}.safetensors"

    def get(self, img: Image.Image) -> Optional[torch.Tensor]:
        p = self.path(img)
        return load_file(str(p))["features"] if p.exists() else None

    def put(self, img: Image.Image, feats: torch.Tensor) -> None:
        meta = {"encoder": self.name, "weights": self.encoder.weights_id, "mode": self.mode,
                "size": str(self.size)}
        self.path(img).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path(img), save({"features": feats.detach().contiguous().cpu()}, meta))

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
        """(b, n, c) features; hits come from disk, misses are computed in batches and stored."""
        out: list[Optional[torch.Tensor]] = [self.get(im) for im in images]
        todo = [i for i, f in enumerate(out) if f is None]
        self.hits += len(images) - len(todo)
        self.misses += len(todo)
        for s in range(0, len(todo), batch_size):
            idx = todo[s:s + batch_size]
            x = preprocess_batch([images[i] for i in idx], self.size, self.mode)
            feats = self.encoder(x).float()                              # (b', n, c)
            for j, i in enumerate(idx):
                f = feats[j].clone()
                self.put(images[i], f)
                out[i] = f
        return torch.stack(out)  # type: ignore[arg-type]
