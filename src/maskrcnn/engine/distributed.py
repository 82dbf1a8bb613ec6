"""torch.distributed helpers: set up from torchrun's environment, rank checks, gathering.

Every helper works without a process group too (one process: rank 0 of 1), so the
training and evaluation code runs unchanged on one process or many.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_object",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
]


def launched_by_torchrun() -> bool:
    """True when WORLD_SIZE/RANK say this process is one of several (torchrun sets them)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> torch.device:
    """Join the process group torchrun describes (no-op on a single process).

    Backend: NCCL when training on CUDA, gloo on CPU. Returns this process's device
    (cuda:LOCAL_RANK for "auto"/"cuda" when CUDA is available, otherwise cpu).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if device not in ("auto", "cuda") and not device.startswith("cuda"):
        use_cuda = False
    if use_cuda:
        target = torch.device(device) if ":" in device else torch.device("cuda", local_rank)
        if launched_by_torchrun():
            target = torch.device("cuda", local_rank)  # one GPU per process
        torch.cuda.set_device(target)
    else:
        target = torch.device("cpu" if device == "auto" else device)
    if launched_by_torchrun() and not is_distributed():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(minutes=timeout_minutes),
        )
    return target


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (if any)."""
    if is_distributed():
        dist.destroy_process_group()


def all_gather_object(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] on one process)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s obj on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over ranks (a new tensor; the input itself on one process)."""
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()
