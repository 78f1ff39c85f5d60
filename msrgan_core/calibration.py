"""Calibrating the uncertainty image: how many times the spread over orientations the error is.

The spread of a network's output over mirrored and turned copies of its input ranks where its
errors are (``benchmarks/uncertainty.py``), but it is smaller than them. :func:`calibrate`
measures, on high-resolution images degraded as the quality grid degrades them, the ratio of the
mean absolute error to the mean spread; the model file stores it as ``uncertainty_scale``, so the
uncertainty image estimates the absolute error itself, on the output's intensity scale.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .errors import UserError
from .evaluate import degraded_pairs, grid_degradation
from .options import CALIBRATION_CELLS


def calibrate(upscaler, paths: Sequence[Path], cells: Sequence[str] = CALIBRATION_CELLS,
              channel_axis: Optional[int] = None, progress: bool = True) -> Dict[str, object]:
    """The uncertainty scale of ``upscaler``'s model on ``paths`` (high-resolution images).

    Returns ``{"uncertainty_scale": float, "uncertainty_calibration": {...}}``: the ratio of the
    mean absolute error to the mean (uncalibrated) spread, over every pixel of every image and
    cell, and what it was measured on.
    """
    spread_total = error_total = 0.0
    scale_now = upscaler.model.card.uncertainty_scale
    used = list(paths)
    for cell in cells:
        degradation = grid_degradation(cell, scale=upscaler.scale)
        paths, used = used, []
        for path, hr, lr, _ in degraded_pairs(paths, upscaler.model.normalization, degradation, channel_axis=channel_axis,
                                              desc=f"calibrating {cell}", progress=progress):
            used.append(path)  # the next cell takes only these: a blank field is named once
            out, spread = upscaler.upscale(lr, source=str(path), uncertainty=True)
            spread_total += float(np.sum(spread, dtype=np.float64)) / scale_now
            error_total += float(np.sum(np.abs(out.astype(np.float64) - hr)))
    if spread_total <= 0:
        raise UserError("the model's output does not change with the orientation of these images: nothing to calibrate")
    return {"uncertainty_scale": round(error_total / spread_total, 4),
            "uncertainty_calibration": {"images": len(used), "degradations": list(cells),
                                        "orientations": len(upscaler.uncertainty_orientations())}}
