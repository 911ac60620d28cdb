"""The image-encoder contract every entry of VISION_ENCODERS keeps.

Notation: b = batch, c = channels (`out_dim`), (h, w) = input pixels, (gh, gw) = feature grid,
n = gh·gw tokens, r = stride in pixels of one grid cell.

    features(x: (b, 3, h, w)) -> (b, c, gh, gw)            the encoder's own layout
    forward(x)                -> (b, n, c)                  row-major: token i = cell (i // gw, i % gw)
    grid(h, w)                -> (gh, gw) = (⌈h/r⌉, ⌈w/r⌉)
    classify(x)               -> (b, classes)               pretrained ImageNet head, or the ViT's own head

A frozen encoder (`frozen=True`, or `.freeze()`) has no trainable parameters, stays in eval mode whatever
`.train()` is asked (BatchNorm statistics never move) and runs its forward without autograd, which is what
makes its features cacheable (`lmlab.vision.cache`). `weights_id` names the weights for that cache key.
"""
from __future__ import annotations

import torch
from torch import nn


class VisionEncoder(nn.Module):
    """Base class: subclasses set out_dim, stride, weights_id and implement features()."""

    out_dim: int = 0
    stride: int = 32
    weights_id: str = "random"

    def __init__(self, frozen: bool = False):
        super().__init__()
        self.frozen = False
        self._freeze_on_init = frozen

    def _finish_init(self) -> None:
        """Subclasses call this once their modules exist."""
        if self._freeze_on_init:
            self.freeze()

    def freeze(self) -> "VisionEncoder":
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def unfreeze(self) -> "VisionEncoder":
        self.frozen = False
        for p in self.parameters():
            p.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> "VisionEncoder":
        return super().train(mode and not self.frozen)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return -(-h // self.stride), -(-w // self.stride)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            f = self.features(images)                       # (b, c, gh, gw)
        return f.flatten(2).transpose(1, 2)                 # (b, gh·gw, c), row-major

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no classifier head")


def flatten_grid(f: torch.Tensor) -> torch.Tensor:
    """(b, c, gh, gw) -> (b, gh·gw, c), row-major."""
    return f.flatten(2).transpose(1, 2)


def unflatten_grid(x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(b, gh·gw, c) -> (b, c, gh, gw)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], gh, gw)
