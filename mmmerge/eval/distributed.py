"""Data parallel evaluation under `torchrun`: each rank answers a shard, rank 0 gathers the answers once.

gloo on CPU, nccl on GPU (one GPU per rank, by LOCAL_RANK). Without WORLD_SIZE > 1 everything is a no-op.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    owns_group: bool = False  # we started the process group, so we end it

    @property
    def main(self) -> bool:
        return self.rank == 0


def default_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def setup(device: str | None, *, backend: str | None = None, timeout: timedelta | None = None) -> Ranks:
    """This process's rank under torchrun (WORLD_SIZE > 1), its process group started; a `cuda` device becomes
    the rank's own GPU. `backend`: the group's (default: nccl on GPU, gloo on CPU); `timeout`: how long a
    collective waits for the other ranks before it fails (default: torch's)."""
    device = default_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    owns = not dist.is_initialized()
    if owns:
        backend = backend or ("nccl" if device.startswith("cuda") else "gloo")
        dist.init_process_group(backend, **({"timeout": timeout} if timeout is not None else {}))
    return Ranks(rank, world, device, owns)


def gather(obj, ranks: Ranks) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
    if ranks.world == 1:
        return [obj]
    out = [None] * ranks.world if ranks.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj, ranks: Ranks):
    """Rank 0's `obj` on every rank."""
    if ranks.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown(ranks: Ranks) -> None:
    """End the process group we started. Called from a `finally`: where no error is on its way out, every rank got
    here, so each first waits for the others (a rank closing the group while its peer still finishes the last
    collective can abort that peer: "terminate called without an active exception", seen once under load)."""
    if ranks.owns_group and dist.is_initialized():
        if sys.exc_info()[1] is None:
            dist.barrier()
        dist.destroy_process_group()
