"""Per-image percentile normalisation, undone with the very same statistics.

Statistics are taken on the whole image (never per tile) and per channel, so a tiled result
and an untiled one see the same mapping, and the output lands on the input's intensity scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import NormalizationConfig

#: at most this many pixels per channel are used to estimate the percentiles of a large image
PERCENTILE_SAMPLE = 4_000_000


@dataclass(frozen=True)
class Stats:
    """Per-channel intensities mapped to 0 and 1: arrays of shape ``(C,)``."""

    low: np.ndarray
    high: np.ndarray

    @property
    def span(self) -> np.ndarray:
        return self.high - self.low


def percentile_stats(image: np.ndarray, config: NormalizationConfig = NormalizationConfig()) -> Stats:
    """Low and high percentiles of each channel of a ``(C, Y, X)`` image.

    A flat channel (high == low) gets a span of 1 so that it maps to a constant, not NaN.
    """
    flat = image.reshape(image.shape[0], -1)
    step = max(1, flat.shape[1] // PERCENTILE_SAMPLE)
    sample = flat[:, ::step].astype(np.float64)
    low, high = np.percentile(sample, [config.low, config.high], axis=1)
    high = np.where(high > low, high, low + 1.0)
    return Stats(low=low, high=high)


def normalize(image: np.ndarray, stats: Stats) -> np.ndarray:
    """Map a ``(C, Y, X)`` image to float32 with the channels' low/high percentiles at 0/1."""
    out = image.astype(np.float32, copy=True)
    out -= stats.low.astype(np.float32)[:, None, None]
    out /= stats.span.astype(np.float32)[:, None, None]
    return out


def denormalize(normalized: np.ndarray, stats: Stats, dtype: np.dtype) -> "tuple[np.ndarray, float]":
    """Undo :func:`normalize` in place and cast to ``dtype``.

    Integer outputs are rounded; values beyond what ``dtype`` can hold (below 0 for unsigned
    types, above 255 or 65535) are clipped, and the clipped fraction is returned so the caller
    can report it. Nothing is rescaled: a 12-bit image stays 12-bit.

    Returns
    -------
    image : numpy.ndarray, shape (C, Y, X), of ``dtype``
    clipped_fraction : float
        Fraction of pixels outside ``dtype``'s range (0.0 for float outputs).
    """
    out = normalized.astype(np.float32, copy=False)
    out *= stats.span.astype(np.float32)[:, None, None]
    out += stats.low.astype(np.float32)[:, None, None]
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return out.astype(dtype, copy=False), 0.0
    info = np.iinfo(dtype)
    clipped = np.count_nonzero(out < info.min) + np.count_nonzero(out > info.max)
    np.clip(out, info.min, info.max, out=out)
    np.rint(out, out=out)
    return out.astype(dtype), clipped / out.size
