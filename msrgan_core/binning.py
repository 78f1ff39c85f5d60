"""k x k binning: how a camera with k-times larger pixels sees an image, and its exact inverse set.

Used by training (low-resolution inputs are binned high-resolution patches) and by inference
(an upscaled image can be projected back onto the images that bin to its input), so it lives
in neither.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def crop_to_multiple(image: np.ndarray, k: int) -> np.ndarray:
    """Crop the bottom/right edges so Y and X are multiples of ``k``."""
    y, x = image.shape[-2] // k * k, image.shape[-1] // k * k
    return image[..., :y, :x]


def bin_mean(image: np.ndarray, k: int) -> np.ndarray:
    """k x k mean binning of a ``(C, Y, X)`` image: a camera with k-times larger pixels."""
    image = crop_to_multiple(image, k)
    c, y, x = image.shape
    return image.reshape(c, y // k, k, x // k, k).mean(axis=(2, 4), dtype=np.float64).astype(np.float32)


def match_bins(upscaled, lowres, k: int):
    """Shift each k x k block of ``upscaled`` so that its mean equals its ``lowres`` pixel.

    ``upscaled`` is ``(..., C, k*Y, k*X)``, ``lowres`` ``(..., C, Y, X)``: NumPy arrays or torch
    tensors (on any device; the result is of the same kind). This is the orthogonal projection
    onto the images that :func:`bin_mean` maps to ``lowres``: of all such images it is the
    nearest to ``upscaled``, and it is never farther (in mean squared error) than ``upscaled``
    from any of them, such as the true high-resolution image when ``lowres`` is its binning.
    """
    if isinstance(upscaled, np.ndarray):
        if upscaled.dtype.kind in "ui":  # an image's own integer output: matched in float, rounded back into its type
            info = np.iinfo(upscaled.dtype)
            matched = match_bins(upscaled.astype(np.float64), np.asarray(lowres, np.float64), k)
            return np.clip(np.rint(matched), info.min, info.max).astype(upscaled.dtype)
        return match_bins(torch.from_numpy(np.ascontiguousarray(upscaled)), torch.from_numpy(np.asarray(lowres)), k).numpy()
    *lead, y, x = lowres.shape
    if tuple(upscaled.shape) != (*lead, y * k, x * k):
        raise ValueError(f"match_bins: {tuple(upscaled.shape)} is not {k} x {tuple(lowres.shape)}")
    flat = upscaled.reshape(-1, 1, y * k, x * k)
    residual = lowres.reshape(-1, 1, y, x).to(flat.dtype) - F.avg_pool2d(flat, k)
    return (flat + residual.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)).reshape(upscaled.shape)
