"""Image encoders for vision-language models (registered in VISION_ENCODERS), preprocessing and a feature
cache. Pure modules: this package imports lmlab.registry, lmlab.nn and third-party code only.

    mobilenet_v2        MobileNetV2, torchvision's ImageNet weights             (b, 49, 1280) at 224 px
    efficientnet_lite0  EfficientNet-Lite0, ImageNet weights                    (b, 49, 1280) at 224 px
    vit                 small ViT from scratch, swappable MLP (MoE)             (b, (S/p)², width)
    fused               Prismatic: two encoders, one grid, channels concatenated

Every encoder maps (b, 3, h, w) ImageNet-normalised images (`preprocess.py`) to a row-major (b, n, c)
feature grid; see `base.py` for the contract.
"""
from lmlab.vision.base import VisionEncoder, flatten_grid, unflatten_grid

__all__ = ["VisionEncoder", "flatten_grid", "unflatten_grid", "build_encoder"]


def build_encoder(name: str, **kwargs) -> VisionEncoder:
    """VISION_ENCODERS[name](**kwargs)."""
    from lmlab.registry import VISION_ENCODERS

    return VISION_ENCODERS.get(name)(**kwargs)
