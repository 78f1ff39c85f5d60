"""``make demo``: what msrgan gives an analyst, against bicubic, on fields every install has.

The ExampleFly DNA fields inside the installed CellProfiler package are the truth. Each centre
crop is binned 4 x 4 into a **synthetic** low-magnification input (say so: no real pair of
acquisitions ships with CellProfiler). Then:

1. CellProfiler runs the shipped ``compare_with_bicubic.cppipe`` headless on the inputs: the
   UpscaleMSRGAN module and Resize (bicubic) upscale each one 4x, both are segmented and saved;
2. CellProfiler runs ``measure_nuclei.cppipe`` on the truth and on both upscaled images, and
   each nucleus found after upscaling is matched to the truth's by overlap (:mod:`msrgan_core.
   measurements`), so every feature is compared with the value the truth gives;
3. the demo prints PSNR against the truth, nuclei found and matched, and the errors of area and
   integrated intensity per method, and writes a PNG of one region: input | bicubic | msrgan |
   truth, with each method's difference from the truth beneath.

Run ``python -m msrgan_core.demo --out DIR``.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import tifffile

from .binning import bin_mean
from .errors import UserError
from .headless import HeadlessRunError, run_pipeline

PIPELINE = "compare_with_bicubic"
SCALE = 4
#: centre crop (truth pixels) of each 1006 x 1000 field
DEFAULT_CROP = 512


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
    """The central ``edge`` x ``edge`` pixels, rounded down to a multiple of the scale."""
    edge = min(edge, *image.shape) // SCALE * SCALE
    y0, x0 = (image.shape[0] - edge) // 2, (image.shape[1] - edge) // 2
    return image[y0:y0 + edge, x0:x0 + edge]


def prepare(sources: Sequence[Path], out: Path, crop: int) -> List[str]:
    """Truth crops (``truth/NAME.tif``) and their 4 x 4 binnings (``inputs/NAME.TIF``, same dtype)."""
    for folder in ("truth", "inputs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    names = []
    for source in sources:
        truth = centre_crop(tifffile.imread(source), crop)
        binned = bin_mean(truth[None].astype(np.float32), SCALE)[0]
        tifffile.imwrite(out / "truth" / source.name, truth)
        tifffile.imwrite(out / "inputs" / source.name, np.rint(binned).astype(truth.dtype))
        names.append(source.name)
    return names


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """CellProfiler's 0..1 scale: integers over their type's maximum."""
    return pixels.astype(np.float64) / (np.iinfo(pixels.dtype).max if pixels.dtype.kind in "ui" else 1.0)


def psnr(truth: np.ndarray, test: np.ndarray) -> float:
    from .metrics import psnr as _psnr, true_range

    return _psnr(truth, test, true_range(truth))


def figure(out: Path, name: str, destination: Path) -> Path:
    """PNG of one busy region (:func:`~msrgan_core.pictures.side_by_side`): input (pixels repeated) |
    bicubic | msrgan | truth, differences beneath."""
    from .pictures import side_by_side

    stem = Path(name).stem
    truth = to_unit(tifffile.imread(out / "truth" / name))
    outputs = [(method, to_unit(tifffile.imread(out / "cellprofiler" / f"{stem}_{method}.tiff")))
               for method in ("bicubic", "msrgan")]
    return side_by_side(destination, to_unit(tifffile.imread(out / "inputs" / name)), SCALE, "synthetic input (4 x 4 binned)",
                        [(f"{method} {psnr(truth, image):.1f} dB", image) for method, image in outputs], truth)


def measure(out: Path, names: Sequence[str]) -> "tuple[list, list]":
    """Step 2: the truth and both upscaled images through measure_nuclei; matched rows and summary."""
    from .measurements import METHODS, PIPELINE as MEASURE, TRUTH, compare, summarize

    images = out / "measure" / "images"
    images.mkdir(parents=True, exist_ok=True)
    fields = []
    for name in names:
        stem = Path(name).stem
        shutil.copyfile(out / "truth" / name, images / f"{stem}__{TRUTH}.tif")
        for method in METHODS:
            shutil.copyfile(out / "cellprofiler" / f"{stem}_{method}.tiff", images / f"{stem}__{method}.tif")
        fields.append(stem)
    run_pipeline(MEASURE, images, out / "measure" / "cellprofiler")
    rows = compare(fields, out / "measure" / "cellprofiler", METHODS)  # the demo measures no repeat
    return rows, summarize(rows)


def report(out: Path, names: Sequence[str], rows: list, summary: list) -> str:
    """The demo's table: per method, PSNR, nuclei found and matched, area and intensity errors."""
    by = {(e["method"], e["feature"]): e for e in summary}
    truth_count = len({(r["field"], r["object"]) for r in rows if r["method"] == "msrgan"})
    lines = [f"{'against the truth':<18} {'PSNR dB':>8} {'nuclei matched':>15} {'area error':>11} {'intensity error':>16}"]
    for method in ("bicubic", "msrgan"):
        values = []
        for name in names:
            stem = Path(name).stem
            values.append(psnr(to_unit(tifffile.imread(out / "truth" / name)),
                               to_unit(tifffile.imread(out / "cellprofiler" / f"{stem}_{method}.tiff"))))
        area, intensity = by[(method, "AreaShape_Area")], by[(method, "Intensity_IntegratedIntensity_DNA")]
        matched = sum(1 for r in rows if r["method"] == method and "matched_object" in r)
        lines.append(f"{method:<18} {np.mean(values):>8.2f} {f'{matched} of {truth_count}':>15} "
                     f"{area.get('median_abs_rel_error', np.nan):>11.1%} {intensity.get('median_abs_rel_error', np.nan):>16.1%}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m msrgan_core.demo",
        description="Bin CellProfiler's ExampleFly DNA fields 4x, upscale them back with msrgan and bicubic inside "
        "CellProfiler, and measure both against the truth.",
    )
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--crop", type=int, default=DEFAULT_CROP,
                        help=f"centre crop of each field in truth pixels (default {DEFAULT_CROP}; at most 1000)")
    parser.add_argument("--verbose", action="store_true", help="echo CellProfiler's log")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    started = time.monotonic()
    try:
        sources = example_fly_images()
        print(f"[1/3] {len(sources)} ExampleFly DNA fields, centre {args.crop} x {args.crop}, binned 4 x 4 into "
              "synthetic low-magnification inputs (the truth is the field itself) ...", flush=True)
        names = prepare(sources, out, args.crop)
        echo = sys.stderr.write if args.verbose else None
        run_pipeline(PIPELINE, out / "inputs", out / "cellprofiler", echo=echo)
        print(f"[2/3] CellProfiler upscaled them with UpscaleMSRGAN and bicubic ({time.monotonic() - started:.0f} s); "
              "measuring the nuclei on both and on the truth ...", flush=True)
        rows, summary = measure(out, names)
    except (FileNotFoundError, HeadlessRunError, UserError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    png = figure(out, names[0], out / "side_by_side.png")
    print(f"[3/3] done in {time.monotonic() - started:.0f} s.\n")
    print(report(out, names, rows, summary))
    print("\n(median relative errors of each matched nucleus's area and integrated intensity; a nucleus is matched when"
          " it overlaps the truth's by IoU >= 0.5. The inputs are synthetic: binned from the truth, not acquired.)")
    print(f"\nPicture:           {png}  (input | bicubic | msrgan | truth; differences beneath)")
    print(f"Inputs and truth:  {out / 'inputs'}, {out / 'truth'}")
    print(f"CellProfiler:      {out / 'cellprofiler'} (Image.csv: nuclei counts; *_msrgan.tiff, *_bicubic.tiff)")
    print(f"Every feature:     {out / 'measure' / 'cellprofiler'} (Nuclei.csv), msrgan evaluate --features for your own")
    return 0


if __name__ == "__main__":
    sys.exit(main())
