"""Quality of the packaged models against classical upscaling, on the held-out validation split,
over a grid of acquisitions.

    python benchmarks/quality.py [--data ../shared/data] [--cells bin bin+100ph ...] [--limit N]
                                 [--previous NAME=MODEL ...] [--csv quality.csv]
                                 [--ensemble N] [--match-bins | --no-match-bins]
    python benchmarks/quality.py --hr my_highres_fields/ [...]   # the same grid on other fields

The grid (``msrgan_core.evaluate.QUALITY_GRID``) is {4 x 4 mean binning, binning after a
Gaussian blur of sigma 1.5 high-resolution pixels} x {no noise, 1000, 300, 100 photons at the
99.8th percentile, with read noise}: the low-resolution inputs are made from the held-out
high-resolution images as ``msrgan evaluate`` makes them, with noise drawn from each file's name.
In every cell it compares bicubic, Lanczos and non-local means then bicubic (the classical
answer to noise) with the ``fidelity`` and ``perceptual`` models (and any ``--previous`` ones),
and reports per dataset:

- PSNR, and its gain over the cell's best classical method and over Lanczos;
- the worst single image's gain over bicubic (``min vs bic``);
- SSIM (data range = the high-resolution image's range);
- nuclei segmentation F1 at IoU 0.5 against the BBBC039 expert masks, one fixed classical
  recipe (smooth, Otsu, fill, distance watershed) for every method;
- the high-frequency power ratio (power above half the low-resolution Nyquist frequency, of
  output over truth: 1.0 = as sharp as the truth; above 1 on noisy inputs = noise drawn as detail);
- texture error: mean relative error of the within-nucleus intensity standard deviation over
  the masks' nuclei, against the high-resolution image.

The models run as ``msrgan upscale`` runs them: by default as each file says. The validation
split is the one the fidelity model's training recorded (held out before training).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from msrgan_core.cli import add_inference_options
from msrgan_core.data import split_files
from msrgan_core.errors import UserError
from msrgan_core.evaluate import BlankField, degraded_pair, grid_degradation
from msrgan_core.inference import Upscaler
from msrgan_core.io import find_images
from msrgan_core.metrics import (
    BASELINES, CLASSICAL, high_frequency_ratio, matched_f1, psnr, segment_nuclei, ssim, texture_error,
)
from msrgan_core.modelfile import LoadedModel, load_model
from msrgan_core.options import PRECISIONS, QUALITY_GRID
from msrgan_core.pictures import pyplot, save_figure

SCALE = 4
DATASETS = {"BBBC039": "bbbc039/images", "DSB2018": "dsb2018_fluorescence"}


def read_mask(path: Path) -> np.ndarray:
    """BBBC039 mask: red channel 1..3; each connected component of one value is one nucleus."""
    import imageio.v3 as iio

    red = np.asarray(iio.imread(path))[..., 0]
    labels = np.zeros(red.shape, np.int32)
    for value in np.unique(red[red > 0]):
        components, n = ndimage.label(red == value)
        labels[components > 0] = components[components > 0] + labels.max()
    return labels


def run(main) -> None:
    """A benchmark's ``main``, with what the user can mend (a missing data folder, an unknown model,
    an image too small or blank) said in one line, as msrgan's commands say it, not a traceback."""
    try:
        main()
    except UserError as exc:
        raise SystemExit(f"{Path(sys.argv[0]).name}: {exc}") from None


