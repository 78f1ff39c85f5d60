"""``make demo``: msrgan against bicubic interpolation inside a real CellProfiler pipeline.

Runs the shipped ``compare_with_bicubic.cppipe`` headless (through :func:`run_pipeline`, so a
plugin that fails to load fails the demo) on the ExampleFly DNA fields that ship inside the
installed CellProfiler package, with the packaged fidelity model, then prints how many nuclei
CellProfiler found on each upscaled image and writes a side-by-side PNG (input | bicubic |
msrgan). Run ``python -m msrgan_core.demo --out DIR``.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import tifffile

from .headless import HeadlessRunError, resolve_pipeline, run_pipeline
from .modelfile import read_metadata

PIPELINE = "compare_with_bicubic"
SCALE = 4
#: centre crop (input pixels) of each field; 0 keeps the whole 1006 x 1000 field
DEFAULT_CROP = 400
#: edge, in input pixels, of the region shown in the side-by-side PNG
PANEL_EDGE = 80


def example_fly_images() -> List[Path]:
    """The ExampleFly DNA fields (``*_D.TIF``) inside the installed CellProfiler package."""
    spec = importlib.util.find_spec("cellprofiler")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("CellProfiler is not installed in this Python: the demo needs CellProfiler 4.2.x")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "examples" / "ExampleFly" / "images"
    images = sorted(folder.glob("*_D.TIF"))
    if not images:
        raise FileNotFoundError(f"no ExampleFly DNA images (*_D.TIF) in {folder}")
    return images


def centre_crop(image: np.ndarray, edge: int) -> np.ndarray:
    """The central ``edge`` x ``edge`` pixels (the whole image when ``edge`` is 0 or too large)."""
    if edge <= 0:
        return image
    y0 = max(0, (image.shape[0] - edge) // 2)
    x0 = max(0, (image.shape[1] - edge) // 2)
    return image[y0:y0 + edge, x0:x0 + edge]


def prepare_inputs(sources: Sequence[Path], folder: Path, crop: int) -> List[Path]:
    """Write (cropped) copies of the DNA fields under their own names into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        target = folder / source.name
        tifffile.imwrite(target, centre_crop(tifffile.imread(source), crop))
        written.append(target)
    return written


def read_counts(image_csv: Path) -> List[Dict[str, str]]:
    """Per-image rows of CellProfiler's Image.csv: file name and both nuclei counts."""
    with open(image_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [
        {"image": r["FileName_DNA"], "msrgan": r["Count_NucleiMSRGAN"], "bicubic": r["Count_NucleiBicubic"]}
        for r in rows
    ]


def busiest_window(image: np.ndarray, edge: int) -> "tuple[int, int]":
    """Top-left corner of the ``edge``-pixel window with the most intensity variation."""
    best, corner = -1.0, (0, 0)
    step = max(1, edge // 2)
    for y in range(0, max(1, image.shape[0] - edge + 1), step):
        for x in range(0, max(1, image.shape[1] - edge + 1), step):
            score = float(np.std(image[y:y + edge, x:x + edge]))
            if score > best:
                best, corner = score, (y, x)
    return corner


def side_by_side(source: Path, bicubic: Path, msrgan: Path, destination: Path, edge: int = PANEL_EDGE) -> Path:
    """PNG of one region: the input (pixels repeated 4x) | bicubic | msrgan, with captions.

    All three panels share one contrast stretch, taken from the input's percentiles.
    """
    from PIL import Image, ImageDraw

    raw = tifffile.imread(source)
    # CellProfiler's 0..1 scale: integers over their type's maximum; SaveImages wrote 16-bit
    low_res = raw.astype(np.float64) / (np.iinfo(raw.dtype).max if raw.dtype.kind in "ui" else 1.0)
    big = [tifffile.imread(p).astype(np.float64) / 65535.0 for p in (bicubic, msrgan)]
    edge = min(edge, *low_res.shape)
    y, x = busiest_window(low_res, edge)
    panels = [np.kron(low_res[y:y + edge, x:x + edge], np.ones((SCALE, SCALE)))]
    panels += [b[y * SCALE:(y + edge) * SCALE, x * SCALE:(x + edge) * SCALE] for b in big]
    lo, hi = np.percentile(panels[0], [0.5, 99.8])
    hi = hi if hi > lo else lo + 1e-6
    tiles = [np.clip((p - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8) for p in panels]
    gap, caption = 6, 18
    h, w = tiles[0].shape
    canvas = Image.new("L", (3 * w + 2 * gap, h + caption), color=255)
    draw = ImageDraw.Draw(canvas)
    for i, (tile, label) in enumerate(zip(tiles, ("input (4x pixels)", "bicubic 4x", "msrgan 4x (fidelity)"))):
        canvas.paste(Image.fromarray(tile), (i * (w + gap), caption))
        draw.text((i * (w + gap) + 2, 3), label, fill=0)
    destination.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(destination)
    return destination


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m msrgan_core.demo",
        description="Run compare_with_bicubic.cppipe headless on CellProfiler's ExampleFly DNA images and "
        "summarise nuclei found on msrgan- and bicubic-upscaled images.",
    )
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument(
        "--crop", type=int, default=DEFAULT_CROP,
        help=f"centre crop of each field in input pixels (default {DEFAULT_CROP}; 0 = whole 1006 x 1000 fields, "
        "about 1.5 minutes per field on 2 CPU cores)",
    )
    parser.add_argument("--verbose", action="store_true", help="echo CellProfiler's log")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    try:
        sources = example_fly_images()
        pipeline = resolve_pipeline(PIPELINE)
    except (FileNotFoundError, HeadlessRunError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    inputs = prepare_inputs(sources, out / "inputs", args.crop)
    cp_out = out / "cellprofiler"
    what = "whole fields" if args.crop <= 0 else f"centre {args.crop} x {args.crop} crops"
    note = read_metadata("fidelity").get("note")
    print(f"Running {pipeline.name} headless on {len(inputs)} ExampleFly DNA images ({what}), "
          f"model: packaged fidelity{f' ({note})' if note else ''} ...", flush=True)
    try:
        result = run_pipeline(pipeline, out / "inputs", cp_out, echo=sys.stderr.write if args.verbose else None)
    except HeadlessRunError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1

    rows = read_counts(cp_out / "Image.csv")
    first = rows[0]["image"]
    stem = Path(first).stem
    png = side_by_side(
        out / "inputs" / first, cp_out / f"{stem}_bicubic.tiff", cp_out / f"{stem}_msrgan.tiff",
        out / "side_by_side.png",
    )
    width = max(len(r["image"]) for r in rows)
    print(f"\nCellProfiler ran {result.image_sets} image set(s) in {result.seconds:.0f} s.")
    print(f"{'image':<{width}}  {'nuclei (msrgan)':>15}  {'nuclei (bicubic)':>16}")
    for r in rows:
        print(f"{r['image']:<{width}}  {float(r['msrgan']):>15.0f}  {float(r['bicubic']):>16.0f}")
    total_m = sum(float(r["msrgan"]) for r in rows)
    total_b = sum(float(r["bicubic"]) for r in rows)
    print(f"{'total':<{width}}  {total_m:>15.0f}  {total_b:>16.0f}")
    print(f"\nInputs:            {out / 'inputs'}")
    print(f"Spreadsheets:      {cp_out / 'Image.csv'} (counts side by side), NucleiMSRGAN.csv, NucleiBicubic.csv")
    print(f"Upscaled images:   {cp_out}/*_msrgan.tiff and *_bicubic.tiff (16-bit, {SCALE}x)")
    print(f"Side-by-side PNG:  {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
