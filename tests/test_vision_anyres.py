"""Ferret-v2 any-resolution encoding and the visual sampler: stitching with an identity encoder reconstructs
the full-resolution map, the batched tile call equals the per-tile loop, the merge adds the upsampled global
map, and region pooling equals a per-box loop in float64 (box and free-form mask)."""
import pytest
import torch

from lmlab.vision.anyres import AnyResEncoder, merge, naive_stitch, split_tiles, stitch, tile_grid, upsample_to
from lmlab.vision.base import VisionEncoder
from lmlab.vision.region import (box_mask, box_weights, mask_weights, naive_region_pool, pool_boxes, pool_masks,
                                 region_pool)


class Identity(VisionEncoder):
    """features = pixels (stride 1): stitching its tile maps must give back the canvas."""

    out_dim, stride, weights_id = 3, 1, "identity"

    def __init__(self):
        super().__init__(True)
        self._finish_init()

    def features(self, x):
        return x


class Pool(VisionEncoder):
    """features = 4×4 average pooling with a channel mix (a stride-4 encoder with no padding effects)."""

    out_dim, stride, weights_id = 5, 4, "pool"

    def __init__(self, seed=0):
        super().__init__(True)
        self.w = torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(seed),
                                                dtype=torch.float64))
        self._finish_init()

    def features(self, x):
        return torch.einsum("oc,bchw->bohw", self.w, torch.nn.functional.avg_pool2d(x, 4))


def test_identity_encoder_stitch_is_the_full_resolution_map():
    x = torch.randn(2, 3, 48, 72, dtype=torch.float64)       # 2 × 3 tiles of 24 px
    tiles = split_tiles(x, 24)
    assert tiles.shape == (12, 3, 24, 24)
    assert torch.equal(tiles[1 * 6 + 1 * 3 + 2], x[1, :, 24:48, 48:72])   # image 1, row 1, col 2
    assert torch.equal(stitch(Identity()(tiles).transpose(1, 2).reshape(12, 3, 24, 24), 2, 3), x)
    enc = AnyResEncoder(Identity(), Identity(), native=24)
    g, local = enc.views(x)
    assert torch.equal(local, x) and g.shape == (2, 3, 24, 24)
    assert enc.grid(48, 72) == (48, 72)


def test_stitch_equals_naive_and_batched_views_equal_per_tile_loop():
    t = torch.randn(2 * 6, 4, 3, 5, dtype=torch.float64)
    assert torch.equal(stitch(t, 2, 3), naive_stitch(t, 2, 3))
    enc = AnyResEncoder(Pool(1), Pool(2), native=16)
    x = torch.randn(3, 3, 32, 48, dtype=torch.float64)
    g, local = enc.views(x)
    g2, local2 = enc.naive_views(x)
    torch.testing.assert_close(local, local2)
    torch.testing.assert_close(g, g2)
    # with a padding-free encoder, the stitched tile maps equal the encoder run on the whole canvas
    torch.testing.assert_close(local, enc.b.features(x))
    assert local.shape == (3, 5, 8, 12) and g.shape == (3, 5, 4, 4)
    m = enc.features(x)
    torch.testing.assert_close(m, local + torch.nn.functional.interpolate(g, size=(8, 12), mode="bilinear"))
    assert enc(x).shape == (3, 96, 5)


def test_merge_upsampling_hand_values_and_errors():
    g = torch.tensor([[[[1.0, 3.0]]]])                        # (1, 1, 1, 2)
    up = upsample_to(g, 1, 4)                                 # bilinear, align_corners=False
    torch.testing.assert_close(up, torch.tensor([[[[1.0, 1.5, 2.5, 3.0]]]]))
    torch.testing.assert_close(merge(torch.zeros(1, 1, 1, 4), g), up)
    with pytest.raises(ValueError, match="channels"):
        merge(torch.zeros(1, 2, 1, 4), g)
    with pytest.raises(ValueError, match="multiple of the native side 128"):
        tile_grid(200, 256, 128)


def test_box_pooling_equals_per_box_loop_float64():
    gen = torch.Generator().manual_seed(0)
    fmap = torch.randn(3, 6, 5, 7, dtype=torch.float64, generator=gen)
    lo = torch.rand(40, 2, dtype=torch.float64, generator=gen) * 0.8
    boxes = torch.cat([lo, lo + 0.01 + torch.rand(40, 2, dtype=torch.float64, generator=gen) * 0.2], 1)
    boxes = boxes[:, [0, 1, 2, 3]].clamp(max=1.0)
    idx = torch.randint(0, 3, (40,), generator=gen)
    torch.testing.assert_close(pool_boxes(fmap, idx, boxes), naive_region_pool(fmap, idx, boxes))
    # gradients reach the map with the box weights
    f = fmap.clone().requires_grad_(True)
    pool_boxes(f, idx, boxes).sum().backward()
    w = box_weights(boxes, 5, 7)
    want = torch.zeros_like(fmap)
    for k in range(40):
        want[idx[k]] += (w[k] / w[k].sum())[None].expand(6, -1, -1)
    torch.testing.assert_close(f.grad, want)


def test_box_weight_hand_values_and_mask_pooling():
    # a box covering the right half of cell (0, 0) and all of cell (0, 1) on a 2 × 2 grid
    w = box_weights(torch.tensor([[0.25, 0.0, 1.0, 0.5]], dtype=torch.float64), 2, 2)
    torch.testing.assert_close(w, torch.tensor([[[0.5, 1.0], [0.0, 0.0]]], dtype=torch.float64))
    fmap = torch.arange(4, dtype=torch.float64).reshape(1, 1, 2, 2)          # cells 0 1 / 2 3
    torch.testing.assert_close(pool_boxes(fmap, torch.tensor([0]), torch.tensor([[0.25, 0.0, 1.0, 0.5]])),
                               torch.tensor([[(0.5 * 0 + 1.0 * 1) / 1.5]], dtype=torch.float64))
    # a box mask on pixels gives the same features as the box; an L-shaped mask weighs its cells
    m = box_mask((2, 0, 8, 4), (8, 8))[None]
    torch.testing.assert_close(pool_masks(fmap, torch.tensor([0]), m),
                               pool_boxes(fmap, torch.tensor([0]), torch.tensor([[0.25, 0.0, 1.0, 0.5]])))
    ell = torch.zeros(1, 4, 4, dtype=torch.bool)
    ell[0, :, 0] = True
    ell[0, 3, :] = True                                                        # 7 pixels
    torch.testing.assert_close(mask_weights(ell, 2, 2).double(),
                               torch.tensor([[[0.5, 0.0], [0.75, 0.5]]], dtype=torch.float64))
    with pytest.raises(ValueError, match="region 0 covers no feature cell"):
        region_pool(fmap, torch.tensor([0]), torch.zeros(1, 2, 2, dtype=torch.float64))
