"""Data-parallel training under `torchrun`.

CPU (and this repo's tests): DDP over the gloo backend, e.g.
    torchrun --nproc_per_node=2 -m lmlab.cli train configs/base.yaml
Each rank takes its contiguous slice of the global batch, so the averaged gradient equals the single-process
gradient of the same global batch.

GPUs: `train.parallel=fsdp` shards parameters, gradients and optimizer state with FSDP2
(`torch.distributed.fsdp.fully_shard`, one call per block and one for the root), over NCCL. Checkpoints
are written by rank 0 from a full (gathered) state dict.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device, parallel: str = "ddp") -> torch.nn.Module:
    if not info.enabled:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for blk in model.blocks:
            fully_shard(blk)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.local_rank] if device.type == "cuda" else None)


def all_reduce_mean(x: float, info: DistInfo) -> float:
    if not info.enabled:
        return x
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([x], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