def validation_files(data: Path, model_meta: dict) -> Dict[str, List[Path]]:
    """The held-out files, per dataset, as the model's training split made them (from its seed).

    The split is made again from the files under ``data``: where it does not count the files the
    model's training recorded (a file added or missing moves every later one), the "held-out"
    files would be partly training files, and the benchmark stops saying so."""
    training = model_meta["training"]
    per_dataset = {name: find_images([data / folder]) for name, folder in DATASETS.items()}
    files = [p for paths in per_dataset.values() for p in paths]
    split = split_files(files, training.get("well_regex"), training.get("val_fraction", 0.2), training["seed"])
    recorded = (training.get("train_files"), training.get("val_files"))
    if recorded != (len(split.train), len(split.val)):
        raise SystemExit(f"{data}: its images split {len(split.train)} / {len(split.val)} (train / held out), the model's "
                         f"training recorded {recorded[0]} / {recorded[1]}: not the data it was trained on, so the "
                         "held-out images would not all be held out (give --data the folder it was trained on)")
    held_out = set(split.val)
    return {name: [p for p in paths if p in held_out] for name, paths in per_dataset.items()}


def add_held_out_arguments(parser: argparse.ArgumentParser, cells: List[str]) -> None:
    """The options of the benchmarks that run one model on the held-out BBBC039 fields."""
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MSRGAN_DATA", "../shared/data")))
    parser.add_argument("--model", default="fidelity")
    parser.add_argument("--cells", nargs="+", default=cells, choices=list(QUALITY_GRID))
    parser.add_argument("--limit", type=int, default=0, help="at most this many fields (0 = all)")


def held_out_fields(args: argparse.Namespace) -> Tuple[LoadedModel, List[Path]]:
    """The model of :func:`add_held_out_arguments`' options and its held-out BBBC039 fields, or the
    fields of ``--hr`` where the benchmark offers that option and it is given."""
    model = load_model(args.model)
    hr = getattr(args, "hr", None)
    paths = find_images(hr) if hr else validation_files(args.data, model.metadata)["BBBC039"]
    return model, paths[: args.limit] if args.limit else paths


def held_out_upscaler(args: argparse.Namespace) -> Tuple[Upscaler, List[Path]]:
    """:func:`held_out_fields`, with the model as it runs by default."""
    model, paths = held_out_fields(args)
    return Upscaler(model, device="auto"), paths


def read_pair(path: Path, cell: str, normalization) -> Tuple[np.ndarray, np.ndarray, float]:
    """A held-out image as ``(hr (Y, X), lr (1, Y/4, X/4), data range of hr)`` for one grid cell."""
    hr, lr, _ = degraded_pair(path, normalization, grid_degradation(cell, SCALE))
    return hr[0], lr, float(hr.max() - hr.min())


def score(cell: str, dataset: str, paths: List[Path], models: Dict[str, Upscaler], masks_dir: Path) -> List[dict]:
    rows = []
    normalization = next(iter(models.values())).model.normalization
    for path in tqdm(paths, desc=f"{cell} {dataset}", unit="image", leave=False):
        try:
            hr, lr, data_range = read_pair(path, cell, normalization)
        except BlankField as exc:  # an empty well among --hr fields: left out, as msrgan evaluate leaves it
            tqdm.write(f"quality.py: left out {exc}")
            continue
        outputs = {name: BASELINES[name](lr, SCALE)[0] for name in CLASSICAL}
        for name, upscaler in models.items():
            outputs[name] = upscaler.upscale(lr)[0]
        outputs["high-res"] = hr
        mask_path = masks_dir / (path.stem + ".png")
        labels = read_mask(mask_path)[: hr.shape[0], : hr.shape[1]] if dataset == "BBBC039" and mask_path.exists() else None
        for method, out in outputs.items():
            row = {"cell": cell, "dataset": dataset, "image": path.name, "method": method,
                   "psnr": psnr(hr, out, data_range) if method != "high-res" else np.inf,
                   "ssim": ssim(hr, out, data_range), "hf_ratio": high_frequency_ratio(hr, out, SCALE)}
            if labels is not None:
                row["f1"] = matched_f1(labels, segment_nuclei(out))
                row["texture_error"] = texture_error(hr, out, labels)
            rows.append(row)
    return rows


