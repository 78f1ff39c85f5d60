"""Per-nucleus features through CellProfiler, for a shipped model on the held-out BBBC039 fields.

    python benchmarks/features.py [--data ../shared/data] [--model fidelity] [--cells bin bin+300ph]
                                  [--out runs/features] [--figure docs/features_scatter.png]

For each grid cell, ``msrgan evaluate --features`` on the held-out BBBC039 fields (the split the
model's training recorded): CellProfiler's measure_nuclei pipeline on the truth, the model's
output and bicubic's; nuclei matched by overlap. Prints, per cell, the table the README shows
(matched fraction, median absolute relative error, bias, Pearson, Spearman per feature) and the
features where msrgan is less accurate than bicubic; ``--figure`` copies the first cell's scatter
plot there.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import validation_files  # noqa: E402 - the quality benchmark's held-out split

from msrgan_core.evaluate import grid_degradation  # noqa: E402
from msrgan_core.inference import Upscaler  # noqa: E402
from msrgan_core.measurements import evaluate_features, format_summary, verdicts  # noqa: E402
from msrgan_core.modelfile import load_model  # noqa: E402
from msrgan_core.options import QUALITY_GRID  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MSRGAN_DATA", "../shared/data")))
    parser.add_argument("--model", default="fidelity")
    parser.add_argument("--cells", nargs="+", default=["bin", "bin+300ph"], choices=list(QUALITY_GRID))
    parser.add_argument("--out", type=Path, default=Path("runs/features"))
    parser.add_argument("--figure", type=Path, help="copy the first cell's scatter plot here")
    parser.add_argument("--limit", type=int, default=0, help="at most this many fields (0 = all)")
    args = parser.parse_args()

    model = load_model(args.model)
    upscaler = Upscaler(model, device="auto")
    paths = validation_files(args.data, model.metadata)["BBBC039"]
    paths = paths[: args.limit] if args.limit else paths
    for index, cell in enumerate(args.cells):
        report = evaluate_features(paths, upscaler, grid_degradation(cell, scale=upscaler.scale), args.out / cell,
                                   name=f"{Path(model.source).name} and bicubic against the truth: {len(paths)} held-out "
                                        f"BBBC039 fields, {cell}")
        print(f"\n{Path(model.source).name}, {cell}, {len(paths)} held-out BBBC039 fields ({upscaler.options})")
        print(format_summary(report.summary))
        for line in verdicts(report.summary):
            print(f"note: {line}")
        if index == 0 and args.figure:
            shutil.copyfile(report.files[-1], args.figure)


if __name__ == "__main__":
    main()
