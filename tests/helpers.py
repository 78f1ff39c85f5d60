"""Shared helpers for the fast unit tests: toy generators and model files, made without global seeding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from msrgan_core.config import GeneratorConfig
from msrgan_core.modelfile import LoadedModel, load_model, save_model
from torch import nn

from msrgan_core.models import build_generator

# The toy networks here are far too small to gain from threads, and on a shared 2-core machine
# OpenMP's spinning threads made a 24-pixel discriminator pass 100 times slower (0.4 s vs 3 ms).
torch.set_num_threads(1)


def tiny_generator(
    scale: int = 4,
    channels: int = 1,
    n_blocks: int = 1,
    n_features: int = 8,
    seed: int = 0,
    zero_tail: bool = False,
    **kwargs,
) -> nn.Module:
    """A small generator with reproducible random weights (the global torch RNG is left as it was).

    ``architecture="compact"`` (in ``kwargs``) gives the compact generator; its widths are rounded
    up to a multiple of 8."""
    if kwargs.get("architecture") == "compact":
        n_features = -(-n_features // 8) * 8
    config = GeneratorConfig(
        scale=scale, in_channels=channels, out_channels=kwargs.pop("out_channels", channels),
        n_blocks=n_blocks, n_features=n_features, **kwargs,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = build_generator(config)
    if zero_tail:
        with torch.no_grad():
            generator.tail.weight.zero_()
            generator.tail.bias.zero_()
    return generator.eval()


def tiny_model(tmp_path: Path, name: str = "tiny.safetensors", metadata: "dict | None" = None, **kwargs) -> LoadedModel:
    """Save a :func:`tiny_generator` as a model file under ``tmp_path`` and load it back."""
    path = save_model(Path(tmp_path) / name, tiny_generator(**kwargs), metadata or {})
    return load_model(path)


def smooth_image(
    shape: "tuple[int, ...]", seed: int = 0, low: float = 100.0, high: float = 4000.0, noise: float = 0.1
) -> np.ndarray:
    """A float64 image of blobs plus ``noise`` times pixel noise, spanning ``low`` to ``high`` exactly."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    white = rng.random(shape)
    sigma = [0] * (len(shape) - 2) + [3, 3]
    image = ndimage.gaussian_filter(white, sigma) + noise * white
    image = (image - image.min()) / (image.max() - image.min())
    return low + (high - low) * image


#: control groups as a container or a cluster job sees them: (the process's /proc/self/cgroup,
#: files under the cgroup mount, the cores their CPU limit allows)
CGROUP_CASES = [
    # a Kubernetes container, cgroup v2: its own limit of 2.5 cores (rounded up), none above it
    ("0::/kubepods/pod1/ctr\n", {"kubepods/cpu.max": "max 100000", "kubepods/pod1/ctr/cpu.max": "250000 100000"}, 3),
    # the pod's limit is tighter than the container's
    ("0::/kubepods/pod1/ctr\n", {"kubepods/pod1/cpu.max": "150000 100000", "kubepods/pod1/ctr/cpu.max": "max 100000"}, 2),
    # docker --cpus 0.5, cgroup v1 without a cgroup namespace: the host's path, the container's own group at the mount
    ("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
     {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1),
    # cgroup v1, no quota (this kind of machine)
    ("1:cpu:/\n2:cpuacct:/\n0::/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    # no control groups at all (not Linux, or /proc not mounted)
    (None, {}, None),
]


def cgroup_tree(tmp_path: Path, membership: "str | None", files: "dict[str, str]") -> "tuple[Path, Path]":
    """Write one of :data:`CGROUP_CASES` under ``tmp_path``: (the cgroup mount, the membership file)."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    if membership is not None:
        proc.write_text(membership)
    return root, proc
