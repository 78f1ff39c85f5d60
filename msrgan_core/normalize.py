"""Per-image percentile normalisation, undone with the very same statistics.

Statistics are taken on the whole image (never per tile) and per channel, so a tiled result
and an untiled one see the same mapping, and the output lands on the input's intensity scale.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .config import NormalizationConfig

#: the pixel types an output can be cast to, and their torch counterparts
TORCH_DTYPES = {np.dtype(k): v for k, v in (
    (np.uint8, torch.uint8), (np.uint16, torch.uint16), (np.int8, torch.int8), (np.int16, torch.int16),
    (np.int32, torch.int32), (np.float32, torch.float32), (np.float64, torch.float64))}
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

    A channel whose high percentile is its low one (nearly all of it one value: sparse beads, a
    masked field, an empty well) is mapped by its brightest pixel instead where brighter pixels
    exist, and by its darkest where that value is the brightest (a saturated field), on its own
    scale whatever its units; a constant channel by a span far below its value (it maps to a
    constant; an integer one by one grey level; an Upscaler returns such a channel as it is).
    """
    flat = image.reshape(image.shape[0], -1)
    step = max(1, flat.shape[1] // PERCENTILE_SAMPLE)
    sample = flat[:, ::step].astype(np.float64)
    low, high = np.percentile(sample, [config.low, config.high], axis=1)
    if np.any(high <= low):  # rare: the whole image is read once more only then
        brightest, darkest = flat.max(axis=1).astype(np.float64), flat.min(axis=1).astype(np.float64)
        stuck = high <= low
        up = stuck & (brightest > low)  # one value and brighter pixels: mapped by the brightest
        down = stuck & ~up & (darkest < low)  # that value the brightest (saturated): by the darkest, below it
        high = np.where(up, brightest, np.where(down, low, high))
        low = np.where(down, darkest, low)
        unit = 1.0 if image.dtype.kind in "ui" else np.maximum(np.abs(low) * 1e-6, np.finfo(np.float32).tiny)
        high = np.where(high > low, high, low + unit)
    return Stats(low=low, high=high)


def channel_range(image: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    """The lowest and highest value of each channel of a ``(C, Y, X)`` image: where they are one,
    an empty channel, an upscaler gives it back as that value exactly, not the network's faint
    answer to nothing; the highest tells a saturated camera's ceiling."""
    flat = image.reshape(image.shape[0], -1)
    return flat.min(axis=1), flat.max(axis=1)


#: dtypes whose values float32 cannot hold exactly (an int32 or float64 image offset by 1e8):
#: normalised and mapped back in float64, so only the network's own precision counts
WIDE_DTYPES = (np.dtype(np.int32), np.dtype(np.float64))


def stats_tensors(stats: Stats, dtype: np.dtype, device: "torch.device | str" = "cpu") -> "tuple[torch.Tensor, torch.Tensor]":
    """``(low, span)`` of ``stats`` as tensors on ``device``, for :func:`denormalize` to an image of
    ``dtype``: float64 for :data:`WIDE_DTYPES`, float32 otherwise."""
    wide = torch.float64 if np.dtype(dtype) in WIDE_DTYPES else torch.float32
    return (torch.as_tensor(stats.low, dtype=wide, device=device), torch.as_tensor(stats.span, dtype=wide, device=device))


def normalize(image: np.ndarray, stats: Stats) -> np.ndarray:
    """Map a ``(C, Y, X)`` image to float32 with the channels' low/high percentiles at 0/1."""
    if image.dtype in WIDE_DTYPES:  # the offset taken off before float32 rounds the values
        return ((image - stats.low[:, None, None]) / stats.span[:, None, None]).astype(np.float32)
    out = image.astype(np.float32, copy=True)
    out -= stats.low.astype(np.float32)[:, None, None]
    out /= stats.span.astype(np.float32)[:, None, None]
    return out


def denormalize(normalized, stats, dtype):
    """Undo :func:`normalize` and cast to ``dtype``.

    ``normalized`` is a ``(C, Y, X)`` NumPy array, with ``stats`` a :class:`Stats` and ``dtype``
    a NumPy dtype; or a torch tensor on any device, with ``stats`` a ``(low, span)`` pair of
    ``(C,)`` tensors on that device (:func:`stats_tensors`) and ``dtype`` a torch dtype, and the
    work stays on that device. Integer outputs are rounded; values beyond what ``dtype`` can hold (below 0 for
    unsigned types, above 255 or 65535) are clipped. Nothing is rescaled: a 12-bit image stays
    12-bit.

    Returns
    -------
    image : ``(C, Y, X)`` of ``dtype``
    clipped : float (NumPy: the fraction of pixels) or 0-d tensor (torch: their count)
        Pixels beyond ``dtype``'s range by more than rounding would have moved them.
    """
    if isinstance(normalized, np.ndarray):
        image, clipped = denormalize(torch.from_numpy(normalized.astype(np.float32, copy=False)),
                                     stats_tensors(stats, dtype), TORCH_DTYPES[np.dtype(dtype)])
        return image.numpy(), float(clipped) / max(1, normalized.size)
    low, span = stats
    out = normalized * span[:, None, None] + low[:, None, None]
    if dtype.is_floating_point:
        return out.to(dtype), torch.zeros((), dtype=torch.int64, device=out.device)
    info = torch.iinfo(dtype)
    # count_nonzero, not sum: a bool tensor's sum first copies it to int64 (half the function's time)
    clipped = torch.count_nonzero((out < info.min - 0.5).logical_or_(out > info.max + 0.5))
    return out.clamp_(info.min, _at_most(info.max, out.dtype)).round_().to(dtype), clipped


@functools.lru_cache(maxsize=None)
def _at_most(value: int, dtype: torch.dtype) -> float:
    """The largest number of the float ``dtype`` not above ``value``: int32's largest value rounds
    up to 2**31 in float32, which no int32 holds."""
    top = float(torch.tensor(float(value), dtype=dtype))
    return top if top <= value else float(torch.nextafter(torch.tensor(top, dtype=dtype), torch.tensor(0.0, dtype=dtype)))