def summarize(rows: List[dict]) -> List[dict]:
    """Mean figures per (cell, dataset, method), with gains over the best classical method and
    Lanczos, and the worst image's gain over bicubic."""
    table = []
    for cell, dataset in dict.fromkeys((r["cell"], r["dataset"]) for r in rows):
        mine = [r for r in rows if r["cell"] == cell and r["dataset"] == dataset]
        per_image = {(r["image"], r["method"]): r["psnr"] for r in mine}
        methods = list(dict.fromkeys(r["method"] for r in mine))
        means = {m: float(np.mean([r["psnr"] for r in mine if r["method"] == m])) for m in methods}
        best = max(CLASSICAL, key=lambda m: means[m])
        for method in methods:
            entries = [r for r in mine if r["method"] == method]
            entry = {"cell": cell, "dataset": dataset, "method": method, "images": len(entries), "best_classical": best}
            for key in ("psnr", "ssim", "hf_ratio", "f1", "texture_error"):
                values = [r[key] for r in entries if key in r]
                entry[key] = float(np.mean(values)) if values else None
            finite = np.isfinite(entry["psnr"])
            entry["vs_best"] = entry["psnr"] - means[best] if finite else None
            entry["vs_lanczos"] = entry["psnr"] - means["lanczos"] if finite else None
            entry["min_vs_bicubic"] = (min(per_image[(r["image"], method)] - per_image[(r["image"], "bicubic")]
                                           for r in entries) if finite else None)
            table.append(entry)
    return table


def format_table(table: List[dict]) -> str:
    def cell(value, fmt):
        return "-" if value is None or not np.isfinite(value) else format(value, fmt)

    lines = [f"{'cell':<18} {'dataset':<8} {'method':<16} {'n':>3} {'PSNR':>6} {'vs best':>7} {'vs Lanc':>7} "
             f"{'min vs bic':>10} {'SSIM':>6} {'F1@0.5':>7} {'HF ratio':>8} {'texture err':>11}"]
    for e in table:
        lines.append(f"{e['cell']:<18} {e['dataset']:<8} {e['method']:<16} {e['images']:>3} {cell(e['psnr'], '6.2f'):>6} "
                     f"{cell(e['vs_best'], '+.2f'):>7} {cell(e['vs_lanczos'], '+.2f'):>7} "
                     f"{cell(e['min_vs_bicubic'], '+.2f'):>10} {cell(e['ssim'], '.4f'):>6} {cell(e['f1'], '.4f'):>7} "
                     f"{cell(e['hf_ratio'], '.3f'):>8} {cell(e['texture_error'], '.5f'):>11}")
    return "\n".join(lines)


def format_grid(table: List[dict], models: List[str]) -> str:
    """The grid at a glance: per dataset and cell, the best classical method, then each model's gain
    over it, its worst image's gain over bicubic and its HF ratio."""
    by = {(e["dataset"], e["cell"], e["method"]): e for e in table}
    head = f"{'dataset':<8} {'cell':<18} {'best classical':>19}"
    for model in models:
        head += f" | {model[:10] + ' dB':>13} {'min bic':>7} {'HF':>5}"
    lines = [head]
    for dataset, cell in dict.fromkeys((e["dataset"], e["cell"]) for e in table):
        best = by[(dataset, cell, "lanczos")]["best_classical"]
        line = f"{dataset:<8} {cell:<18} {best:>12} {by[(dataset, cell, best)]['psnr']:6.2f}"
        for model in models:
            e = by[(dataset, cell, model)]
            line += f" | {e['vs_best']:>+13.2f} {e['min_vs_bicubic']:>+7.2f} {e['hf_ratio']:>5.2f}"
        lines.append(line)
    return "\n".join(lines)


#: the round's floors for each packaged model's gain over the cell's best classical method (dB)
TARGETS = {"fidelity": 2.0, "perceptual": 1.0}


