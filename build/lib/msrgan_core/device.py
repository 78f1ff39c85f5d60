"""Where the networks run: device choice, CPU threads, and the distributed set-up of ``torchrun``.

Neither inference nor training: both ask here.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

import torch

from .options import DEVICES

log = logging.getLogger("msrgan")

def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.

    Asking for ``cuda`` where there is none logs a warning and uses the CPU.
    """
    device = (device or "auto").lower()
    if device not in DEVICES + ("gpu",):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if device in ("cuda", "gpu"):
        log.warning("msrgan: a GPU was requested but CUDA is not available (torch %s): using the CPU", torch.__version__)
    return torch.device("cpu")


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. a cluster job's share), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: Optional[int] = None) -> int:
    """Let torch use ``threads`` CPU threads (None: :func:`available_cores`); returns the count.

    torch's thread pool belongs to the process, so the last caller's count holds for all.
    """
    count = available_cores() if threads is None else int(threads)
    if count < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def describe_device(device: torch.device) -> str:
    """``cuda (NVIDIA H200)`` or ``cpu (2 threads)``: what the log and the model files say."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@dataclasses.dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_choice: str) -> "tuple[Distributed, torch.device]":
    """Join the process group when started by ``torchrun``; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), resolve_device(device_choice)
    dist = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_choice != "cpu" and torch.cuda.is_available()
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(dist.local_rank)
        return dist, torch.device("cuda", dist.local_rank)
    return dist, torch.device("cpu")
