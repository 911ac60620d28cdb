"""Pretrained image encoders: the ImageNet cat sanity check, feature-grid shapes and row-major order, freezing."""
import pytest
import torch

pytest.importorskip("skimage", reason="the cat photo needs scikit-image (pip install 'lmlab[vision]')")

from PIL import Image  # noqa: E402

from lmlab.registry import VISION_ENCODERS  # noqa: E402
from lmlab.vision.preprocess import preprocess  # noqa: E402

EGYPTIAN_CAT = 285


def _encoder(name):
    try:
        return VISION_ENCODERS.get(name)()
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"{name} weights missing: {e}")


@pytest.fixture(scope="module")
def chelsea():
    from skimage.data import chelsea
    return Image.fromarray(chelsea())


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_pretrained_encoder_sees_the_cat_in_a_row_major_grid(name, chelsea):
    enc = _encoder(name)
    assert enc.frozen and not enc.training and enc.weights_id != "random"
    x = preprocess(chelsea, 224, "resize")[None]
    with torch.no_grad():
        p = enc.classify(x).softmax(-1)[0]
    assert p.argmax().item() == EGYPTIAN_CAT and p[EGYPTIAN_CAT] > 0.5
    # non-square input: (160, 224) -> grid (5, 7); forward is features flattened row-major
    y = torch.nn.functional.interpolate(x, size=(160, 224), mode="bilinear", align_corners=False)
    f = enc.features(y)
    tokens = enc(y)
    assert enc.grid(160, 224) == (5, 7) == tuple(f.shape[-2:]) and enc.out_dim == f.shape[1] == 1280
    assert tokens.shape == (1, 35, 1280)
    for i, j in [(0, 0), (0, 6), (4, 0), (2, 3), (4, 6)]:
        assert torch.equal(tokens[0, i * 7 + j], f[0, :, i, j])
    # classify() is the head on the mean of the grid the encoder returns
    logits_from_tokens = (enc.classifier[1](tokens.mean(1)) if name == "mobilenet_v2"
                          else enc.net._fc(tokens.mean(1)))
    torch.testing.assert_close(logits_from_tokens, enc.classify(y), rtol=1e-5, atol=1e-5)


def test_frozen_encoder_stays_in_eval_and_has_no_grad():
    enc = VISION_ENCODERS.get("mobilenet_v2")(pretrained=False, frozen=True)
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    out = enc(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 4, 1280) and out.grad_fn is None
    # BatchNorm statistics never move while frozen
    before = enc.features_[0][1].running_mean.clone()
    enc(torch.randn(2, 3, 64, 64) * 5 + 3)
    assert torch.equal(before, enc.features_[0][1].running_mean)
    enc.unfreeze().train()
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    enc(torch.randn(2, 3, 32, 32)).sum().backward()
    assert enc.features_[0][0].weight.grad is not None


def test_mobilenet_rejects_foreign_state_dict():
    enc = VISION_ENCODERS.get("mobilenet_v2")(pretrained=False)
    sd = {("features." + k[len("features_."):] if k.startswith("features_.") else k): v
          for k, v in enc.state_dict().items()}
    enc.load_torchvision(sd)                      # torchvision key names load
    sd.pop("classifier.1.bias")
    with pytest.raises(RuntimeError, match="Missing key"):
        enc.load_torchvision(sd)
