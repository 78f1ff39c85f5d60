"""CPU speed and memory of a model, beside the machine's own arithmetic rate and bicubic.

    python benchmarks/speed.py                       # the packaged fidelity: 512 and 2048 input
    python benchmarks/speed.py --model fidelity-clean --sizes 512   # another model file or name
    python benchmarks/speed.py --ensemble 2 --match-bins            # options of msrgan upscale
    python benchmarks/speed.py --tile 617                           # square tiles instead of strips
    python benchmarks/speed.py --precision fp32                     # fp32 where the CPU would run bf16
    python benchmarks/speed.py --device cuda --sizes 2048           # a GPU: bf16 against fp32

Each figure comes from a fresh process (so one's memory does not inflate another's), with the
same torch thread count (``--threads``, default 2):

- ``sgemm``: a 2048 x 2048 float32 matrix product, the rate this machine's BLAS reaches (and,
  where the network runs in bf16, the same product in bf16);
- ``network 256``: the generator alone on one untiled 256 x 256 input, in the precision
  ``msrgan upscale`` runs (``--precision``, default auto: bf16 on CPUs with AVX-512 BF16 or AMX),
  and its share of those rates (multiply-adds counted layer by layer, 2 FLOP each);
- ``msrgan NxN``: ``Upscaler.upscale`` of a uint16 field as ``msrgan upscale`` runs it (strips or
  tiles, normalisation, orientations, dtype), its throughput over the untiled network's, and peak RSS;
- ``bicubic NxN``: scikit-image's order-3 resize of the same field.

With ``--device cuda`` it measures ``Upscaler.upscale`` on the GPU instead, in fp32 and in each
reduced precision, after a warm-up, with its share of the card's dense bf16 peak
(``--peak-tflops``, 989 for an H100/H200 SXM) and the PSNR of the reduced-precision output
against fp32's.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from msrgan_core.cli import add_inference_options  # the parser only: torch is imported in the measuring child


def conv_macs(generator, height: int, width: int) -> int:
    """Multiply-adds of one forward pass on a ``(1, C, height, width)`` input, convolution by convolution.

    The network's own arithmetic: counted with autograd on (nothing requires a gradient), where
    SRResNet upsamples the whole input at once, so the context its CPU parts recompute is not
    counted as work done.
    """
    import torch
    import torch.nn.functional as F

    total = 0
    original = F.conv2d

    def counting(x, weight, *args, **kwargs):
        nonlocal total
        y = original(x, weight, *args, **kwargs)
        total += y.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        return y

    F.conv2d = counting
    conv_forward = torch.nn.Conv2d._conv_forward
    torch.nn.Conv2d._conv_forward = lambda self, x, w, b: counting(x, w, b, self.stride, self.padding, self.dilation, self.groups)
    try:
        with torch.enable_grad():
            generator.requires_grad_(False)
            generator(torch.zeros(1, generator.config.in_channels, height, width))
    finally:
        F.conv2d = original
        torch.nn.Conv2d._conv_forward = conv_forward
    return total


def timed(run, repeats: int) -> float:
    run()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def measure(what: str, size: int, model: str, repeats: int, threads: int, options: dict) -> dict:
    """Run in this process: one figure."""
    import numpy as np
    import torch

    from msrgan_core.device import use_cpu

    use_cpu(threads)  # as Upscaler does, so the untiled network is measured the same way
    from msrgan_core.inference import resolve_precision

    precision = resolve_precision(options["precision"], torch.device("cpu"))
    result = {"what": what, "size": size, "precision": precision}
    if what == "gemm":
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        result["gflops"] = 2 * 2048 ** 3 / timed(lambda: a @ b, 10) / 1e9
    elif what == "network":
        from msrgan_core.modelfile import load_model

        loaded = load_model(model)
        generator = loaded.generator.to(memory_format=torch.channels_last)
        x = torch.rand(1, loaded.config.in_channels, size, size).contiguous(memory_format=torch.channels_last)

        @torch.inference_mode()
        def network():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):  # as Upscaler runs it
                return generator(x)

        seconds = timed(network, repeats)
        macs = conv_macs(loaded.generator, size, size)
        result.update(seconds=seconds, mp_per_s=size * size * loaded.scale ** 2 / seconds / 1e6,
                      gflops=2 * macs / seconds / 1e9, macs_per_pixel=macs / size ** 2)
    else:
        image = np.random.default_rng(0).integers(100, 4000, size=(size, size)).astype(np.uint16)
        if what == "msrgan":
            from msrgan_core.inference import Upscaler
            from msrgan_core.modelfile import load_model

            upscaler = Upscaler(load_model(model), device="cpu", threads=threads, **options)
            run, scale = (lambda: upscaler.upscale(image)), upscaler.scale
            result["options"] = upscaler.options
            result["orientations"] = len(upscaler.orientations)  # network passes per image: each does the arithmetic
            result["layout"] = upscaler.layout((size, size))
        else:
            from msrgan_core.metrics import upscale_bicubic

            scale = 4
            run = lambda: upscale_bicubic(image[None].astype(np.float32), scale).astype(np.uint16)  # noqa: E731
        seconds = timed(run, repeats)
        result.update(seconds=seconds, mp_per_s=size * size * scale ** 2 / seconds / 1e6)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def gpu(args, options: dict) -> None:
    """The GPU figures: output MP/s per precision, share of the bf16 peak, PSNR against fp32."""
    import numpy as np
    import torch

    from msrgan_core.inference import Upscaler
    from msrgan_core.metrics import psnr
    from msrgan_core.modelfile import load_model

    model = load_model(args.model)
    macs = conv_macs(model.generator, 256, 256) / 256 ** 2
    print(f"model {args.model} on {torch.cuda.get_device_name()}; {macs / 1e6:.3f} M multiply-adds per input pixel; "
          f"peak {args.peak_tflops:g} TFLOP/s (bf16, dense)")
    print(f"{'size':>6} {'precision':>9} {'out MP/s':>10} {'s/image':>8} {'TFLOP/s':>8} {'of peak':>8} {'dB vs fp32':>10}")
    for size in args.sizes:
        image = np.random.default_rng(0).integers(100, 4000, size=(size, size)).astype(np.uint16)
        reference = None
        for precision in ("fp32", "bf16", "fp16"):
            upscaler = Upscaler(model, device="cuda", precision=precision, **options)
            upscaler.upscale(image)  # warm-up: cuDNN's choice of kernels
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.repeats):
                out = upscaler.upscale(image)
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / args.repeats
            tflops = 2 * macs * size * size * len(upscaler.orientations) / seconds / 1e12
            reference = out if reference is None else reference
            gap = "-" if out is reference else f"{psnr(reference.astype(np.float64), out, 4000.0):.2f}"
            print(f"{size:>6} {precision:>9} {out.size / seconds / 1e6:>10.0f} {seconds:>8.3f} {tflops:>8.1f} "
                  f"{tflops / args.peak_tflops:>8.1%} {gap:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="input edges in pixels")
    parser.add_argument("--model", default="fidelity")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure at 512 or less (1 above)")
    parser.add_argument("--tile", type=int, default=0, help="tile edge as msrgan upscale's (0: strips on the CPU)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="as msrgan upscale's (auto: bf16 on CPUs that compute it, else fp32)")
    add_inference_options(parser)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = {"ensemble": args.ensemble, "match_bins": args.match_bins, "tile": args.tile, "precision": args.precision}
    if args.child:
        print(json.dumps(measure(args.child, args.size, args.model, args.repeats, args.threads, options)))
        return
    if args.device == "cuda":
        gpu(args, {key: value for key, value in options.items() if key != "precision"})  # it runs every precision
        return

    def child(what: str, size: int, precision: str = args.precision) -> dict:
        cmd = [sys.executable, __file__, "--child", what, "--size", str(size), "--model", args.model,
               "--threads", str(args.threads), "--repeats", str(args.repeats if size <= 512 else 1), "--tile", str(args.tile),
               "--precision", precision]
        cmd += [] if args.ensemble is None else ["--ensemble", str(args.ensemble)]
        cmd += [] if args.match_bins is None else ["--match-bins" if args.match_bins else "--no-match-bins"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:  # the measuring child's own error, in one line
            said = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            raise SystemExit(f"speed.py: measuring {what} at {size} failed: {said[-1]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    sgemm = child("gemm", 2048, "fp32")["gflops"]
    net = child("network", 256)
    bf16 = net["precision"] == "bf16"
    gemm = child("gemm", 2048)["gflops"] if bf16 else sgemm
    print(f"model {args.model}, {args.threads} CPU threads, {net['precision']}; SGEMM {sgemm:.0f} GFLOP/s"
          + (f", bf16 GEMM {gemm:.0f}" if bf16 else "") + f"; {net['macs_per_pixel'] / 1e6:.3f} M multiply-adds per input pixel")
    shares = lambda gflops: f"{gflops / sgemm:>8.0%}" + (f" {gflops / gemm:>12.0%}" if bf16 else "")  # noqa: E731
    blank = f"{'':>8}" + (f" {'':>12}" if bf16 else "")
    print(f"{'what':<20} {'out MP/s':>9} {'s/image':>8} {'vs net 256':>10} {'GFLOP/s':>8} {'of SGEMM':>8}"
          + (f" {'of bf16 GEMM':>12}" if bf16 else "") + f" {'peak RSS MiB':>13}")
    print(f"{'network 256 untiled':<20} {net['mp_per_s']:>9.3f} {net['seconds']:>8.3f} {'1.00':>10} "
          f"{net['gflops']:>8.0f} {shares(net['gflops'])} {net['peak_rss_mib']:>13.0f}")
    for size in args.sizes:
        r = child("msrgan", size)
        gflops = r["mp_per_s"] / net["mp_per_s"] * net["gflops"] * r["orientations"]
        print(f"{'msrgan %dx%d' % (size, size):<20} {r['mp_per_s']:>9.3f} {r['seconds']:>8.3f} "
              f"{r['mp_per_s'] / net['mp_per_s']:>10.2f} {gflops:>8.0f} {shares(gflops)} {r['peak_rss_mib']:>13.0f}")
        if size <= 1024:
            b = child("bicubic", size)
            print(f"{'bicubic %dx%d' % (size, size):<20} {b['mp_per_s']:>9.3f} {b['seconds']:>8.3f} {'':>10} {'':>8} {blank} "
                  f"{b['peak_rss_mib']:>13.0f}")
    print(f"(msrgan: {r['options']}, {r['layout']} at {size}; peak RSS of a fresh process, Python and torch included)")


if __name__ == "__main__":
    main()
