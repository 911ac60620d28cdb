"""Subprocess target for the kill -9 test: trains on synthetic data into argv[1]."""
import sys
import time

import numpy as np


def data():
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    base = rng.integers(0, 64, (256, 8))
    train = np.tile(base, (1, 5))[:, :33].astype(np.int64)
    return SimpleNamespace(train=train, val={"a": train[:32]}, tokenizer=None, stats={})


def cfg(steps=40, ckpt_interval=5, dropout=0.1, lr=3e-3):
    from lmlab.config import RunConfig

    return RunConfig(model=dict(vocab_size=64, d_model=32, n_layer=2, n_head=4, max_seq_len=64, dropout=dropout),
                     train=dict(steps=steps, batch_size=8, grad_accum=2, lr=lr, warmup_steps=5, eval_interval=10,
                                log_interval=5, ckpt_interval=ckpt_interval, keep_ckpts=3, progress=False,
                                tensorboard=False))


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    from lmlab.train.trainer import train

    slow = len(sys.argv) > 2 and sys.argv[2] == "slow"
    cb = (lambda s, r: time.sleep(0.05)) if slow else None
    train(cfg(), sys.argv[1], data=data(), callback=cb)
