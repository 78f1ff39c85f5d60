"""Quality of the packaged models against classical upscaling, on the held-out validation split.

    python benchmarks/quality.py [--data ../shared/data] [--csv quality.csv] [--ensemble N]
                                 [--match-bins | --no-match-bins] [--noise-peak P]

Low-resolution inputs are 4 x 4 mean binnings of the high-resolution images (no noise;
``--noise-peak`` adds Poisson-Gaussian noise to them as training's degradation does). For
nearest, bicubic, Lanczos, the ``fidelity`` and ``perceptual`` models and the high-resolution
image itself it reports, per dataset:

- PSNR and SSIM, data range = the high-resolution image's range;
- nuclei segmentation F1 at IoU 0.5 against the BBBC039 expert masks, one fixed classical
  recipe (smooth, Otsu, fill, distance watershed) for every method;
- the high-frequency power ratio (power above half the low-resolution Nyquist frequency, of
  output over truth: 1.0 = as sharp as the truth);
- texture error: mean relative error of the within-nucleus intensity standard deviation over
  the masks' nuclei, against the high-resolution image.

The models run as ``msrgan upscale`` runs them: by default as each model's file says (fidelity
averages 2 orientations and matches bins; perceptual runs once, as the network outputs);
``--ensemble`` and ``--(no-)match-bins`` set those options of ``msrgan upscale`` for both.
The validation split is the one recorded in the models' metadata (held out before training).
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from msrgan_core.data import group_name
from msrgan_core.degradation import bin_mean, crop_to_multiple, poisson_gaussian_noise
from msrgan_core.cli import add_inference_options
from msrgan_core.inference import Upscaler
from msrgan_core.io import find_images, read_image
from msrgan_core.metrics import (
    BASELINES, high_frequency_ratio, matched_f1, psnr, segment_nuclei, ssim, texture_error,
)
from msrgan_core.modelfile import load_model
from msrgan_core.normalize import percentile_stats

SCALE = 4
METHODS = ["nearest", "bicubic", "lanczos", "fidelity", "perceptual", "high-res"]
#: read noise of --noise-peak's inputs, as a fraction of their 1st-99.8th percentile range
READ_NOISE = 0.0015


def read_mask(path: Path) -> np.ndarray:
    """BBBC039 mask: red channel 1..3; each connected component of one value is one nucleus."""
    import imageio.v3 as iio

    red = np.asarray(iio.imread(path))[..., 0]
    labels = np.zeros(red.shape, np.int32)
    for value in np.unique(red[red > 0]):
        components, n = ndimage.label(red == value)
        labels[components > 0] = components[components > 0] + labels.max()
    return labels


def validation_files(data: Path, model_meta: dict) -> Dict[str, List[Path]]:
    """The held-out files, per dataset, as the model's training split recorded them."""
    training = model_meta["training"]
    held_out = set(training["val_groups"])
    files = find_images([data / "bbbc039" / "images", data / "dsb2018_fluorescence"])
    pattern = re.compile(training["well_regex"]) if training.get("well_regex") else None
    out: Dict[str, List[Path]] = {"BBBC039": [], "DSB2018": []}
    for path in files:
        if group_name(path, pattern) in held_out:
            out["BBBC039" if "bbbc039" in str(path) else "DSB2018"].append(path)
    return out


def binned_pair(path: Path) -> Tuple[np.ndarray, np.ndarray, float]:
    """A held-out image as ``(hr (Y, X), lr (1, Y/4, X/4), data range of hr)``: LR = mean binning."""
    image, _ = read_image(path)
    hr = crop_to_multiple(image.astype(np.float32), SCALE)[0]
    return hr, bin_mean(hr[None], SCALE), float(hr.max() - hr.min())


def add_noise(lr: np.ndarray, peak: float, rng: np.random.Generator) -> np.ndarray:
    """Shot noise of ``peak`` photons at the image's 99.8th percentile, plus :data:`READ_NOISE`."""
    stats = percentile_stats(lr)
    low, span = np.float32(stats.low[0]), np.float32(stats.span[0])
    return poisson_gaussian_noise((lr - low) / span, peak, READ_NOISE, rng) * span + low


