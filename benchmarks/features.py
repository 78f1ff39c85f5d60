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
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import add_held_out_arguments, held_out_upscaler, run  # noqa: E402 - the quality benchmark's held-out split

from msrgan_core.evaluate import degraded_pairs, grid_degradation  # noqa: E402
from msrgan_core.measurements import evaluate_features, format_summary, verdicts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_held_out_arguments(parser, ["bin", "bin+300ph"])
    parser.add_argument("--out", type=Path, default=Path("runs/features"))
    parser.add_argument("--figure", type=Path, help="copy the first cell's scatter plot here")
    args = parser.parse_args()

    upscaler, paths = held_out_upscaler(args)
    model = upscaler.model
    for index, cell in enumerate(args.cells):
        pairs = degraded_pairs(paths, model.normalization, grid_degradation(cell, scale=upscaler.scale), channel=0,
                               desc="upscaling")
        report = evaluate_features(pairs, upscaler, upscaler.scale, args.out / cell,
                                   name=f"{Path(model.source).name} and bicubic against the truth, held-out BBBC039 "
                                        f"fields, {cell}")
        print(f"\n{Path(model.source).name}, {cell}, {len(paths)} held-out BBBC039 fields ({upscaler.options})")
        print(format_summary(report.summary))
        for line in verdicts(report.summary):
            print(f"note: {line}")
        if index == 0 and args.figure:
            shutil.copyfile(next(path for path in report.files if path.suffix == ".png"), args.figure)  # the scatter plot


if __name__ == "__main__":
    run(main)
