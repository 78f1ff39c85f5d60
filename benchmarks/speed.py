"""CPU speed and memory of the packaged default model.

    python benchmarks/speed.py              # 512 x 512 uint16 field: msrgan vs scikit-image bicubic
    python benchmarks/speed.py --size 2048  # the memory bound: 2048 x 2048 in, 8192 x 8192 out
    python benchmarks/speed.py --ensemble 1 --no-match-bins   # one plain pass of the network

The model runs as ``msrgan upscale`` runs it: by default as its file says (the packaged
``fidelity``: 2 orientations, bins matched), or with ``--ensemble`` / ``--(no-)match-bins``.

Prints output megapixels per second and the peak resident memory of a fresh process per
measurement (so one does not inflate the other).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from msrgan_core.cli import add_inference_options  # the parser only: torch is imported in the measuring child


def measure(method: str, size: int, model: str, tile: int, repeats: int, options: dict) -> dict:
    """Run in this process: upscale a synthetic uint16 field ``repeats`` times."""
    import numpy as np
    import torch

    from msrgan_core.inference import Upscaler
    from msrgan_core.metrics import upscale_bicubic
    from msrgan_core.modelfile import load_model

    rng = np.random.default_rng(0)
    image = rng.integers(100, 4000, size=(size, size)).astype(np.uint16)
    if method == "msrgan":
        upscaler = Upscaler(load_model(model), device="cpu", tile=tile, **options)
        run = lambda: upscaler.upscale(image)  # noqa: E731
        scale = upscaler.scale
    else:
        scale = 4
        run = lambda: upscale_bicubic(image[None].astype(np.float32), scale).astype(np.uint16)  # noqa: E731
    run()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        out = run()
    seconds = (time.perf_counter() - start) / repeats
    megapixels = out.size / 1e6
    return {
        "method": method, "input": f"{size}x{size} uint16", "output_megapixels": round(megapixels, 2),
        "seconds": round(seconds, 3), "mp_per_s": round(megapixels / seconds, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="input edge in pixels")
    parser.add_argument("--model", default="fidelity")
    parser.add_argument("--tile", type=int, default=0, help="0 = automatic")
    parser.add_argument("--repeats", type=int, default=3)
    add_inference_options(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = {"ensemble": args.ensemble, "match_bins": args.match_bins}
    if args.child:
        print(json.dumps(measure(args.child, args.size, args.model, args.tile, args.repeats, options)))
        return
    methods = ["msrgan", "bicubic"] if args.size <= 1024 else ["msrgan"]
    print(f"{'method':<8} {'input':>16} {'out MP':>7} {'s/image':>8} {'out MP/s':>9} {'peak RSS MiB':>13}")
    for method in methods:
        cmd = [sys.executable, __file__, "--child", method, "--size", str(args.size), "--model", args.model,
               "--tile", str(args.tile), "--repeats", str(args.repeats if args.size <= 1024 else 1)]
        cmd += [] if args.ensemble is None else ["--ensemble", str(args.ensemble)]
        cmd += [] if args.match_bins is None else ["--match-bins" if args.match_bins else "--no-match-bins"]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{r['method']:<8} {r['input']:>16} {r['output_megapixels']:>7} {r['seconds']:>8} {r['mp_per_s']:>9} "
              f"{r['peak_rss_mib']:>13}")
    print(f"(CPU, {r['threads']} torch threads; peak RSS of a fresh process per method, Python and torch included)")


if __name__ == "__main__":
    main()
