"""Side-by-side pictures of one region: the input, each upscaled output and the truth, with each
output's difference from the truth beneath it.

What a person checks at a glance and a table hides: structure an output draws that the truth
lacks, noise kept or turned into texture, edges moved. ``make demo`` writes one; ``msrgan
evaluate --out`` writes one per image, so that a model checked on a few wells imaged both ways
is also looked at.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from .io import atomic_write

#: edge, in high-resolution pixels, of the region shown
PANEL_EDGE = 192
#: resolution of the plots msrgan and its benchmarks draw with matplotlib
FIGURE_DPI = 110
_GAP, _CAPTION = 6, 16


def busiest_window(truth: np.ndarray, edge: int) -> Tuple[slice, slice]:
    """The ``edge`` x ``edge`` window of a ``(Y, X)`` image (on a grid of quarter steps) whose
    intensities spread the most: where there is most to see."""
    edge = min(edge, *truth.shape)
    step = max(edge // 4, 1)
    best, corner = -1.0, (0, 0)
    for y in range(0, truth.shape[0] - edge + 1, step):
        for x in range(0, truth.shape[1] - edge + 1, step):
            score = float(np.std(truth[y:y + edge, x:x + edge]))
            if score > best:
                best, corner = score, (y, x)
    y, x = corner
    return slice(y, y + edge), slice(x, x + edge)


def side_by_side(destination: "str | Path", low: np.ndarray, scale: int, low_label: str,
                 outputs: Sequence[Tuple[str, np.ndarray]], truth: np.ndarray, edge: int = PANEL_EDGE) -> Path:
    """Write a grey PNG of the busiest ``edge`` x ``edge`` region of ``truth``, a ``(Y, X)`` image:
    ``low`` (``(Y / scale, X / scale)``, each pixel repeated) | each ``(label, output)`` | the
    truth, all on the truth's display range (its 0.5th to 99.8th percentile there); beneath each
    output, its absolute difference from the truth, all on the scale of the first output's (its
    99.5th percentile there, so a larger error shows brighter, saturating at white)."""
    from PIL import Image, ImageDraw

    truth = np.asarray(truth, np.float64)
    window = busiest_window(truth, edge)
    edge = window[0].stop - window[0].start
    low = np.kron(np.asarray(low, np.float64), np.ones((scale, scale)))[:truth.shape[0], :truth.shape[1]]
    lo, hi = np.percentile(truth[window], [0.5, 99.8])
    hi = hi if hi > lo else lo + 1e-6
    spread = max(1e-6, float(np.percentile(np.abs(np.asarray(outputs[0][1], np.float64)[window] - truth[window]), 99.5)))

    def panel(a: np.ndarray, difference: bool = False) -> "Image.Image":
        scaled = np.abs(a) / spread if difference else (a - lo) / (hi - lo)
        return Image.fromarray(np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8))

    columns = [(low_label, panel(low[window]), None)]
    for label, output in outputs:
        output = np.asarray(output, np.float64)
        columns.append((label, panel(output[window]), panel(output[window] - truth[window], True)))
    columns.append(("truth (high resolution)", panel(truth[window]), None))
    canvas = Image.new("L", (len(columns) * edge + (len(columns) - 1) * _GAP, 2 * (edge + _CAPTION) + _GAP), color=255)
    draw = ImageDraw.Draw(canvas)
    for i, (label, top, bottom) in enumerate(columns):
        left = i * (edge + _GAP)
        draw.text((left + 2, 2), label, fill=0)
        canvas.paste(top, (left, _CAPTION))
        if bottom is not None:
            draw.text((left + 2, edge + _CAPTION + _GAP + 2), "|difference from the truth|", fill=0)
            canvas.paste(bottom, (left, edge + 2 * _CAPTION + _GAP))
    destination = Path(destination)
    with atomic_write(destination) as tmp, open(tmp, "wb") as fh:
        canvas.save(fh, format="PNG")
    return destination


def pyplot():
    """matplotlib's pyplot, drawing off screen (Agg): msrgan's plots are files, never windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, destination: "str | Path") -> Path:
    """Write a matplotlib figure to ``destination`` as a PNG, atomically, and free it."""
    destination = Path(destination)
    with atomic_write(destination) as tmp:
        fig.savefig(tmp, dpi=FIGURE_DPI, format="png")
    pyplot().close(fig)
    return destination


__all__ = ["FIGURE_DPI", "PANEL_EDGE", "busiest_window", "pyplot", "save_figure", "side_by_side"]
