"""The ``msrgan`` command line: the parser, and calls into the library. Nothing else lives here."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from . import __version__


def cmd_train(args: argparse.Namespace) -> int:
    from .train import load_config, train

    config = load_config(args.config, args.set)
    if args.device:
        config.train.device = args.device
    train(config, args.out, resume=args.resume, progress=not args.quiet, until_step=args.until_step)
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .inference import Upscaler, upscale_file
    from .io import find_images, same_name_tif
    from .modelfile import load_model

    files = find_images(args.inputs)
    names = [same_name_tif(f, args.out).name for f in files]
    clashes = {n for n in names if names.count(n) > 1}
    if clashes:
        raise ValueError(f"several inputs would write the same output name(s) {sorted(clashes)}: upscale them into separate folders")
    upscaler = Upscaler(load_model(args.model), device=args.device, tile=args.tile, precision=args.precision,
                        progress=not args.quiet, ensemble=args.ensemble, match_bins=args.match_bins)
    done = skipped = 0
    for path in tqdm(files, desc="upscaling", unit="image", disable=args.quiet):
        if upscale_file(upscaler, path, same_name_tif(path, args.out), args.channel_axis, args.overwrite):
            done += 1
        else:
            skipped += 1
    print(f"msrgan: upscaled {done} image(s) x{upscaler.scale} into {args.out}"
          + (f"; skipped {skipped} existing (use --overwrite to redo them)" if skipped else ""))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .modelfile import describe, read_metadata, resolve_model

    print(f"file: {resolve_model(args.model)}")
    print(describe(read_metadata(args.model)))
    return 0


def cmd_blend(args: argparse.Namespace) -> int:
    from .modelfile import blend_models, load_model, save_model

    blended = blend_models(load_model(args.adversarial), load_model(args.fidelity), args.weight)
    save_model(args.out, blended.generator, blended.metadata)
    print(f"msrgan: {args.out} = {args.weight:g} x {args.adversarial} + {1 - args.weight:g} x {args.fidelity}")
    return 0


def cmd_set_defaults(args: argparse.Namespace) -> int:
    from .modelfile import load_model, save_model, with_inference_defaults

    model = load_model(args.model)
    was = model.inference
    ensemble = was.ensemble if args.ensemble is None else args.ensemble
    match_bins = was.match_bins if args.match_bins is None else args.match_bins
    model = with_inference_defaults(model, ensemble, match_bins)
    save_model(args.out, model.generator, model.metadata)
    print(f"msrgan: {args.out} = {args.model}, run by default with {ensemble} orientation(s), "
          f"output bins {'matched to the input' if match_bins else 'as the network outputs them'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import DegradationConfig
    from .evaluate import evaluate_images, format_table, summarize, write_csv
    from .inference import Upscaler
    from .io import find_images
    from .modelfile import load_model

    model = load_model(args.model)
    meta = model.metadata.get("degradation", {})
    degradation = DegradationConfig.acquisition(method=args.degradation or meta.get("method", "bin"), scale=model.scale)
    upscaler = Upscaler(model, device=args.device, tile=args.tile, ensemble=args.ensemble, match_bins=args.match_bins)
    rows = evaluate_images(find_images(args.hr), upscaler, degradation, seed=args.seed,
                           channel_axis=args.channel_axis, progress=not args.quiet)
    summary = summarize(rows)
    print(f"{Path(model.source).name}: {degradation.method} x{degradation.scale} degradation; {upscaler.options}")
    print(format_table(summary))
    write_csv(Path(args.csv), rows, summary)
    print(f"msrgan: per-image figures in {args.csv}")
    return 0


def add_inference_options(p: argparse.ArgumentParser, defaults: "tuple[str, str]" = (
        "the model's own: 2 for fidelity, 1 for perceptual", "the model's own: on for fidelity, off for perceptual")) -> None:
    # the choices are modelfile.ENSEMBLES, written out so that building the parser never imports torch
    p.add_argument("--ensemble", type=int, choices=[1, 2, 4, 8],
                   help="upscale in this many orientations and average: slightly more accurate, as many times slower "
                        f"(default: {defaults[0]})")
    p.add_argument("--match-bins", action=argparse.BooleanOptionalAction,
                   help="shift each output block so that binning the output gives the input back: more accurate "
                        f"when the input is a binned image, less when it carries noise the model would remove (default: {defaults[1]})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msrgan", description="mSRGAN super-resolution for microscopy images.")
    parser.add_argument("--version", action="version", version=f"msrgan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (pixel-loss pretraining, then adversarial)")
    p.add_argument("--config", type=Path, help="TOML config (see msrgan_core/configs/); defaults otherwise")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, metrics.csv, model files")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.pretrain_steps=500 (repeatable)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    p.add_argument("--until-step", type=int, metavar="N",
                   help="stop at step N with a checkpoint (continue later with --resume)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("upscale", help="upscale images to OUTDIR/<name>.tif")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", help="model file, or a packaged model: fidelity (default) or perceptual")
    p.add_argument("--tile", type=int, default=0, help="tile edge in input pixels (0 = automatic)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="fp16 on CUDA only")
    p.add_argument("--channel-axis", type=int, choices=[0, -1, 2], help="channel axis of 3-D files that do not say")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist (default: skip them)")
    add_inference_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("evaluate", help="score the model against nearest/bicubic/Lanczos on high-resolution images")
    p.add_argument("--hr", nargs="+", required=True, help="high-resolution image files, folders or globs")
    p.add_argument("--model", help="model file, or a packaged model name (default fidelity)")
    p.add_argument("--degradation", choices=["bin", "bicubic"], help="default: the model's own")
    p.add_argument("--csv", default="msrgan_evaluation.csv", help="where to write per-image figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--channel-axis", type=int, choices=[0, -1, 2])
    add_inference_options(p)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("blend", help="blend an adversarial model with the fidelity model it was trained from")
    p.add_argument("adversarial", help="model file or packaged model name (e.g. perceptual)")
    p.add_argument("fidelity", help="the fidelity model the adversarial one started from")
    p.add_argument("--weight", type=float, required=True,
                   help="share of the adversarial model, 0..1: lower is more accurate, higher has more texture")
    p.add_argument("-o", "--out", type=Path, required=True, help="the blended model file to write")
    p.set_defaults(func=cmd_blend)

    p = sub.add_parser("set-defaults", help="write a copy of a model file that runs by default with these options")
    p.add_argument("model", help="model file or packaged model name")
    p.add_argument("-o", "--out", type=Path, required=True, help="the model file to write")
    add_inference_options(p, defaults=("as the model has it",) * 2)
    p.set_defaults(func=cmd_set_defaults)

    p = sub.add_parser("info", help="print a model file's metadata")
    p.add_argument("model", help="model file or packaged model name")
    p.set_defaults(func=cmd_info)

    try:
        from .headless import add_cellprofiler_commands
    except ImportError:  # pragma: no cover - written alongside the plugin
        pass
    else:
        add_cellprofiler_commands(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .config import ConfigError
    from .features import FeatureError
    from .inference import InferenceError
    from .io import ImageError
    from .modelfile import ModelFileError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    user_errors = (ConfigError, FeatureError, ImageError, InferenceError, ModelFileError, ValueError, FileNotFoundError)
    try:
        from .train import TrainingError

        return args.func(args)
    except (TrainingError,) + user_errors as exc:
        print(f"msrgan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("msrgan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