def score(dataset: str, paths: List[Path], models: Dict[str, Upscaler], masks_dir: Path,
          noise_peak: float = 0.0) -> List[dict]:
    rows = []
    for path in tqdm(paths, desc=dataset, unit="image"):
        hr, lr, data_range = binned_pair(path)
        if noise_peak > 0:
            lr = add_noise(lr, noise_peak, np.random.default_rng(zlib.crc32(path.name.encode())))
        outputs = {name: fn(lr, SCALE)[0] for name, fn in BASELINES.items()}
        for name, upscaler in models.items():
            outputs[name] = upscaler.upscale(lr)[0]
        outputs["high-res"] = hr
        mask_path = masks_dir / (path.stem + ".png")
        labels = read_mask(mask_path)[: hr.shape[0], : hr.shape[1]] if dataset == "BBBC039" and mask_path.exists() else None
        for method in METHODS:
            out = outputs[method]
            row = {"dataset": dataset, "image": path.name, "method": method,
                   "psnr": psnr(hr, out, data_range) if method != "high-res" else np.inf,
                   "ssim": ssim(hr, out, data_range), "hf_ratio": high_frequency_ratio(hr, out, SCALE)}
            if labels is not None:
                row["f1"] = matched_f1(labels, segment_nuclei(out))
                row["texture_error"] = texture_error(hr, out, labels)
            rows.append(row)
    return rows


def summarize(rows: List[dict]) -> List[dict]:
    table = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        lanczos = np.mean([r["psnr"] for r in rows if r["dataset"] == dataset and r["method"] == "lanczos"])
        for method in METHODS:
            mine = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            entry = {"dataset": dataset, "method": method, "images": len(mine)}
            for key in ("psnr", "ssim", "hf_ratio", "f1", "texture_error"):
                values = [r[key] for r in mine if key in r]
                entry[key] = float(np.mean(values)) if values else None
            entry["psnr_vs_lanczos"] = entry["psnr"] - lanczos if np.isfinite(entry["psnr"]) else None
            table.append(entry)
    return table


def format_table(table: List[dict]) -> str:
    def cell(value, fmt):
        return "-" if value is None or not np.isfinite(value) else format(value, fmt)

    lines = [f"{'dataset':<8} {'method':<11} {'n':>3} {'PSNR':>6} {'dB vs Lanczos':>13} {'SSIM':>6} "
             f"{'F1@0.5':>7} {'HF ratio':>8} {'texture err':>11}"]
    for e in table:
        lines.append(f"{e['dataset']:<8} {e['method']:<11} {e['images']:>3} {cell(e['psnr'], '6.2f'):>6} "
                     f"{cell(e['psnr_vs_lanczos'], '+.2f'):>13} {cell(e['ssim'], '.4f'):>6} {cell(e['f1'], '.4f'):>7} "
                     f"{cell(e['hf_ratio'], '.3f'):>8} {cell(e['texture_error'], '.5f'):>11}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MSRGAN_DATA", "../shared/data")))
    parser.add_argument("--fidelity", default="fidelity", help="model file or packaged name")
    parser.add_argument("--perceptual", default="perceptual", help="model file or packaged name")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per dataset (0 = all)")
    parser.add_argument("--csv", type=Path, help="write per-image rows here")
    add_inference_options(parser)
    parser.add_argument("--noise-peak", type=float, default=0.0,
                        help="add shot noise of this many photons at the 99.8th percentile (and read noise) to the inputs")
    args = parser.parse_args()

    fidelity = load_model(args.fidelity)
    options = dict(device="auto", ensemble=args.ensemble, match_bins=args.match_bins)
    models = {"fidelity": Upscaler(fidelity, **options), "perceptual": Upscaler(load_model(args.perceptual), **options)}
    files = validation_files(args.data, fidelity.metadata)
    rows = []
    for dataset, paths in files.items():
        paths = paths[: args.limit] if args.limit else paths
        rows += score(dataset, paths, models, args.data / "bbbc039" / "masks", args.noise_peak)
    table = summarize(rows)
    print(f"validation split of {Path(fidelity.source).name} ({fidelity.metadata['training']['split_by']}); "
          f"LR = {SCALE} x {SCALE} mean binning"
          + (f" with shot noise of {args.noise_peak:g} photons" if args.noise_peak else "") + "; "
          + "; ".join(f"{name}: {up.options}" for name, up in models.items()))
    print(format_table(table))
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["dataset", "image", "method", "psnr", "ssim", "hf_ratio", "f1", "texture_error"])
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
