"""Preprocessing: ImageNet normalisation, the three square modes, and boxes following the image."""
import numpy as np
import pytest
import torch
from PIL import Image

from lmlab.vision.preprocess import IMAGENET_MEAN, IMAGENET_STD, input_box, preprocess, preprocess_batch, to_tensor


def _image_with_block(w=120, h=60, box=(50, 10, 70, 40)):
    a = np.full((h, w, 3), 255, np.uint8)
    a[box[1]:box[3], box[0]:box[2]] = (255, 0, 0)
    return Image.fromarray(a), box


def test_normalisation_is_imagenet():
    img = Image.new("RGB", (4, 3), (255, 0, 128))
    x = to_tensor(img)
    assert x.shape == (3, 3, 4)
    for c, v in enumerate((255, 0, 128)):
        assert torch.allclose(x[c], torch.tensor((v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))


@pytest.mark.parametrize("mode", ["resize", "letterbox", "crop"])
def test_modes_shape_and_box_follows_the_object(mode):
    img, box = _image_with_block()
    x = preprocess(img, 64, mode)
    assert x.shape == (3, 64, 64)
    x0, y0, x1, y1 = input_box(box, img.size, 64, mode)
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, cy, cx], red, rtol=0, atol=1e-4)
    if mode == "resize":
        assert (x0, y0, x1, y1) == (50 * 64 / 120, 10 * 64 / 60, 70 * 64 / 120, 40 * 64 / 60)
    if mode == "letterbox":                     # 120×60 -> 64×32 pasted at dy = 16; padding normalises to ≈ 0
        assert abs(y0 - (16 + 10 * 64 / 120)) < 1e-9
        assert x[:, :16].abs().max() < 0.01 and x[:, 48:].abs().max() < 0.01
    if mode == "crop":                          # 120×60 -> 128×64, centre crop: dx = -32
        assert abs(x0 - (50 * 128 / 120 - 32)) < 1e-9


def test_batch_and_unknown_mode():
    img, _ = _image_with_block()
    b = preprocess_batch([img, img.transpose(Image.FLIP_LEFT_RIGHT)], 32, "letterbox")
    assert b.shape == (2, 3, 32, 32) and torch.equal(b[0], b[1].flip(-1))
    with pytest.raises(ValueError, match="unknown preprocess mode"):
        preprocess(img, 32, "stretch")
