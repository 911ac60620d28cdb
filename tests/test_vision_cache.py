"""Feature cache: a hit returns the stored tensor bit for bit; any change of preprocessing, size, weights or
image is a miss; unfrozen encoders are refused."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lmlab.vision.cache import FeatureCache
from lmlab.vision.vit import ViT


def _images(n, seed=0, size=(40, 24)):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return ViT(image_size=32, patch=8, width=16, depth=1, n_heads=2, frozen=True, weights_id="vit-test-0")


def test_hit_equals_miss_and_changed_mode_misses(tmp_path, vit):
    imgs = _images(3)
    cache = FeatureCache(tmp_path, vit, "vit", mode="resize", size=32)
    first = cache.encode(imgs, batch_size=2)
    assert (cache.hits, cache.misses) == (0, 3) and first.shape == (3, 16, 16)
    again = cache.encode(imgs)
    assert (cache.hits, cache.misses) == (3, 3) and torch.equal(first, again)
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 3 and not list(tmp_path.rglob(".*tmp*"))
    with safe_open(str(files[0]), "pt") as f:
        assert f.metadata()["mode"] == "resize" and f.metadata()["weights"] == "vit-test-0"
    # the stored features are what the encoder computes on that preprocessed image
    from lmlab.vision.preprocess import preprocess
    torch.testing.assert_close(again[1], vit(preprocess(imgs[1], 32, "resize")[None])[0], rtol=1e-5, atol=1e-6)

    letter = FeatureCache(tmp_path, vit, "vit", mode="letterbox", size=32)
    lb = letter.encode(imgs)
    assert (letter.hits, letter.misses) == (0, 3) and not torch.equal(lb, first)
    for other in (FeatureCache(tmp_path, vit, "vit", mode="resize", size=48),
                  FeatureCache(tmp_path, vit, "vit2", mode="resize", size=32)):
        other.encode(imgs[:1])
        assert other.misses == 1
    vit.weights_id = "vit-test-1"
    assert cache.get(imgs[0]) is None
    vit.weights_id = "vit-test-0"
    changed = imgs[0].copy()
    changed.putpixel((0, 0), (0, 0, 0) if changed.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert cache.get(changed) is None and cache.get(imgs[0]) is not None


def test_unfrozen_encoder_refused(tmp_path):
    with pytest.raises(ValueError, match="not frozen"):
        FeatureCache(tmp_path, ViT(image_size=16, patch=8, width=8, depth=1, n_heads=2), "vit")
    with pytest.raises(ValueError, match="preprocess mode"):
        FeatureCache(tmp_path, ViT(image_size=16, patch=8, width=8, depth=1, n_heads=2, frozen=True), "vit",
                     mode="stretch")
