"""Does the uncertainty image mean something? Its ranking of errors on the held-out BBBC039 fields.

    python benchmarks/uncertainty.py [--data ../shared/data] [--model fidelity] [--cells bin bin+300ph]

For each grid cell (``msrgan_core.evaluate.QUALITY_GRID``), each held-out BBBC039 field is
degraded and upscaled with ``Upscaler.upscale(..., uncertainty=True)``; then:

- per nucleus (the expert masks), the mean uncertainty against the mean absolute error of the
  output: their Spearman rank correlation over all nuclei (target: at least 0.5);
- per pixel, the mean squared error of the pixels in the uncertainty's top decile over that of
  the other nine deciles (target: at least 3);
- the time of an upscale with the uncertainty image over one without.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import add_held_out_arguments, held_out_bbbc039, read_mask, read_pair  # noqa: E402 - the quality benchmark's split and pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_held_out_arguments(parser, ["bin", "bin+300ph"])
    args = parser.parse_args()

    upscaler, paths = held_out_bbbc039(args)
    model = upscaler.model
    print(f"{Path(model.source).name} ({upscaler.options}); uncertainty from {len(upscaler.uncertainty_orientations())} "
          f"orientations; {len(paths)} held-out BBBC039 fields")
    print(f"{'cell':<18} {'nuclei':>6} {'Spearman':>8} {'top-decile MSE ratio':>21} {'time ratio':>10}")
    for cell in args.cells:
        object_unc, object_err, plain_s, with_s = [], [], 0.0, 0.0
        squared = {True: [0.0, 0], False: [0.0, 0]}  # top decile of each field, and the rest: sum, count
        for path in paths:
            hr, lr, _ = read_pair(path, cell, model.normalization)
            start = time.perf_counter()
            upscaler.upscale(lr)
            plain_s += time.perf_counter() - start
            start = time.perf_counter()
            out, spread = upscaler.upscale(lr, uncertainty=True)
            with_s += time.perf_counter() - start
            out, spread = out[0].astype(np.float64), spread[0].astype(np.float64)
            error = np.abs(out - hr)
            labels = read_mask(args.data / "bbbc039" / "masks" / (path.stem + ".png"))[: hr.shape[0], : hr.shape[1]]
            ids = np.unique(labels)
            ids = ids[ids > 0]
            object_unc += list(ndimage.mean(spread, labels, ids))
            object_err += list(ndimage.mean(error, labels, ids))
            in_top = spread > np.quantile(spread, 0.9)
            for where in (True, False):
                squared[where][0] += float(np.sum(error[in_top == where] ** 2))
                squared[where][1] += int(np.count_nonzero(in_top == where))
        rho = stats.spearmanr(object_unc, object_err)[0]
        ratio = (squared[True][0] / squared[True][1]) / (squared[False][0] / squared[False][1])
        print(f"{cell:<18} {len(object_unc):>6} {rho:>8.3f} {ratio:>21.2f} {with_s / plain_s:>10.2f}")


if __name__ == "__main__":
    main()
