"""Calibrating the uncertainty image: how many times the spread over orientations the error is.

The spread of a network's output over mirrored and turned copies of its input ranks where its
errors are (``benchmarks/uncertainty.py``), but it is smaller than them. :func:`calibrate`
measures, on high-resolution images degraded as the quality grid degrades them (or on real pairs
of acquisitions, :func:`calibrate_on_pairs`), the ratio of the mean absolute error to the mean
spread; the model file stores it as ``uncertainty_scale``, so the uncertainty image estimates
the absolute error itself, on the output's intensity scale.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import UserError
from .evaluate import degraded_pairs, grid_degradation
from .options import CALIBRATION_CELLS

log = logging.getLogger("msrgan")

#: output pixels below which a calibration is said to rest on too little (a 256 x 256 field's)
MIN_PIXELS = 256 * 256


def calibrate(upscaler, paths: Sequence[Path], cells: Sequence[str] = CALIBRATION_CELLS,
              channel_axis: Optional[int] = None, progress: bool = True) -> Dict[str, object]:
    """The uncertainty scale of ``upscaler``'s model on ``paths`` (high-resolution images),
    degraded as each of ``cells`` of the quality grid.

    Returns ``{"uncertainty_scale": float, "uncertainty_calibration": {...}}``: the ratio of the
    mean absolute error to the mean (uncalibrated) spread, over every pixel of every image and
    cell, and what it was measured on.
    """
    totals = np.zeros(3)
    used = list(paths)
    for cell in cells:
        degradation = grid_degradation(cell, scale=upscaler.scale)
        pairs = degraded_pairs(used, upscaler.model.normalization, degradation, channel_axis=channel_axis,
                               desc=f"calibrating {cell}", progress=progress)
        used = _add_pairs(upscaler, pairs, totals)  # the next cell takes only these: a blank field is named once
    return _scale(upscaler, totals, len(used), list(cells))


def calibrate_on_pairs(upscaler, pairs: Sequence[Tuple[Path, Path]], channel_axis: Optional[int] = None,
                       progress: bool = True) -> Dict[str, object]:
    """As :func:`calibrate`, on real ``(low, high)`` pairs of acquisition files
    (:func:`~msrgan_core.pairs.registered_pairs`): the scale of the errors the model makes on one's
    own microscope, registration included."""
    from .pairs import registered_pairs

    totals = np.zeros(3)
    registered = registered_pairs(pairs, upscaler.model.normalization, upscaler.scale, channel_axis,
                                  desc="calibrating on real pairs", progress=progress)
    used = _add_pairs(upscaler, registered, totals)
    return _scale(upscaler, totals, len(used), ["real pairs"])


def _add_pairs(upscaler, pairs, totals: np.ndarray) -> List[Path]:
    """Add each pair's uncalibrated spread, absolute error and pixels to ``totals``; the paths used."""
    scale_now = upscaler.model.card.uncertainty_scale
    used, checking = [], upscaler.check_uncertainty
    upscaler.check_uncertainty = False  # the scale is what is being measured
    try:
        for path, hr, lr, _ in pairs:
            used.append(path)
            out, spread = upscaler.upscale(lr, source=str(path), uncertainty=True)
            totals += (float(np.sum(spread, dtype=np.float64)) / scale_now,
                       float(np.sum(np.abs(out.astype(np.float64) - hr))), out.size)
    finally:
        upscaler.check_uncertainty = checking
    return used


def _scale(upscaler, totals: np.ndarray, images: int, degradations: List[str]) -> Dict[str, object]:
    spread_total, error_total, pixels = totals
    if spread_total <= 0:
        raise UserError("the model's output does not change with the orientation of these images: nothing to calibrate")
    per_acquisition = pixels / len(degradations)  # each image is counted once per degradation
    if per_acquisition < MIN_PIXELS:
        log.warning("msrgan: the scale rests on %d output pixels only (fewer than a 256 x 256 field's %d): a few nuclei "
                    "decide it; calibrate on more or larger images", per_acquisition, MIN_PIXELS)
    return {"uncertainty_scale": round(error_total / spread_total, 4),
            "uncertainty_calibration": {"images": images, "degradations": degradations,
                                        "orientations": len(upscaler.uncertainty_orientations()),
                                        "match_bins": bool(upscaler.match_bins)}}
