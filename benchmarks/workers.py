"""CellProfiler's analysis workers: the same fields through 1 and through 2 workers.

    python benchmarks/workers.py [--data ../shared/data] [--fields 12] [--workers 1 2]

Runs the shipped ``upscale_segment_measure`` pipeline (UpscaleMSRGAN with its settings as shipped:
threads automatic) over ``--fields`` BBBC039 fields with CellProfiler's own analysis, as *Analyze
Images* runs it in the GUI: the pipeline's image sets are handed out to that many worker processes,
each a Python with its own JVM and model. Each count runs in a fresh process of this script.

Prints per count the wall time from the analysis' start to its end (workers' start-up included)
and the CPU threads each worker's UpscaleMSRGAN took (from the workers' log), so that one
worker with every core can be compared with several sharing them.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "upscale_segment_measure.cppipe"


def analyse(files: list, workers: int, out: Path) -> None:
    """Run the pipeline over ``files`` with ``workers`` analysis workers; print the seconds and threads."""
    import cellprofiler_core.preferences as preferences

    preferences.set_headless()
    preferences.set_plugin_directory(str(ROOT / "cellprofiler_plugin"), globally=False)
    preferences.set_default_output_directory(str(out))
    threads = []

    class Threads(logging.Handler):  # the workers' log lines reach this process through CellProfiler's logging
        def emit(self, record):
            found = re.search(r"msrgan: model .* on cpu \((\d+) threads\)", record.getMessage())
            if found:
                threads.append(int(found.group(1)))

    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger().addHandler(Threads())
    from cellprofiler_core.utilities.core.modules import fill_modules

    fill_modules()
    import cellprofiler_core.utilities.java as java

    java.start_java()
    from cellprofiler_core.analysis._analysis import Analysis
    from cellprofiler_core.analysis._runner import Runner
    from cellprofiler_core.analysis.event import Finished
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.workspace import Workspace

    pipeline = Pipeline()
    pipeline.load(str(PIPELINE))
    pipeline.add_pathnames_to_file_list([str(f) for f in files])
    measurements = Measurements()
    if not pipeline.prepare_run(Workspace(pipeline, None, None, None, measurements, None)):
        raise SystemExit("workers.py: the pipeline did not prepare its run")
    done = []
    start = time.perf_counter()
    Analysis(pipeline, initial_measurements=measurements).start(
        lambda event: done.append(event) if isinstance(event, Finished) else None, num_workers=workers)
    while not done:
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    Runner.stop_workers()
    measured = sum(len(path.read_text().splitlines()) - 1 for path in out.rglob("*Image.csv"))
    print(f"{workers} worker(s): {seconds:6.1f} s for {len(files)} fields ({len(files) / seconds:.3f} fields/s), "
          f"{measured} measured in Image.csv, UpscaleMSRGAN threads per worker {sorted(set(threads))}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MSRGAN_DATA", "../shared/data")))
    parser.add_argument("--fields", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single count, in this process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    files = sorted((args.data / "bbbc039" / "images").glob("*.tif"))[:args.fields]
    if len(files) < args.fields:
        raise SystemExit(f"workers.py: {args.fields} BBBC039 images wanted under {args.data}, found {len(files)}: pass --data")
    if args.one:
        status = 1
        try:
            analyse(files, args.one, args.out)
            status = 0
        finally:
            sys.stdout.flush()
            os._exit(status)  # the JVM and CellProfiler's threads would keep the process alive
    from msrgan_core.device import available_cores

    print(f"{PIPELINE.name} over {len(files)} BBBC039 fields, {available_cores()} cores; UpscaleMSRGAN's threads automatic")
    for workers in args.workers:
        with tempfile.TemporaryDirectory(prefix="msrgan-workers-") as out:
            run = subprocess.run([sys.executable, __file__, "--data", str(args.data), "--fields", str(args.fields),
                                  "--one", str(workers), "--out", out], stderr=subprocess.PIPE, text=True)
            if run.returncode != 0:
                raise SystemExit(f"workers.py: the run with {workers} worker(s) failed:\n{run.stderr[-3000:]}")


if __name__ == "__main__":
    main()
