"""What sharpness costs in PSNR: references for judging a perceptual model, on the held-out split.

    python benchmarks/perception_tradeoff.py [--data ../shared/data] [--hf 0.9]

Each image's ``fidelity`` output is raised to a high-frequency power ratio of ``--hf`` (where it
is below) in two ways that add no information about the truth (only how much is added is set
from the truth's HF power):

- ``fidelity + noise``: independent white noise, high-passed above the HF ratio's cutoff (half
  the low-resolution Nyquist frequency). Detail that costs as much PSNR as this carries no more
  information about the truth than noise does.
- ``fidelity + own HF``: the output's own high-pass component, amplified (unsharp masking). It
  reaches the HF ratio almost free of PSNR, so the HF ratio and PSNR alone cannot tell realistic
  texture from sharpening.

Both are printed beside ``fidelity`` and ``perceptual`` (PSNR against Lanczos, mean HF ratio);
LR = 4 x 4 mean binning, as in ``quality.py``. Both models run as one plain pass of the network
(one orientation, bins as output), so the comparison is between what the networks draw.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from msrgan_core.inference import Upscaler
from msrgan_core.metrics import (
    above_cutoff, high_frequency_cutoff, high_frequency_ratio, psnr, upscale_lanczos,
)
from msrgan_core.modelfile import load_model
from quality import SCALE, read_pair, run, validation_files

ROWS = ["fidelity", "perceptual", "fidelity + noise", "fidelity + own HF"]


def high_pass(image: np.ndarray) -> np.ndarray:
    """The part of ``image`` above the HF ratio's cutoff (ideal filter in the Fourier domain)."""
    return np.real(np.fft.ifft2(np.fft.fft2(image) * above_cutoff(image.shape, high_frequency_cutoff(SCALE))))


def raise_hf(truth: np.ndarray, base: np.ndarray, detail: np.ndarray, target: float) -> np.ndarray:
    """``base + a * detail`` with the least ``a >= 0`` whose HF ratio reaches ``target`` (bisection)."""
    if high_frequency_ratio(truth, base, SCALE) >= target:
        return base
    low, high = 0.0, 1.0
    while high_frequency_ratio(truth, base + high * detail, SCALE) < target:
        if high > 1e12:  # the detail has no power above the cutoff
            raise ValueError("the added detail cannot raise the HF ratio")
        high *= 2
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if high_frequency_ratio(truth, base + mid * detail, SCALE) < target else (low, mid)
    return base + high * detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MSRGAN_DATA", "../shared/data")))
    parser.add_argument("--hf", type=float, default=0.9, help="HF power ratio to raise the fidelity output to")
    args = parser.parse_args()

    fidelity = load_model("fidelity")
    once = dict(device="auto", ensemble=1, match_bins=False)
    models = {"fidelity": Upscaler(fidelity, **once), "perceptual": Upscaler(load_model("perceptual"), **once)}
    print(f"validation split of {Path(fidelity.source).name}; LR = {SCALE} x {SCALE} mean binning; "
          f"references raised to HF ratio {args.hf}")
    print(f"{'dataset':<8} {'method':<18} {'n':>3} {'dB vs Lanczos':>13} {'HF ratio':>8}")
    for dataset, paths in validation_files(args.data, fidelity.metadata).items():
        gains = {name: [] for name in ROWS}
        ratios = {name: [] for name in ROWS}
        for index, path in enumerate(tqdm(paths, desc=dataset, unit="image")):
            hr, lr, data_range = read_pair(path, "bin", fidelity.normalization)
            lanczos = psnr(hr, upscale_lanczos(lr, SCALE)[0], data_range)
            outputs = {name: upscaler.upscale(lr)[0] for name, upscaler in models.items()}
            base = outputs["fidelity"]
            noise = high_pass(np.random.default_rng(index).standard_normal(base.shape))
            outputs["fidelity + noise"] = raise_hf(hr, base, noise, args.hf)
            outputs["fidelity + own HF"] = raise_hf(hr, base, high_pass(base), args.hf)
            for name in ROWS:
                gains[name].append(psnr(hr, outputs[name], data_range) - lanczos)
                ratios[name].append(high_frequency_ratio(hr, outputs[name], SCALE))
        for name in ROWS:
            print(f"{dataset:<8} {name:<18} {len(paths):>3} {np.mean(gains[name]):>+13.2f} {np.mean(ratios[name]):>8.3f}")


if __name__ == "__main__":
    run(main)