def plot_grid(table: List[dict], models: List[str], destination: Path) -> None:
    """The grid as a picture: per dataset, each model's gain over the cell's best classical method
    (bars), its worst image's gain over bicubic (dots) and the targets (dashed lines)."""
    by = {(e["dataset"], e["cell"], e["method"]): e for e in table}
    datasets = list(dict.fromkeys(e["dataset"] for e in table))
    cells = list(dict.fromkeys(e["cell"] for e in table))
    x, width = np.arange(len(cells)), 0.8 / len(models)
    fig, axes = pyplot().subplots(len(datasets), 1, figsize=(max(6.0, 1.2 * len(cells)), 3.2 * len(datasets) + 0.6),
                             squeeze=False, sharex=True)
    for ax, dataset in zip(axes[:, 0], datasets):
        for i, model in enumerate(models):
            colour, offset = f"C{i}", x - 0.4 + width * (i + 0.5)
            ax.bar(offset, [by[(dataset, c, model)]["vs_best"] for c in cells], width, color=colour,
                   label=f"{model}: mean gain over the best classical method")
            if model in TARGETS:
                ax.axhline(TARGETS[model], color=colour, linestyle="--", linewidth=1, label=f"{model}'s target")
            ax.plot(offset, [by[(dataset, c, model)]["min_vs_bicubic"] for c in cells], "o", markersize=5,
                    markerfacecolor="white", markeredgecolor="black",
                    label="worst single image: gain over bicubic" if i == 0 else None)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("dB")
        ax.set_title(dataset, loc="left")
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(x)
    axes[-1, 0].set_xticklabels(cells, rotation=30, ha="right")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    save_figure(fig, destination)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MSRGAN_DATA", "../shared/data")))
    parser.add_argument("--fidelity", default="fidelity", help="model file or packaged name")
    parser.add_argument("--perceptual", default="perceptual", help="model file or packaged name")
    parser.add_argument("--previous", nargs="*", default=[], metavar="NAME=MODEL",
                        help="more models to compare, e.g. fidelity-clean=fidelity-clean (slow for 16 x 64 SRResNets)")
    parser.add_argument("--cells", nargs="+", default=list(QUALITY_GRID), choices=list(QUALITY_GRID),
                        help="grid cells to run (default: all)")
    parser.add_argument("--hr", nargs="+", help="high-resolution fields of your own or of other screens (files, "
                        "folders or globs) instead of the held-out split: one dataset, 'fields', with no F1 or "
                        "texture error (they need expert masks)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per dataset (0 = all)")
    parser.add_argument("--csv", type=Path, help="write per-image rows here")
    parser.add_argument("--plot", type=Path, help="draw the grid into this PNG (gains as bars, targets as dashed lines)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cores this process may use, or OMP_NUM_THREADS if fewer)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="as msrgan upscale's")
    add_inference_options(parser)
    args = parser.parse_args()

    fidelity = load_model(args.fidelity)
    options = dict(device="auto", ensemble=args.ensemble, match_bins=args.match_bins, threads=args.threads,
                   precision=args.precision)
    named = {"fidelity": fidelity, "perceptual": load_model(args.perceptual)}
    for item in args.previous:
        name, _, model = item.partition("=")
        named[name] = load_model(model or name)
    models = {name: Upscaler(model, **options) for name, model in named.items()}
    files = {"fields": find_images(args.hr)} if args.hr else validation_files(args.data, fidelity.metadata)
    rows = []
    for cell in tqdm(args.cells, desc="grid", unit="cell"):
        for dataset, paths in files.items():
            rows += score(cell, dataset, paths[: args.limit] if args.limit else paths, models, args.data / "bbbc039" / "masks")
    source = (f"{len(files['fields'])} fields from --hr" if args.hr else
              f"validation split of {Path(fidelity.source).name} ({fidelity.metadata['training']['split_by']})")
    print(f"{source}; " + "; ".join(f"{name}: {up.options}, {up.precision}" for name, up in models.items()))
    table = summarize(rows)
    print(format_table(table))
    print()
    print(format_grid(table, list(models)))
    if args.plot:
        plot_grid(table, list(models), args.plot)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["cell", "dataset", "image", "method", "psnr", "ssim", "hf_ratio",
                                                    "f1", "texture_error"])
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    run(main)
