"""torchrun target: a few DDP steps on synthetic data; rank 0 saves the final weights."""
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import _train_script as ts  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from lmlab.train.checkpoint import model_state
    from lmlab.train.trainer import train

    cfg = ts.cfg(steps=4, ckpt_interval=0, dropout=0.0)
    res = train(cfg, data=ts.data())
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        save_file(model_state(res.model), sys.argv[1])
    if dist.is_initialized():
        dist.destroy_process_group()
