"""The ``msrgan`` command line: the parser, and calls into the library. Nothing else lives here.

Building the parser imports no torch: each command imports what it needs when it runs, so
``msrgan --help``, ``msrgan info`` and ``msrgan cellprofiler plugin-dir`` answer at once.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

from . import __version__
from .options import (AS_THE_MODEL_SAYS, CALIBRATION_CELLS, DEFAULT_MODELS, ENSEMBLES, EVALUATION_PICTURES,
                      PRECISIONS, QUALITY_GRID, device_name)

#: the per-image figures of `msrgan evaluate`, unless --csv names another file
EVALUATION_CSV = "msrgan_evaluation.csv"


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    config = load_config(args.config, args.set)
    if args.device:
        config.train.device = args.device
    train(config, args.out, resume=args.resume, progress=not args.quiet, until_step=args.until_step)
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from .batch import BatchReport, check_headers, plan, upscale_files

    jobs, skipped = plan(args.inputs, args.out, args.overwrite, args.uncertainty)  # before the model: fail at once
    jobs, unreadable = check_headers(jobs, args.channel_axis, stop_on_error=args.stop_on_error)
    for source, reason in unreadable:  # at once, before the run: each failure is said once
        print(f"msrgan: failed: {reason}", file=sys.stderr)
    report = BatchReport()
    if jobs:
        from tqdm.auto import tqdm

        upscaler = make_upscaler(args, progress=not args.quiet)
        report = upscale_files(upscaler, jobs, args.channel_axis, stop_on_error=args.stop_on_error,
                               progress=not args.quiet,  # each failure said as it happens, above the progress bar
                               on_failure=lambda reason: tqdm.write(f"msrgan: failed: {reason}", file=sys.stderr))
    report.skipped[:0] = skipped
    report.failed[:0] = unreadable
    print(f"msrgan: into {args.out}: {report.summary()}")
    return 2 if report.failed else 0  # a batch goes on only after the input's or the disk's errors


def make_upscaler(args: argparse.Namespace, progress: bool = False):
    from .inference import Upscaler
    from .modelfile import load_model

    return Upscaler(load_model(args.model), device=args.device, tile=args.tile, precision=args.precision,
                    progress=progress, ensemble=args.ensemble, match_bins=args.match_bins, threads=args.threads)


def cmd_info(args: argparse.Namespace) -> int:
    from .modelcard import describe, read_card

    card = read_card(args.model)
    print(f"file: {card.source}")
    print(describe(card.metadata) if args.all else card.summary() + "\n(the full record: msrgan info --all)")
    return 0


def check_model_output(args: argparse.Namespace, *inputs) -> None:
    """-o of the commands that write a model file, checked before any model loads."""
    from .batch import check_output_file
    from .modelcard import resolve_model

    # a packaged model named by its name is a file too, never to be written over
    check_output_file(args.out, ".safetensors", args.overwrite, [resolve_model(model) for model in inputs])


def cmd_blend(args: argparse.Namespace) -> int:
    from .modelfile import blend_models, load_model, save_model, with_change

    check_model_output(args, args.a, args.b)
    blended = blend_models(load_model(args.a), load_model(args.b), args.weight)
    what = f"blend {args.weight:g} x {Path(args.a).name} + {1 - args.weight:g} x {Path(args.b).name}"
    save_model(args.out, blended.generator, with_change(blended.metadata, what))
    print(f"msrgan: {args.out} = {args.weight:g} x {args.a} + {1 - args.weight:g} x {args.b}")
    return 0


def cmd_set_defaults(args: argparse.Namespace) -> int:
    from .modelfile import load_model, save_model, with_change, with_inference_defaults

    check_model_output(args, args.model)
    model = load_model(args.model)
    chosen = model.inference.overridden(args.ensemble, args.match_bins)
    ensemble, match_bins = chosen.ensemble, chosen.match_bins
    model = with_inference_defaults(model, ensemble, match_bins)
    save_model(args.out, model.generator, with_change(model.metadata, f"set-defaults: {model.inference.describe()}"))
    print(f"msrgan: {args.out} = {args.model}, run by default with {model.inference.describe()}")
    problem = model.card.uncertainty_problem(ensemble, match_bins)
    if problem and model.card.uncertainty_calibrated_for is not None:
        print(f"msrgan: note: {problem}")
    return 0


def readable_images(inputs: List[str], channel_axis: Optional[int]) -> "tuple[list, list]":
    """The image files of ``inputs``, each checked from its header (no pixels): a file msrgan cannot
    take stops the command at once, before any model loads or anything is written; and how many
    channels each holds."""
    from .io import find_images, read_header

    files = find_images(inputs)
    return files, [read_header(path, channel_axis)[0][0] for path in files]


def refuse_made_with_given(option: str, value) -> None:
    """``option`` makes the low-resolution images from --hr; given with --lr, it is an error."""
    if value:
        from .errors import UserError

        raise UserError(f"{option} makes low-resolution images from --hr; with --lr they are given: use one or the other")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibrate, calibrate_on_pairs
    from .data import spread
    from .modelfile import save_model, with_change, with_inference_defaults

    def sample(items: list) -> list:  # --sample N: evenly spread, so every source of the list is represented
        return spread(items, args.sample) if args.sample else items

    files, _ = readable_images(args.hr, args.channel_axis)
    check_model_output(args, args.model)
    if args.lr:
        from .pairs import find_pairs

        refuse_made_with_given("--cells", args.cells)
        pairs = sample(find_pairs(args.lr, files))
        upscaler = make_upscaler(args)
        found = calibrate_on_pairs(upscaler, pairs, args.channel_axis, progress=not args.quiet)
    else:
        upscaler = make_upscaler(args)
        found = calibrate(upscaler, sample(files), args.cells or CALIBRATION_CELLS,
                          channel_axis=args.channel_axis, progress=not args.quiet)
    calibrated = with_inference_defaults(upscaler.model, upscaler.ensemble, upscaler.match_bins)  # as calibrated
    used = found["uncertainty_calibration"]["images"]
    save_model(args.out, calibrated.generator,
               with_change(dict(calibrated.metadata, **found), f"uncertainty calibrated on {used} image(s)"))
    print(f"msrgan: {args.out} = {upscaler.model.source} with its uncertainty image calibrated on {used} image(s): "
          f"the error is {found['uncertainty_scale']:.2f} times the spread over orientations"
          + (f"; it runs by default with {calibrated.inference.describe()}, as calibrated"
             if calibrated.inference != upscaler.model.inference else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .batch import check_output_file, prepare_output_folder
    from .errors import UserError
    from .evaluate import (against_baseline, degraded_pairs, format_table, grid_degradation, score_pairs, summarize,
                           write_csv)
    from .io import atomic_folder, clashes

    files, channels = readable_images(args.hr, args.channel_axis)
    if args.nuclei_channel is not None and not args.features:
        raise UserError("--nuclei-channel picks the channel --features measures: give --features too")
    nuclei = (args.nuclei_channel or 1) - 1 if args.features else None  # the one channel --features measures
    if args.features:
        lacking = [(Path(f).name, n) for f, n in zip(files, channels) if n <= nuclei]
        if lacking:
            raise UserError(f"--nuclei-channel {args.nuclei_channel}: {len(lacking)} image(s) have fewer channels, "
                            f"e.g. {lacking[0][0]} ({lacking[0][1]})")
        several = sum(n > 1 for n in channels)
        if several and args.nuclei_channel is None:
            print(f"msrgan: --features measures the nuclei in channel 1 of each image ({several} of {len(files)} hold "
                  "several): --nuclei-channel N picks another", file=sys.stderr)
    clashing = clashes(Path(f).stem for f in files)
    if clashing:  # figures, pictures and CellProfiler's fields are named after each image
        raise UserError(f"several --hr images share the name(s) {clashing}: their figures and pictures would mix; "
                        "evaluate them one folder at a time")
    if args.features and args.out is None:
        raise UserError("--features needs --out DIR for its images, CSVs and scatter plot")
    if args.lr:
        refuse_made_with_given("--degradation", args.degradation)
    if args.features:
        from .headless import find_cellprofiler

        find_cellprofiler(args.cellprofiler)
    if args.out:  # where it writes, checked before the model loads: it fails at once, not after the work
        prepare_output_folder(args.out)
    if args.features:
        from .measurements import check_features_folder

        check_features_folder(args.out)
    if args.features and args.csv:
        raise UserError("--csv names the table of an evaluation without --features; with --features the tables are "
                        "written into --out (features_summary.csv, features_objects.csv)")
    table = Path(args.csv) if args.csv else (args.out / EVALUATION_CSV if args.out else Path(EVALUATION_CSV))
    if not args.features:
        check_output_file(table, ".csv", overwrite=True)
    upscaler = make_upscaler(args)
    scale = upscaler.scale
    progress, desc = not args.quiet, "upscaling" if args.features else "evaluating"
    if args.lr:
        from .pairs import find_pairs, registered_pairs

        what = "real pairs (--lr)"
        pairs = registered_pairs(find_pairs(args.lr, files), upscaler.model.normalization, scale, args.channel_axis,
                                 channel=nuclei, desc=desc, progress=progress)
    else:
        what = args.degradation or "bin"
        pairs = degraded_pairs(files, upscaler.model.normalization, grid_degradation(what, scale=scale), args.seed,
                               args.channel_axis, channel=nuclei, desc=desc, progress=progress)
    print(f"{upscaler.model.label}: {what} x{scale}; {upscaler.options}")
    if args.features:
        from .measurements import evaluate_features, format_summary, verdicts

        report = evaluate_features(pairs, upscaler, scale, args.out, seed=args.seed, cellprofiler=args.cellprofiler,
                                   name=f"{upscaler.model.label} vs bicubic, {what}")
        print(format_summary(report.summary))
        for line in verdicts(report.summary):
            print(f"note: {line}")
        print("msrgan: " + ", ".join(str(p) for p in report.files))
        return 0
    pictures = args.out / EVALUATION_PICTURES if args.out else None
    with atomic_folder(pictures) if pictures else contextlib.nullcontext() as drawing:  # this run's alone, on success
        rows = score_pairs(pairs, upscaler, scale, drawing)
    summary = summarize(rows)
    print(format_table(summary))
    print(against_baseline(rows))
    write_csv(table, rows, summary)
    print(f"msrgan: per-image figures in {table}")
    if pictures is not None:
        print(f"msrgan: a picture of each image in {pictures} (input | bicubic | msrgan | truth, differences beneath)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .batch import check_output_file
    from .export import export_bioimageio, require_extra

    check_output_file(args.bioimageio, ".zip", args.overwrite)  # before the model loads: these fail at once
    require_extra()
    from .io import read_image
    from .modelfile import load_model

    sample = read_image(args.sample)[0] if args.sample else None
    result = export_bioimageio(load_model(args.model), args.bioimageio, sample=sample, overwrite=args.overwrite)
    print(f"msrgan: {result.path}: bioimage.io model package (TorchScript and ONNX), bioimageio.core test "
          f"{result.status}; ONNX and PyTorch differ by at most {result.onnx_max_error:.1e} of the output's range")
    return 0


def cmd_cellprofiler_run(args: argparse.Namespace) -> int:
    from .headless import SHIPPED_PIPELINES, HeadlessRunError, ImageSetProgress, image_files_under, run_pipeline

    total = args.last - (args.first or 1) + 1 if args.last else None
    progress = ImageSetProgress(sys.stdout.write, total, args.first or 1)
    try:
        result = run_pipeline(
            args.pipeline, args.input, args.output, plugins_dir=args.plugins_dir, first=args.first,
            last=args.last, cellprofiler=args.cellprofiler, timeout=args.timeout,
            echo=progress if args.quiet else (lambda line: (sys.stderr.write(line), progress(line))),
        )
    except HeadlessRunError as exc:
        print(f"msrgan cellprofiler run: {exc}", file=sys.stderr)
        return 1
    names = ", ".join(p.name for p in result.outputs[:6]) + (", ..." if len(result.outputs) > 6 else "")
    print(
        f"CellProfiler ran {result.image_sets} image set(s) in {result.seconds:.0f} s; "
        f"{len(result.outputs)} file(s) written in {Path(args.output)}: {names}"
    )
    if str(args.pipeline) in SHIPPED_PIPELINES and args.first is None and args.last is None:
        found = image_files_under(Path(args.input))  # one image set per DNA image: say what the rule left out
        if found > result.image_sets:
            print(f"msrgan cellprofiler run: note: {found - result.image_sets} of the {found} image files under "
                  f"{args.input} were left out by the pipeline's Images rule, which passes over files named like "
                  "other channels (_w2.._w9, d1/d2, _F/_R.TIF): point -i at the nuclei images alone, or edit a copy "
                  "of the pipeline (msrgan cellprofiler pipelines-dir)", file=sys.stderr)
    if result.newer:
        print(f"msrgan cellprofiler run: note: {result.newer}", file=sys.stderr)
    if result.replaced:  # jobs that share an output folder replace each other's spreadsheets
        shown = ", ".join(p.name for p in result.replaced[:4]) + (", ..." if len(result.replaced) > 4 else "")
        print(f"msrgan cellprofiler run: note: {len(result.replaced)} of them replaced files an earlier run had written "
              f"there ({shown}): give each job its own output folder", file=sys.stderr)
    return 0


def cmd_cellprofiler_install(args: argparse.Namespace) -> int:
    from .headless import HeadlessRunError, install_plugin

    try:
        target = install_plugin(args.dir)
    except (HeadlessRunError, OSError) as exc:
        print(f"msrgan cellprofiler install-plugin: {exc}", file=sys.stderr)
        return 1
    print(f"installed {target}")
    print(f"In CellProfiler: File > Preferences > CellProfiler plugins directory = {target.parent}, then restart.")
    print(f"msrgan must be installed in the Python that runs CellProfiler (this one is {sys.executable}).")
    return 0


def cmd_cellprofiler_plugin_dir(args: argparse.Namespace) -> int:
    from .headless import plugin_dir

    print(plugin_dir())
    return 0


def cmd_cellprofiler_pipelines_dir(args: argparse.Namespace) -> int:
    from .headless import pipelines_dir

    print(pipelines_dir())
    return 0


def at_least(minimum: int):
    """An argparse type: a whole number no smaller than ``minimum``, else a one-line usage error."""
    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return whole_number


def device_argument(text: str) -> str:
    """An argparse type: a device name (:func:`msrgan_core.options.device_name`), else a one-line usage error."""
    try:
        return device_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_overwrite_option(p: argparse.ArgumentParser) -> None:
    """--overwrite of the commands that write one file: without it an existing file is refused before any work."""
    p.add_argument("--overwrite", action="store_true", help="replace the file to write if it exists")


def add_inference_options(p: argparse.ArgumentParser, default: str = AS_THE_MODEL_SAYS) -> None:
    """``--ensemble`` and ``--match-bins``: how each image runs; unset, each model file says."""
    p.add_argument("--ensemble", type=int, choices=ENSEMBLES,
                   help=f"upscale in this many orientations and average: as many times slower (default: {default})")
    p.add_argument("--match-bins", action="store_const", const=True, default=None,
                   help="shift each output block so that binning the output gives the input back: more accurate "
                        f"when the input is a binned image, less when it carries noise the model would remove (default: {default})")
    p.add_argument("--no-match-bins", dest="match_bins", action="store_const", const=False,
                   help="leave the output as the network gives it")


def add_device_options(p: argparse.ArgumentParser, model_option: bool = True) -> None:
    """Where and how the network runs: model (``--model``, unless the command takes it first), device,
    precision, threads, tile."""
    if model_option:
        p.add_argument("--model", help=f"model file, or a packaged model: {', '.join(DEFAULT_MODELS)} (default {DEFAULT_MODELS[0]})")
    p.add_argument("--device", default="auto", type=device_argument,
                   help="auto (a GPU when there is one), cpu, cuda, or cuda:N for the GPU of index N (default: auto)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 where the device computes it (GPUs, CPUs with AVX-512 BF16 or AMX; output that is not finite "
                        "is redone in fp32), else fp32")
    p.add_argument("--threads", type=at_least(1), help="CPU threads (default: the cores this process may use, or OMP_NUM_THREADS if fewer)")
    p.add_argument("--tile", type=at_least(0), default=0, help="tile edge in input pixels, context included (0 = sized to memory: full-width strips on the CPU)")
    add_inference_options(p)


def add_cellprofiler_commands(sub: "argparse._SubParsersAction") -> None:
    """``msrgan cellprofiler run | install-plugin | plugin-dir | pipelines-dir``."""
    parser = sub.add_parser(
        "cellprofiler",
        help="run CellProfiler pipelines headless with the UpscaleMSRGAN module; install the plugin",
        description="CellProfiler 4.2 integration: headless runs that fail when CellProfiler fails, "
        "and the UpscaleMSRGAN plugin file.",
    )
    commands = parser.add_subparsers(dest="cellprofiler_command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run a pipeline headless (cellprofiler -c -r) and check that it really ran",
        description="Run a CellProfiler pipeline headless with the UpscaleMSRGAN plugin. Exits 1 when a "
        "plugin fails to load, a module fails, no image matches, or nothing is written.",
    )
    run.add_argument("pipeline", help="a .cppipe file, or a shipped pipeline: upscale_segment_measure, compare_with_bicubic, "
                                      "flag_uncertain_nuclei, measure_nuclei")
    run.add_argument("-i", "--input", required=True, help="default input folder: the images (searched recursively)")
    run.add_argument("-o", "--output", required=True, help="default output folder (use one per cluster job)")
    run.add_argument("-f", "--first", type=at_least(1), help="first image set to run (1-based)")
    run.add_argument("-l", "--last", type=at_least(1), help="last image set to run (inclusive)")
    run.add_argument("--plugins-dir", help="CellProfiler plugins folder (default: the packaged one)")
    run.add_argument("--cellprofiler", help="CellProfiler executable (default: found beside this Python or on PATH)")
    run.add_argument("--timeout", type=at_least(1), help="stop CellProfiler after this many seconds")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="do not echo CellProfiler's log (one progress line per image set is printed still)")
    run.set_defaults(func=cmd_cellprofiler_run)

    install = commands.add_parser(
        "install-plugin",
        help="copy the UpscaleMSRGAN plugin into a CellProfiler plugins folder",
        description="Copy upscalemsrgan.py into DIR; then set CellProfiler's Preferences > CellProfiler "
        "plugins directory to DIR and restart CellProfiler.",
    )
    install.add_argument("dir", help="the plugins folder (created when missing)")
    install.set_defaults(func=cmd_cellprofiler_install)

    where = commands.add_parser("plugin-dir", help="print the packaged plugin folder")
    where.set_defaults(func=cmd_cellprofiler_plugin_dir)
    shipped = commands.add_parser("pipelines-dir", help="print the folder of the shipped pipelines (to copy or edit one)")
    shipped.set_defaults(func=cmd_cellprofiler_pipelines_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msrgan", description="mSRGAN super-resolution for microscopy images.")
    parser.add_argument("--version", action="version", version=f"msrgan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (pixel-loss pretraining, then adversarial)")
    p.add_argument("--config", type=Path, help="TOML config (see msrgan_core/configs/); defaults otherwise")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, metrics.csv, model files")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.pretrain_steps=500 (repeatable)")
    p.add_argument("--device", type=device_argument, help="auto, cpu, cuda or cuda:N; overrides train.device")
    p.add_argument("--until-step", type=at_least(1), metavar="N",
                   help="stop at step N with a checkpoint (continue later with --resume)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("upscale", help="upscale images to OUTDIR/<name>.tif")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    add_device_options(p)
    p.add_argument("--channel-axis", type=int, choices=[0, -1, 2], help="channel axis of 3-D files that do not say")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist (default: skip them)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write NAME.uncertainty.tif (NAME.uncertainty.ome.tif beside an OME-TIFF): per pixel, "
                        "an estimate of the output's error on its intensity scale (the spread over orientations; "
                        "one more pass per image when the model runs once)")
    p.add_argument("--stop-on-error", action="store_true",
                   help="stop at the first file that fails (default: report it, go on, exit 2 at the end)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("evaluate", help="score the model against classical upscaling on high-resolution images")
    p.add_argument("--hr", nargs="+", required=True, help="high-resolution image files, folders or globs")
    add_device_options(p)
    p.add_argument("--degradation", choices=list(QUALITY_GRID), metavar="ACQUISITION",
                   help="how the low-resolution inputs are made, a cell of benchmarks/quality.py's grid: "
                        f"{', '.join(QUALITY_GRID)} (default bin: 4 x 4 binning; +Nph: shot noise of N photons)")
    p.add_argument("--lr", nargs="+",
                   help="instead of --degradation, real low-resolution acquisitions of the --hr fields (files, "
                        "folders or globs; paired by file name: A01.tif with A01.tif, or with the sites A01_s1.tif, "
                        "A01_s2.tif ... inside it), or one CSV file of pairs (columns lr, hr: paths relative to it): "
                        "each is registered to its partner (offset, pixel size ratio, "
                        "rotation), both are cropped to the area they share, and it is put on the partner's "
                        "intensity scale and shading")
    p.add_argument("--csv", help=f"where to write per-image figures (default: {EVALUATION_CSV} in --out, or here)")
    p.add_argument("--features", action="store_true",
                   help="measure nuclei with CellProfiler (pipelines/measure_nuclei.cppipe) on the high-resolution "
                        "image, msrgan's output, bicubic's and a repeat of the high-resolution image (its own noise drawn "
                        "again), match them by overlap and compare every feature")
    p.add_argument("--out", type=Path, help="folder for what evaluate writes: a picture of each image "
                                             f"({EVALUATION_PICTURES}/NAME.png: input, bicubic, msrgan and the truth side by "
                                             "side) and the per-image CSV, or with --features the images, feature CSVs "
                                             "and scatter plot")
    p.add_argument("--cellprofiler", help="with --features: the CellProfiler executable (default: found beside this Python)")
    p.add_argument("--nuclei-channel", type=at_least(1), metavar="N",
                   help="with --features: the channel that holds the nuclei, 1 for the first (default: 1)")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--channel-axis", type=int, choices=[0, -1, 2])
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="calibrate a model's uncertainty image on high-resolution images (writes a copy)")
    p.add_argument("model", help="model file or packaged model name")
    p.add_argument("--hr", nargs="+", required=True, help="high-resolution image files, folders or globs (held out from training)")
    p.add_argument("-o", "--out", type=Path, required=True, help="the calibrated model file to write")
    add_device_options(p, model_option=False)
    p.add_argument("--sample", type=at_least(0), default=0, metavar="N",
                   help="calibrate on N of the images, evenly spread through the list (default: all)")
    p.add_argument("--cells", nargs="+", choices=list(QUALITY_GRID), metavar="ACQUISITION",
                   help=f"the acquisitions to calibrate on (default: {' '.join(CALIBRATION_CELLS)})")
    p.add_argument("--lr", nargs="+",
                   help="instead of --cells, real low-resolution acquisitions of the --hr fields, paired (by file name "
                        "or a CSV of pairs) and registered as msrgan evaluate --lr does: calibrates on your own microscope")
    p.add_argument("--channel-axis", type=int, choices=[0, -1, 2])
    p.add_argument("-q", "--quiet", action="store_true")
    add_overwrite_option(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("blend", help="interpolate two models weight by weight (e.g. adversarial and fidelity)")
    p.add_argument("a", help="model file or packaged model name (e.g. perceptual)")
    p.add_argument("b", help="a model with the same start (e.g. the fidelity model the first was trained from)")
    p.add_argument("--weight", type=float, required=True,
                   help="share of the first model, 0..1: for adversarial + fidelity, lower is more accurate, higher has more texture")
    p.add_argument("-o", "--out", type=Path, required=True, help="the blended model file to write")
    add_overwrite_option(p)
    p.set_defaults(func=cmd_blend)

    p = sub.add_parser("set-defaults", help="write a copy of a model file that runs by default with these options")
    p.add_argument("model", help="model file or packaged model name")
    p.add_argument("-o", "--out", type=Path, required=True, help="the model file to write")
    add_inference_options(p, default="as the model has it")
    add_overwrite_option(p)
    p.set_defaults(func=cmd_set_defaults)

    p = sub.add_parser("info", help="what a model file says about itself")
    p.add_argument("model", help="model file or packaged model name")
    p.add_argument("--all", action="store_true", help="the full record, every entry of the metadata")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="write a model as a bioimage.io model package (needs msrgan[bioimageio])",
                       description="Write MODEL as a bioimage.io model package (spec 0.5: TorchScript and ONNX weights, "
                                   "test tensors, README), for ilastik, deepImageJ and bioimageio.core. The package "
                                   "is validated and tested first; OUT is written only when it passes. "
                                   "Needs: pip install 'msrgan[bioimageio]'. See docs/bioimageio.md.")
    p.add_argument("model", help="model file or packaged model name")
    p.add_argument("--bioimageio", type=Path, required=True, metavar="OUT.zip", help="the package to write")
    p.add_argument("--sample", type=Path, metavar="IMAGE",
                   help="a low-resolution single-channel image for the package's test input and cover (its "
                        "central pixels; default: a synthetic field of nuclei, binned as the model's inputs are)")
    add_overwrite_option(p)
    p.set_defaults(func=cmd_export)

    add_cellprofiler_commands(sub)
    return parser


def stop_signals_interrupt() -> List[str]:
    """A scheduler's SIGTERM (a time limit, a preemption) and a closed terminal's SIGHUP stop a
    command as Ctrl-C does: its clean-up runs (half-written files removed, queued outputs written,
    a CellProfiler it started stopped), where the signals' default had killed it in its tracks.
    Returns the list that gets the signal's name. (Training takes SIGTERM itself, to stop after
    the step with a checkpoint.) A signal ignored when msrgan started stays ignored (``nohup``
    ignores SIGHUP), and a ``torchrun`` process keeps the defaults its launcher expects."""
    caught: List[str] = []

    def interrupt(signum, frame):
        caught.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    from .device import launched

    if launched().world_size > 1:
        return caught
    for stop in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if stop is not None and signal.getsignal(stop) is not signal.SIG_IGN:
            signal.signal(stop, interrupt)
    return caught


def main(argv: Optional[List[str]] = None) -> int:
    """Run a command; a user's error is one line and exit status 2, msrgan's own one line and 1."""
    from .errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:  # tifffile's notes on files it reads anyway (odd tags, offsets); what msrgan cannot read it says itself
        logging.getLogger("tifffile").setLevel(logging.ERROR)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    stopped_by = stop_signals_interrupt()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        name = stopped_by[0] if stopped_by else "SIGINT"
        print(f"msrgan: interrupted ({name})", file=sys.stderr)
        return 128 + signal.Signals[name].value
    except BrokenPipeError:  # the reader stopped early (msrgan info MODEL | head -1): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit, flushing what is left
        return 1
    except (UserError, OSError) as exc:
        if args.debug:
            raise
        message, _, log = str(exc).partition("\n--- ")  # a CellProfiler run's error quotes its log's end, as lines
        print(f"msrgan: error: {' '.join(message.split())}" + (f"\n--- {log}" if log else ""), file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - reported, with the way to see the traceback
        if args.debug:
            raise
        print(f"msrgan: internal error ({type(exc).__name__}: {' '.join(str(exc).split())}); "
              "rerun with --debug for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
