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
