"""Where the networks run: device choice, CPU threads, and the distributed set-up of ``torchrun``.

Neither inference nor training: both ask here.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import os
import platform
from pathlib import Path
from typing import Iterator, List, Optional

import torch

from .errors import UserError
from .options import device_name

log = logging.getLogger("msrgan")

class DeviceError(UserError, ValueError):
    """A device this machine does not have."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` (the GPU of index N).

    Asking for CUDA where there is none logs a warning and uses the CPU; a GPU index the machine
    does not have is a :class:`DeviceError` that says which it has.
    """
    name = device_name(device)
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        if not name.startswith("cuda:"):
            return torch.device("cuda")
        index, count = int(name[5:]), torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device {name}: this machine shows {count} GPU{'s' * (count != 1)} "
                             f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}; CUDA_VISIBLE_DEVICES may hide others)")
        return torch.device("cuda", index)
    if name != "auto":
        log.warning("msrgan: a GPU was requested but CUDA is not available (torch %s): using the CPU", torch.__version__)
    return torch.device("cpu")


#: where Linux mounts the control groups, and where a process finds its own
CGROUP_ROOT, CGROUP_MEMBERSHIP = Path("/sys/fs/cgroup"), Path("/proc/self/cgroup")


def _cgroup_files(v2: List[str], controller: str, v1: List[str]) -> Iterator[List[str]]:
    """The texts of cgroup v2's files ``v2``, or of v1's ``v1`` in the ``controller``'s tree, in
    each folder of this process's groups and those above it, and in the mount's top folder (the
    container's own group where its paths are the host's); folders lacking one are passed over."""
    try:
        memberships = CGROUP_MEMBERSHIP.read_text().splitlines()
    except OSError:
        return
    for line in memberships:
        _, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: one tree
            mounts, files = [CGROUP_ROOT], v2
        elif controller in controllers.split(","):  # v1: the controller's tree
            mounts, files = [CGROUP_ROOT / controllers, CGROUP_ROOT / controller], v1
        else:
            continue
        parts = [part for part in group.strip().split("/") if part]
        for mount in mounts:
            for folder in {mount.joinpath(*parts[:n]) for n in range(len(parts) + 1)}:
                try:
                    yield [(folder / name).read_text() for name in files]
                except OSError:
                    continue


def cpu_quota() -> Optional[int]:
    """The cores a CPU bandwidth limit on this process's control group allows (a container's
    ``--cpus``, a Kubernetes CPU limit), rounded up; None without one.

    Such a limit leaves every core of the node in the process's affinity: torch would start a
    thread per core and the kernel would throttle them all. Read from cgroup v2's ``cpu.max``
    (``QUOTA PERIOD``, or ``max PERIOD``) or v1's ``cpu.cfs_quota_us`` (-1: none) and
    ``cpu.cfs_period_us`` (:func:`_cgroup_files`: the tightest holds). The plugin reads it the
    same way (``cellprofiler_plugin/upscalemsrgan.py``; the tests hold them to one answer):
    CellProfiler's own environment may have neither msrgan nor PyTorch.
    """
    limits = []
    for texts in _cgroup_files(["cpu.max"], "cpu", ["cpu.cfs_quota_us", "cpu.cfs_period_us"]):
        try:
            words = " ".join(texts).split()
            quota, period = int(words[0]), int(words[1])
        except (ValueError, IndexError):  # "max": no limit
            continue
        if quota > 0 and period > 0:
            limits.append(math.ceil(quota / period))
    return min(limits) if limits else None


def cgroup_memory_room() -> Optional[int]:
    """Bytes this process's control groups let it allocate still (a cluster job's ``--mem``, a
    container's memory limit): the least, over its groups and those above, of the limit less
    what is in use; None without a limit. Past it the kernel kills the process without a word,
    whatever the machine has free. cgroup v2's ``memory.max`` and ``memory.current``, v1's
    ``memory.limit_in_bytes`` and ``memory.usage_in_bytes`` (:func:`_cgroup_files`)."""
    rooms = []
    for texts in _cgroup_files(["memory.max", "memory.current"], "memory",
                               ["memory.limit_in_bytes", "memory.usage_in_bytes"]):
        try:
            limit, used = int(texts[0]), int(texts[1])
        except ValueError:  # "max": no limit
            continue
        rooms.append(max(0, limit - used))
    return min(rooms) if rooms else None


def available_cores() -> int:
    """The CPU cores this process may use, not the machine's: its affinity (e.g. a cluster job's
    cores), or fewer where its control group's CPU quota (:func:`cpu_quota`) allows fewer."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cores = max(1, os.cpu_count() or 1)
    return min(cores, cpu_quota() or cores)


