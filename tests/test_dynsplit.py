"""MM1.5 dynamic splitting: hand-worked grid choices, the brute-force twin on random aspect ratios, tiles that
reassemble the fitted canvas, and the prompt's tile markers."""
import numpy as np
import pytest
from PIL import Image

from lmlab.vision.dynsplit import (candidate_grids, dynamic_split, fit_cost, fit_to_canvas, fixed_grid,
                                   naive_select_grid, select_grid, split_tiles, tile_prompt)

S = 128


def test_candidate_grids():
    assert candidate_grids(4) == [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2), (4, 1)]
    assert candidate_grids(4, 4) == [(1, 4), (2, 2), (4, 1)]
    with pytest.raises(ValueError, match="n_min <= n_max"):
        candidate_grids(2, 3)


def test_hand_worked_choices():
    # very wide 1024×128 (8:1): s = 0.5 on the 4×1 canvas (512×128) keeps 1/4 of the pixels; 2×2 only 1/16
    assert fit_cost((1024, 128), (4, 1), S) == (131072 - 32768, 512 * 128 - 32768)
    assert fit_cost((1024, 128), (2, 2), S)[0] == 131072 - 8192
    assert select_grid((1024, 128), 4, S) == (4, 1)
    assert select_grid((128, 1024), 4, S) == (1, 4)                       # very tall
    assert select_grid((512, 512), 4, S) == (2, 2)                        # square: s = 0.5 on 2×2
    assert select_grid((512, 512), 3, S) == (1, 1)                        # ≤ 3 tiles: every grid keeps s = 0.25, 1×1 pads least
    # tiny 50×30: every canvas upscales (no loss), the 1×1 canvas wastes least
    assert fit_cost((50, 30), (1, 1), S) == (0.0, S * S - 1500)
    assert select_grid((50, 30), 4, S) == (1, 1)
    # 3:1 at 384×128 fits 3×1 exactly: no loss, no padding
    assert fit_cost((384, 128), (3, 1), S) == (0.0, 0.0) and select_grid((384, 128), 4, S) == (3, 1)
    # 600×200 (3:1): 3×1 and 4×1 both give s = min(·, 128/200) = 0.64 (equal loss), 4×1 pads more; 2×1 has
    # s = 256/600 < 0.64 (more loss) -> 3×1
    assert select_grid((600, 200), 4, S) == (3, 1)
    assert fixed_grid(4) == (2, 2) and fixed_grid(9) == (3, 3) and fixed_grid(5) == (2, 2)


def test_select_grid_matches_brute_force_on_random_aspect_ratios():
    rng = np.random.default_rng(0)
    n = 0
    for _ in range(300):
        ar = float(np.exp(rng.uniform(np.log(1 / 10), np.log(10))))
        long = int(rng.integers(16, 2048))
        size = (max(1, int(long * min(1, ar))), max(1, int(long * min(1, 1 / ar))))
        for n_max, n_min in ((4, 1), (6, 1), (9, 2), (12, 4)):
            assert select_grid(size, n_max, S, n_min) == naive_select_grid(size, n_max, S, n_min), (size, n_max)
            n += 1
    assert n >= 200


def test_tiles_reassemble_the_canvas_and_overview_comes_first():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 700, 3), dtype=np.uint8))
    images, prompt, grid = dynamic_split(img, 4, 32)
    assert grid == (4, 1) and len(images) == 5 and all(t.size == (32, 32) for t in images)
    canvas = np.asarray(fit_to_canvas(img, grid, 32))
    tiles = [np.asarray(t) for t in split_tiles(img, grid, 32)]
    rebuilt = np.concatenate([np.concatenate(tiles[i * 4:(i + 1) * 4], axis=1) for i in range(1)], axis=0)
    assert np.array_equal(rebuilt, canvas)
    assert prompt == "overview <image>\n(1,1) <image> (1,2) <image> (1,3) <image> (1,4) <image>"
    assert prompt.count("<image>") == len(images)
    fixed, fprompt, fgrid = dynamic_split(img, 4, 32, fixed=True)
    assert fgrid == (2, 2) and len(fixed) == 5 and fprompt.count("<image>") == 5
    assert tile_prompt((1, 2), markers=False) == "<image>\n<image>\n<image>"
