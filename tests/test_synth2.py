"""Synth² generators (shapes, pixel patches, a tiny overfit) and CIDEr-D against hand-computed values."""
import math

import pytest
import torch

from lmlab.eval.cider import cider_d
from lmlab.models.synth2 import TextToGrid, TextToPixels, byte_batch, patchify
from lmlab.train.synth2 import Standardizer, train_generator


def test_generator_shapes_and_pixel_patches():
    g = TextToGrid(n_tokens=16, out_dim=1280, d=32, n_layer=1, n_head=2)
    assert g.generate(["a cat.", "two dogs on a pink background."]).shape == (2, 16, 1280)
    p = TextToPixels(image_size=64, patch=16, d=32, n_layer=1, n_head=2)
    ids, pad = byte_batch(["a cat.", "a dog and a sun."], p.max_len)
    img = p(ids, pad)
    assert img.shape == (2, 3, 64, 64)
    torch.testing.assert_close(patchify(img, 16), p.head(p.trunk(ids, pad)))   # unpatchify ∘ patchify = id
    # padding does not change a caption's output
    alone = p(*byte_batch(["a cat."], p.max_len))
    torch.testing.assert_close(alone[0], img[0], atol=1e-5, rtol=1e-5)


def test_generator_overfits_four_pairs():
    torch.manual_seed(0)
    g = TextToGrid(n_tokens=4, out_dim=8, d=32, n_layer=1, n_head=2)
    caps = ["a cat.", "a dog.", "two suns.", "a key and a star."]
    y = torch.randn(4, 4, 8) * 3 + 1
    tr = train_generator(g, caps, y, steps=300, batch_size=4, lr=3e-3, seed=0)
    assert tr["losses"][-1] < 0.02 < 0.5 < tr["losses"][0]
    with torch.no_grad():
        torch.testing.assert_close(tr["standardizer"].inverse(g.generate(caps)), y, atol=0.5, rtol=0)
    s = Standardizer.fit(y)
    torch.testing.assert_close(s.inverse(s.forward(y)), y)


def test_cider_d_hand_values():
    # df: a -> 2, cat/dog/(a cat)/(a dog) -> 1; I = 2, so idf(a) = 0 and idf(rest) = log 2
    score, per = cider_d(["a cat", "a dog"], [["a cat"], ["a dog"]])
    assert per == pytest.approx([5.0, 5.0]) and score == pytest.approx(5.0)   # n = 1, 2 give 1; n = 3, 4 give 0
    # "a cat cat" vs "a cat": n=1: min(2L, L)·L / (2L · L) = 1/2; n=2: L·L / (√2 L · L) = 1/√2; n=3: ref has
    # no trigram -> 0; length penalty exp(−1/72)
    _, per = cider_d(["a cat cat", "a dog"], [["a cat"], ["a dog"]])
    assert per[0] == pytest.approx(10 * (0.5 + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72))
    assert per[1] == pytest.approx(5.0)
    # two references: the mean of the per-reference similarities; a wrong caption scores 0
    _, per = cider_d(["a cat", "a bus"], [["a cat", "the cat"], ["a dog"]])
    assert per[1] == 0.0 and per[0] > 0
    with pytest.raises(ValueError, match="2 candidates for 1"):
        cider_d(["a", "b"], [["a"]])
