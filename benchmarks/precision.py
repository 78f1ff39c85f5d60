"""Reduced precision against fp32, on the held-out validation split over the quality grid.

    python benchmarks/precision.py                                   # the CPU: bf16 against fp32
    python benchmarks/precision.py --models fidelity fidelity-clean --cells bin bin+300ph
    python benchmarks/precision.py --device cuda --precisions bf16 fp16

Each image of each cell (``benchmarks/quality.py``'s inputs) is upscaled by each model in fp32
and in each reduced precision, as ``msrgan upscale`` runs it. Per model, cell and dataset it
prints the mean and the largest change of the PSNR against the truth (reduced minus fp32; the
inference issue asks for 0.01 dB at most), the lowest PSNR of the reduced-precision output
against fp32's own (data range: the truth's), and the time each precision took in all.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from msrgan_core.inference import Upscaler
from msrgan_core.metrics import psnr
from msrgan_core.modelfile import load_model
from msrgan_core.options import QUALITY_GRID

from quality import read_pair, run, validation_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MSRGAN_DATA", "../shared/data")))
    parser.add_argument("--models", nargs="+", default=["fidelity", "perceptual"], help="model files or packaged names")
    parser.add_argument("--cells", nargs="+", default=list(QUALITY_GRID), choices=list(QUALITY_GRID))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precisions", nargs="+", default=["bf16"], choices=["bf16", "fp16"])
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cores this process may use, or OMP_NUM_THREADS if fewer)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per dataset (0 = all)")
    args = parser.parse_args()

    models = {name: load_model(name) for name in args.models}
    files = validation_files(args.data, models[args.models[0]].metadata)
    print(f"{'model':<15} {'cell':<18} {'dataset':<8} {'n':>3} {'precision':>9} {'mean gap dB':>11} "
          f"{'max |gap|':>9} {'min dB vs fp32':>14}")
    seconds = {}
    for name, model in models.items():
        upscalers = {p: Upscaler(model, device=args.device, precision=p, threads=args.threads)
                     for p in ["fp32"] + args.precisions}
        for cell in args.cells:
            for dataset, paths in files.items():
                paths = paths[: args.limit] if args.limit else paths
                gaps = {p: [] for p in args.precisions}
                agreement = {p: [] for p in args.precisions}
                for path in tqdm(paths, desc=f"{name} {cell} {dataset}", unit="image", leave=False):
                    hr, lr, data_range = read_pair(path, cell, model.normalization)
                    outputs = {}
                    for precision, upscaler in upscalers.items():
                        start = time.perf_counter()
                        outputs[precision] = upscaler.upscale(lr)[0].astype(np.float64)
                        key = (name, precision)
                        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
                    reference = psnr(hr, outputs["fp32"], data_range)
                    for p in args.precisions:
                        gaps[p].append(psnr(hr, outputs[p], data_range) - reference)
                        agreement[p].append(psnr(outputs["fp32"], outputs[p], data_range))
                for p in args.precisions:
                    print(f"{name:<15} {cell:<18} {dataset:<8} {len(paths):>3} {p:>9} {np.mean(gaps[p]):>+11.4f} "
                          f"{np.max(np.abs(gaps[p])):>9.4f} {np.min(agreement[p]):>14.1f}", flush=True)
    for (name, precision), total in seconds.items():
        print(f"{name}: {precision} {total:.1f} s in all ({seconds[(name, 'fp32')] / total:.2f} x fp32's speed)")


if __name__ == "__main__":
    run(main)
