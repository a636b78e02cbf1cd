"""Running train_coco.py under torchrun: the process group, DDP, sampling and rank-0 duties.

Under ``torchrun --nproc_per_node=N`` every process trains on its own shard of each epoch
(DistributedSampler) with ``--batch_size`` pairs, and the loss, built with ``distributed=True``,
takes its negatives from all N shards, so N processes with batch b train like one with N·b.
Evaluation, checkpoints and logs are rank 0's. Without torchrun (no RANK in the environment)
everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()  # one process, no torchrun


def setup(device: torch.device) -> Context:
    """Join the torchrun group (NCCL on CUDA, gloo on the CPU); a plain run gets the default Context."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Context()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank)


def local_device(device: torch.device, ctx: Context) -> torch.device:
    """This process's device: its own GPU under torchrun on CUDA."""
    return torch.device("cuda", ctx.local_rank) if ctx.active and device.type == "cuda" else device


def wrap(model: torch.nn.Module, device: torch.device, ctx: Context) -> torch.nn.Module:
    """DDP around ``model`` (gradients averaged over the ranks) when running under torchrun."""
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def mean(value: float, ctx: Context, device: torch.device) -> float:
    """The mean of ``value`` over the ranks (each rank's loss is W × its share of the global loss,
    so this mean is the loss of the whole global batch)."""
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / ctx.world


def average_gradients(params, ctx: Context) -> None:
    """The gradients of ``params`` averaged over the ranks, as DDP does for the model's (for
    parameters outside the DDP-wrapped model: the learned temperature)."""
    if not ctx.active:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= ctx.world


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def teardown(ctx: Context) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
