"""Does the uncertainty image mean something? Its ranking of errors on the held-out BBBC039 fields.

    python benchmarks/uncertainty.py [--data ../shared/data] [--model fidelity] [--cells bin bin+300ph]
    python benchmarks/uncertainty.py --hr my_highres_fields/     # fields of your own, or of other screens

For each grid cell (``msrgan_core.evaluate.QUALITY_GRID``), each held-out BBBC039 field is
degraded and upscaled with ``Upscaler.upscale(..., uncertainty=True)``; then:

- per nucleus (the expert masks), the mean uncertainty against the mean absolute error of the
  output: their Spearman rank correlation over all nuclei (target: at least 0.5); and the same
  for both over the nucleus's mean intensity (``relative``), as ``flag_uncertain_nuclei.cppipe``
  flags nuclei; and the median (and lowest) of the same Spearman taken within each field of at
  least ``MIN_FIELD_NUCLEI`` nuclei (``per field``): pooled over fields, brighter fields' larger
  errors and larger uncertainties lift the figure, so this one says how well it ranks the nuclei
  of one field, as a pipeline flags them;
- per pixel, the mean squared error of the pixels in the uncertainty's top decile over that of
  the other nine deciles (target: at least 3);
- the time of an upscale with the uncertainty image over one without;
- the mean absolute error over the mean uncertainty, every pixel of every field (1: the image is
  on the error's scale, as ``msrgan calibrate`` set it over four acquisitions together);
- the same two figures for a model-free baseline, the edge map (the output's gradient
  magnitude, smoothed over 2 output pixels: errors are largest at edges), and the per-nucleus
  partial Spearman correlation of uncertainty and error with the edge map held fixed: what the
  uncertainty image tells beyond "edges are uncertain" (the edge map's ``relative`` figure
  divides it by the nucleus's mean intensity likewise).

With ``--hr``, the fields are those files instead, and their nuclei are found on the
high-resolution image by the quality grid's fixed classical recipe (``metrics.segment_nuclei``)
instead of BBBC039's expert masks.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import add_held_out_arguments, held_out_upscaler, read_mask, read_pair, run  # noqa: E402 - the quality benchmark's split and pairs

from msrgan_core.metrics import segment_nuclei  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_held_out_arguments(parser, ["bin", "bin+300ph"])
    parser.add_argument("--hr", nargs="+", help="high-resolution fields (files, folders or globs) instead of the "
                        "held-out BBBC039 ones; nuclei from metrics.segment_nuclei")
    args = parser.parse_args()

    upscaler, paths = held_out_upscaler(args)
    fields = "fields (nuclei segmented on the truth)" if args.hr else "held-out BBBC039 fields (expert masks)"
    model = upscaler.model
    print(f"{Path(model.source).name} ({upscaler.options}); uncertainty from {len(upscaler.uncertainty_orientations())} "
          f"orientations; {len(paths)} {fields}")
    print(f"{'cell':<18} {'nuclei':>6} {'Spearman':>8} {'relative':>8} {'per field (min)':>15} "
          f"{'top-decile MSE ratio':>21} {'time ratio':>10} "
          f"{'error/unc.':>10} | {'edge map: Spearman':>18} {'relative':>8} {'ratio':>5} | {'beyond edges':>12}")
    for cell in args.cells:
        object_unc, object_edge, object_err, object_mean, plain_s, with_s = [], [], [], [], 0.0, 0.0
        per_field = []
        error_sum = uncertainty_sum = 0.0
        squared = {name: {True: [0.0, 0], False: [0.0, 0]} for name in ("uncertainty", "edges")}  # top decile, rest: sum, count
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
            error_sum, uncertainty_sum = error_sum + error.sum(), uncertainty_sum + spread.sum()
            if args.hr:
                labels = segment_nuclei(hr)
            else:
                labels = read_mask(args.data / "bbbc039" / "masks" / (path.stem + ".png"))[: hr.shape[0], : hr.shape[1]]
            ids = np.unique(labels)
            ids = ids[ids > 0]
            edges = ndimage.gaussian_filter(np.hypot(ndimage.sobel(out, 0), ndimage.sobel(out, 1)), EDGE_SMOOTHING)
            field_unc, field_err = ndimage.mean(spread, labels, ids), ndimage.mean(error, labels, ids)
            if len(ids) >= MIN_FIELD_NUCLEI:
                per_field.append(stats.spearmanr(field_unc, field_err)[0])
            object_unc += list(field_unc)
            object_edge += list(ndimage.mean(edges, labels, ids))
            object_err += list(field_err)
            object_mean += list(ndimage.mean(out, labels, ids))
            for name, estimate in (("uncertainty", spread), ("edges", edges)):
                in_top = estimate > np.quantile(estimate, 0.9)
                for where in (True, False):
                    squared[name][where][0] += float(np.sum(error[in_top == where] ** 2))
                    squared[name][where][1] += int(np.count_nonzero(in_top == where))
        mean = np.maximum(np.array(object_mean), 1e-12)
        rho, rho_edges = stats.spearmanr(object_unc, object_err)[0], stats.spearmanr(object_edge, object_err)[0]
        relative, relative_edges = (stats.spearmanr(np.array(estimate) / mean, np.array(object_err) / mean)[0]
                                    for estimate in (object_unc, object_edge))
        ratio, ratio_edges = (top_decile_ratio(squared[name]) for name in ("uncertainty", "edges"))
        within = f"{np.median(per_field):.3f} ({np.min(per_field):.3f})" if per_field else "-"
        print(f"{cell:<18} {len(object_unc):>6} {rho:>8.3f} {relative:>8.3f} {within:>15} {ratio:>21.2f} "
              f"{with_s / plain_s:>10.2f} "
              f"{error_sum / uncertainty_sum:>10.2f} | "
              f"{rho_edges:>18.3f} {relative_edges:>8.3f} {ratio_edges:>5.2f} | "
              f"{partial_spearman(object_unc, object_err, object_edge):>12.3f}")


#: the fewest nuclei a field needs for its own Spearman (the ``per field`` column)
MIN_FIELD_NUCLEI = 10

#: the edge map's smoothing, in output pixels (a Gaussian's sigma)
EDGE_SMOOTHING = 2.0


def top_decile_ratio(squared: dict) -> float:
    """Mean squared error in the top decile over that in the rest, from ``{True: [sum, n], False: [sum, n]}``."""
    return (squared[True][0] / squared[True][1]) / (squared[False][0] / squared[False][1])


def partial_spearman(x, y, z) -> float:
    """Spearman correlation of ``x`` and ``y`` with ``z`` held fixed: of their ranks' residuals after
    a linear fit on ``z``'s ranks."""
    ranks = [stats.rankdata(v) for v in (x, y, z)]
    design = np.vstack([ranks[2], np.ones_like(ranks[2])]).T
    residuals = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in ranks[:2]]
    return float(np.corrcoef(*residuals)[0, 1])


if __name__ == "__main__":
    run(main)
