"""Plate throughput: ``msrgan upscale`` end to end over a plate of fields, beside the model alone.

    python benchmarks/plate.py [--data ../shared/data] [--fields 96] [--edge 1080] [--threads 2]

Makes a plate of ``--fields`` uint16 fields of ``--edge`` x ``--edge`` pixels from real BBBC039
images (each mirrored out to the edge), in a temporary folder. Then, in this run:

- ``model only``: ``Upscaler.upscale`` of fields already in memory, after a warm-up;
- ``msrgan upscale``: the command in a fresh process over the whole folder (model loading,
  reading, upscaling, writing atomically, everything), with its peak RSS.

Prints both as output megapixels per second, and the end-to-end share of the model-only figure.
With ``--processes 1 2`` it also runs the plate split among that many ``msrgan upscale``
processes at once, each with its share of the threads, as several CellProfiler workers would.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile


def make_plate(data: Path, folder: Path, fields: int, edge: int) -> list:
    """``fields`` uint16 TIFFs of ``edge`` x ``edge`` from BBBC039 images, mirrored out to size."""
    sources = sorted((data / "bbbc039" / "images").glob("*.tif"))
    if not sources:
        raise SystemExit(f"plate.py: no BBBC039 images under {data}: pass --data")
    paths = []
    for i in range(fields):
        image = tifffile.imread(sources[i % len(sources)])
        reps = (-(-edge // image.shape[0]), -(-edge // image.shape[1]))
        tiled = np.pad(image, [(0, (reps[0] - 1) * image.shape[0]), (0, (reps[1] - 1) * image.shape[1])], mode="symmetric")
        path = folder / f"plate_{chr(65 + i // 12 % 8)}{i % 12 + 1:02d}_s1.tif"
        tifffile.imwrite(path, np.ascontiguousarray(tiled[:edge, :edge]).astype(np.uint16))
        paths.append(path)
    return paths


def model_only(paths: list, model: str, threads: int, count: int) -> float:
    """Output megapixels per second of the upscaler alone on fields in memory."""
    from msrgan_core.inference import Upscaler
    from msrgan_core.modelfile import load_model

    upscaler = Upscaler(load_model(model), device="cpu", threads=threads)
    images = [tifffile.imread(p) for p in paths[:count]]
    upscaler.upscale(images[0])  # warm-up
    start = time.perf_counter()
    pixels = sum(upscaler.upscale(image).size for image in images)
    return pixels / (time.perf_counter() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MSRGAN_DATA", "../shared/data")))
    parser.add_argument("--fields", type=int, default=96)
    parser.add_argument("--edge", type=int, default=1080)
    parser.add_argument("--model", default="fidelity")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-fields", type=int, default=4, help="fields timed for the model-only figure")
    parser.add_argument("--processes", type=int, nargs="+", default=[1],
                        help="also run the plate split among N concurrent processes, threads shared (e.g. 1 2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="msrgan-plate-") as tmp:
        plate, out = Path(tmp) / "plate", Path(tmp) / "out"
        plate.mkdir()
        paths = make_plate(args.data, plate, args.fields, args.edge)
        alone = model_only(paths, args.model, args.threads, args.model_fields)
        print(f"plate of {args.fields} uint16 fields of {args.edge} x {args.edge}, model {args.model}, {args.threads} threads")
        print(f"model only:      {alone:7.3f} output MP/s ({args.model_fields} fields in memory)")
        for count in args.processes:
            seconds, rss = run_split(paths, out / f"x{count}", args.model, count, args.threads)
            assert len(list((out / f"x{count}").glob("*.tif"))) == args.fields, "an output is missing"
            end_to_end = args.fields * args.edge ** 2 * 16 / seconds / 1e6
            print(f"msrgan upscale x{count}: {end_to_end:7.3f} output MP/s ({seconds:.0f} s for the plate in {count} "
                  f"process(es) of {max(1, args.threads // count)} thread(s), model loading and writing included; "
                  f"end to end / model only {end_to_end / alone:.0%}; peak RSS of a process {rss:.0f} MiB)")


def run_split(paths: list, out: Path, model: str, count: int, threads: int) -> "tuple[float, float]":
    """Seconds for ``count`` concurrent ``msrgan upscale`` processes, each on every count-th field,
    and the largest peak RSS (MiB) of these processes (each process's own, not of every child so far)."""
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "msrgan_core.cli", "upscale", *map(str, paths[i::count]), "-o", str(out),
                               "--model", model, "--device", "cpu", "--threads", str(max(1, threads // count)), "-q"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(count)]
    peak = 0.0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak = max(peak, usage.ru_maxrss / 1024)
        if proc.returncode != 0:
            raise SystemExit(f"plate.py: msrgan upscale failed: {proc.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - start, peak


if __name__ == "__main__":
    main()
