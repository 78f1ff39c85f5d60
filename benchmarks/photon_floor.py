"""How well any upscaler can measure a nucleus's integrated intensity at a grid cell's photon count.

    python benchmarks/photon_floor.py [--data ../shared/data] [--cells bin+1000ph bin+300ph bin+100ph] [--limit N]

For every ground-truth nucleus of the held-out BBBC039 fields (the masks shipped with the data):
its integrated intensity on the high-resolution image, and the standard deviation that the
cell's shot and read noise put on the sum of the low-resolution pixels it covers (each weighted
by the share of it inside the nucleus). Those counts are independent, so their sum is all a
low-resolution image says about the nucleus's total: no upscaler measures it better. Prints the
median absolute relative error of such an unbiased measurement, the figure to hold beside
``benchmarks/features.py``'s integrated intensity (there with CellProfiler's own objects, whose
outlines add their error to this one). Blur does not change the floor (it moves light, not
photons), so the grid's unblurred cells are the default.
"""
from __future__ import annotations

import argparse

import numpy as np
from skimage.measure import regionprops

from msrgan_core.binning import bin_mean, crop_to_multiple
from msrgan_core.evaluate import grid_degradation
from msrgan_core.io import read_image
from msrgan_core.normalize import percentile_stats
from msrgan_core.options import QUALITY_GRID
from quality import SCALE, add_held_out_arguments, held_out_fields, read_mask, run


def relative_sigmas(hr: np.ndarray, labels: np.ndarray, low: float, span: float, photons: float, read_noise: float) -> list:
    """Per nucleus: the noise's standard deviation on its total, over the total (``hr`` ``(Y, X)``, raw units)."""
    normalised = (hr - low) / span
    counts = np.clip(bin_mean(normalised[None], SCALE)[0], 0, None) * photons  # expected photons per low-res pixel
    variance = counts / photons ** 2 + read_noise ** 2  # of each low-res pixel, normalised units
    sigmas = []
    for region in regionprops(labels):
        rows, cols = region.coords[:, 0], region.coords[:, 1]
        share = np.zeros(counts.shape)
        np.add.at(share, (rows // SCALE, cols // SCALE), 1.0 / SCALE ** 2)
        sigma = SCALE ** 2 * span * np.sqrt((share ** 2 * variance).sum())  # raw units, a sum of high-res pixels
        sigmas.append(sigma / hr[rows, cols].sum())
    return sigmas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_held_out_arguments(parser, ["bin+1000ph", "bin+300ph", "bin+100ph"])  # the model: its split and normalisation
    args = parser.parse_args()
    noiseless = [cell for cell in args.cells if not QUALITY_GRID[cell][1]]
    if noiseless:
        parser.error(f"{', '.join(noiseless)}: no shot noise, so no floor; choose cells with photons (+Nph)")
    model, paths = held_out_fields(args)
    fields = []
    for path in paths:
        image, _ = read_image(path)
        hr = crop_to_multiple(image[:1], SCALE)[0].astype(np.float64)
        labels = read_mask(args.data / "bbbc039" / "masks" / (path.stem + ".png"))[: hr.shape[0], : hr.shape[1]]
        stats = percentile_stats(hr[None].astype(np.float32), model.normalization)
        fields.append((hr, labels, float(stats.low[0]), float(stats.span[0])))
    print(f"photon-noise floor of integrated intensity, {len(paths)} held-out BBBC039 fields, ground-truth nuclei")
    for cell in args.cells:
        degradation = grid_degradation(cell, SCALE)
        photons, read_noise = degradation.poisson_peak[0], degradation.gaussian_sigma[0]
        sigmas = np.array([s for hr, labels, low, span in fields
                           for s in relative_sigmas(hr, labels, low, span, photons, read_noise)])
        draws = np.abs(np.random.default_rng(0).standard_normal((200, sigmas.size)) * sigmas)
        print(f"{cell:<12} {sigmas.size} nuclei: median |relative error| at best {100 * np.median(draws):.2f} % "
              f"(median sigma {100 * np.median(sigmas):.2f} %)")


if __name__ == "__main__":
    run(main)
