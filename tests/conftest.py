import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch


@pytest.fixture
def synthetic_data():
    """A learnable token task (repeated random 8-grams) shaped like lmlab.data.TokenData."""
    from types import SimpleNamespace

    def make(n, seed, t=33, vocab=64):
        rng = np.random.default_rng(seed)
        base = rng.integers(0, vocab, (n, 8))
        return np.tile(base, (1, (t + 7) // 8))[:, :t].astype(np.int64)

    return SimpleNamespace(train=make(256, 0), val={"a": make(32, 1), "b": make(32, 2)}, tokenizer=None,
                           stats={}, domains=["a", "b"])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