def default_threads() -> int:
    """The threads a process runs networks with unless told: :func:`available_cores`, or fewer
    where ``OMP_NUM_THREADS`` says so (as a cluster job or a shared node's policy sets it)."""
    cores = available_cores()
    asked = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(cores, int(asked)) if asked.isdigit() and int(asked) > 0 else cores


def set_threads(threads: Optional[int] = None) -> int:
    """Let torch use ``threads`` CPU threads (None: :func:`default_threads`); returns the count.

    torch's thread pool belongs to the process, so the last caller's count holds for all.
    """
    count = default_threads() if threads is None else int(threads)
    if count < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
#: free memory the process keeps for its next tensors (see :func:`reuse_freed_memory`)
KEEP_FREED = 1 << 30
_reusing = False


def reuse_freed_memory(keep: int = KEEP_FREED) -> bool:
    """Serve torch's CPU tensors from memory the process already has; True where this took effect.

    glibc gives every allocation above 128 KiB to 32 MiB pages of its own (mmap) and returns them
    to the system when it is freed, so each activation of each tile lands on fresh pages that the
    kernel must fault in and zero one by one: measured on 2 cores of an Intel Xeon, the compact 12 x 48
    network spent 20-40 % of its CPU time in those page faults (0.5 s a call at 512 x 512, 1.2 M
    faults at 1024 x 1024). With allocations kept on the heap, and up to ``keep`` bytes of freed
    memory at its top kept rather than returned, the next tile reuses the last one's pages: no
    faults after the first tile. The process's peak memory is unchanged; what it has freed it
    keeps for reuse. Process-wide and once; nothing where the C library is not glibc.
    """
    global _reusing
    if _reusing:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    _reusing = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, int(keep)))
    if _reusing:
        log.debug("msrgan: freed memory is kept for reuse (up to %d MiB)", keep >> 20)
    return _reusing


def use_cpu(threads: Optional[int] = None) -> int:
    """Set this process up to run networks on the CPU: :func:`set_threads`, then
    :func:`reuse_freed_memory`; returns the thread count."""
    count = set_threads(threads)
    cores = available_cores()
    if count > cores:
        log.warning("msrgan: %d CPU threads asked for, on the %d core(s) this process may use: they will wait for "
                    "each other (slower than %d)", count, cores, cores)
    reuse_freed_memory()
    return count


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 itself (AVX-512 BF16 or AMX), where bf16 convolutions run
    faster than fp32 ones; elsewhere oneDNN emulates them, slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own CPU probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def describe_device(device: torch.device) -> str:
    """``cuda (NVIDIA H200)``, ``cuda:1 (NVIDIA H200)`` or ``cpu (2 threads)``: what the log and the model files say."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
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


def launched() -> Distributed:
    """This process's place in a ``torchrun`` launch, from the environment torchrun sets (one
    process of rank 0 otherwise); the process group is not joined here (:func:`setup_distributed`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    return Distributed(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def setup_distributed(device_choice: str) -> "tuple[Distributed, torch.device]":
    """Join the process group when started by ``torchrun``; pick this process's device."""
    dist = launched()
    if dist.world_size == 1:
        return dist, resolve_device(device_choice)
    use_cuda = device_choice != "cpu" and torch.cuda.is_available()
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(dist.local_rank)
        return dist, torch.device("cuda", dist.local_rank)
    return dist, torch.device("cpu")
