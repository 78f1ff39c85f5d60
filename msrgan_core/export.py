"""A model as a bioimage.io model package (spec 0.5), for ilastik, deepImageJ, bioimageio.core and the
bioimage.io model zoo: ``msrgan export MODEL --bioimageio OUT.zip``.

The package holds the network twice, as TorchScript (traced) and as ONNX (``torch.onnx``'s
``torch.export``-based exporter), a test input (a synthetic low-magnification field of nuclei, or
the caller's own image) with the output the network gives for it, a cover image, a README made
from the model file's own metadata, and the model file itself. The description is built and
checked with ``bioimageio.spec``; the package is then tested with ``bioimageio.core``, which runs
both weight formats on the test input and on inputs of other sizes; only a package that passes
is written to ``OUT``.

What the package describes is the network alone: the input is normalised by the model's
percentiles (``scale_range`` per image), and the output is left on that normalised scale. msrgan's
own inference options (orientation ensembles, matched bins, the uncertainty image) are not part of it.

Needs the optional extra: ``pip install 'msrgan[bioimageio]'``. Nothing here imports it (or ONNX)
before :func:`export_bioimageio` runs.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from .batch import check_output_file
from .binning import bin_mean
from .errors import UserError
from .io import atomic_write
from .modelcard import InferenceDefaults, ModelCard, describe_degradation
from .modelfile import LoadedModel

log = logging.getLogger("msrgan")

#: what ``pip install 'msrgan[bioimageio]'`` brings: import name -> what to tell the user
EXTRA_MODULES = {"bioimageio.spec": "bioimageio.spec", "bioimageio.core": "bioimageio.core", "onnx": "onnx",
                 "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}
INSTALL_EXTRA = "pip install 'msrgan[bioimageio]'"
#: the test input's edge, in input (low-resolution) pixels
SAMPLE_EDGE = 64
#: the smallest input edge the package declares (more when the halo needs it)
MIN_INPUT_EDGE = 32
#: ``scale_range``'s epsilon: the test output is computed with the very same mapping
SCALE_RANGE_EPS = 1e-6

SRGAN = ("Ledig C, Theis L, Huszar F, et al. (2017) Photo-realistic single image super-resolution using a "
         "generative adversarial network. CVPR 2017.", "10.1109/CVPR.2017.19")
ESPCN = ("Shi W, Caballero J, Huszar F, et al. (2016) Real-time single image and video super-resolution using an "
         "efficient sub-pixel convolutional neural network. CVPR 2016 (the compact network's sub-pixel tail).",
         "10.1109/CVPR.2016.207")
#: training data named in a model's metadata (``training.data``) -> its citation
DATA_CITATIONS = (
    (("BBBC039",), "Caicedo JC, Roth J, Goodman A, et al. (2019) Evaluation of deep learning strategies for nucleus "
                   "segmentation in fluorescence images. Cytometry Part A 95(9):952-965 (BBBC039).",
     "10.1002/cyto.a.23863"),
    (("Data Science Bowl 2018", "BBBC038", "DSB2018"),
     "Caicedo JC, Goodman A, Karhohs KW, et al. (2019) Nucleus segmentation across imaging experiments: the 2018 "
     "Data Science Bowl. Nature Methods 16:1247-1253 (BBBC038).", "10.1038/s41592-019-0612-7"),
    (("BBBC",), "Ljosa V, Sokolnicki KL, Carpenter AE (2012) Annotated high-throughput microscopy image sets for "
                "validation. Nature Methods 9:637 (the Broad Bioimage Benchmark Collection).", "10.1038/nmeth.2083"),
)


class MissingExtraError(UserError, ImportError):
    """The bioimage.io export needs packages this Python lacks."""


class ExportError(UserError, RuntimeError):
    """The model cannot be exported, or the package made from it did not pass bioimage.io's checks."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_bioimageio` wrote, and how the package fared.

    ``status`` is ``bioimageio.core``'s verdict (``"passed"``); ``onnx_max_error`` the largest
    difference between the ONNX and the PyTorch outputs on the test input, as a fraction of the
    output's range.
    """

    path: Path
    status: str
    onnx_max_error: float
    summary: str


def require_extra() -> None:
    """Raise a :class:`MissingExtraError` naming what to install unless the bioimageio extra is here."""
    missing = []
    for module, package in EXTRA_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None
            found = False
        if not found:
            missing.append(package)
    if missing:
        raise MissingExtraError(f"the bioimage.io export needs {', '.join(missing)}, which this Python lacks: "
                                f"{INSTALL_EXTRA}")


def export_bioimageio(model: LoadedModel, out: "str | Path", sample: Optional[np.ndarray] = None,
                      overwrite: bool = False) -> ExportResult:
    """Write ``model`` as a bioimage.io model package ``out`` (a ``.zip``), tested before it is written.

    Parameters
    ----------
    model
        A single-channel model (:func:`msrgan_core.modelfile.load_model`).
    out
        The package to write; an existing file is an error unless ``overwrite``.
    sample
        A low-resolution ``(Y, X)`` or ``(1, Y, X)`` image of at least the package's smallest input
        to take the test input from (its central ``SAMPLE_EDGE`` pixels); default: a synthetic field
        of nuclei (:func:`nuclei_field`), binned by the model's scale.

    Raises
    ------
    MissingExtraError
        The bioimageio extra is not installed.
    ExportError
        A model bioimage.io cannot describe, a sample too small, or a package that failed validation
        or ``bioimageio.core``'s test (nothing is written then).
    """
    out = check_output_file(out, ".zip", overwrite)
    require_extra()
    card = model.card
    g = card.generator
    if g.in_channels != 1 or g.out_channels != 1:
        raise ExportError(f"{card.source}: the bioimage.io export takes single-channel models; this one has "
                          f"{g.in_channels} channel(s) in and {g.out_channels} out")
    radius = model.influence_radius
    min_edge = max(MIN_INPUT_EDGE, 2 * radius + 2)  # a tile of min_edge keeps a few pixels inside its halo
    if card.inference != InferenceDefaults():
        log.warning("msrgan export: %s runs by default with %s; the package runs the network alone, once (its README "
                    "says so)", Path(card.source).name, card.inference.describe())
    test_input = _test_input(sample, min_edge, card.scale)
    normalized = _scale_range(test_input, card)
    generator = model.generator

    with tempfile.TemporaryDirectory(prefix="msrgan-bioimageio-") as folder:
        work = Path(folder)
        test_output = _run(generator, normalized)
        _write_tensors(test_input, test_output, work)
        log.info("msrgan export: tracing the network (TorchScript) and exporting it to ONNX")
        _write_torchscript(generator, torch.from_numpy(normalized), work / "weights.pt")
        opset = _write_onnx(generator, torch.from_numpy(normalized), work / "weights.onnx")
        onnx_error = _onnx_error(work / "weights.onnx", normalized, test_output)
        _write_cover(normalized, test_output, card.scale, work / "cover.png")
        (work / "README.md").write_text(readme(card, radius, min_edge), encoding="utf-8")
        attachments = []
        if Path(card.source).is_file():  # the model file itself, for msrgan (a blend in memory has none)
            attachments.append(work / f"msrgan_{Path(card.source).name}")
            shutil.copyfile(card.source, attachments[-1])
        descr = describe_package(card, work, radius=radius, min_edge=min_edge, opset=opset, attachments=attachments,
                                 parameters=sum(p.numel() for p in generator.parameters()))
        package = work / out.name
        log.info("msrgan export: validating the package (bioimageio.spec) and testing it (bioimageio.core)")
        status, summary = _package_and_test(descr, package)
        with atomic_write(out) as tmp:
            shutil.copyfile(package, tmp)
    return ExportResult(path=out, status=status, onnx_max_error=onnx_error, summary=summary)


# --- the test input and output -----------------------------------------------------------------

def nuclei_field(edge: int, seed: int = 0) -> np.ndarray:
    """A synthetic high-resolution ``(edge, edge)`` float32 field of nuclei, in photon counts.

    Overlapping ellipses of 5-13 pixels' half-axes with textured chromatin and soft edges, on a
    background of 100 counts, with shot noise: what a 20x-40x Hoechst field looks like, made with
    ``seed`` and nothing downloaded.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:edge, :edge].astype(np.float64)
    mask = np.zeros((edge, edge))
    for _ in range(max(1, edge * edge // 1400)):
        cy, cx = rng.uniform(0, edge, 2)
        a, b = rng.uniform(7, 13), rng.uniform(5, 10)
        t = rng.uniform(0, math.pi)
        u = ((xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)) / a
        v = (-(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)) / b
        mask += rng.uniform(0.5, 1.0) * (u * u + v * v <= 1.0)
    texture = ndimage.gaussian_filter(rng.random((edge, edge)), 1.5)
    texture = 0.7 + 0.6 * (texture - texture.min()) / (texture.max() - texture.min())
    signal = ndimage.gaussian_filter(np.minimum(mask, 1.5) * texture, 1.2)
    return rng.poisson(100.0 + 2500.0 * signal).astype(np.float32)


def _test_input(sample: Optional[np.ndarray], min_edge: int, scale: int) -> np.ndarray:
    """The ``(1, 1, Y, X)`` float32 test input: the centre of ``sample``, or a :func:`nuclei_field` binned
    ``scale`` x ``scale``, ``SAMPLE_EDGE`` pixels (or ``min_edge``, if more) on a side."""
    edge = max(min_edge, SAMPLE_EDGE)
    if sample is None:
        sample = bin_mean(nuclei_field(scale * edge)[None], scale)[0]
    sample = np.asarray(sample)
    if sample.ndim == 3 and sample.shape[0] == 1:
        sample = sample[0]
    if sample.ndim != 2:
        raise ExportError(f"the sample image must be one 2-D channel, got an array of shape {sample.shape}")
    if min(sample.shape) < min_edge:
        raise ExportError(f"the sample image ({sample.shape[0]} x {sample.shape[1]}) is smaller than the "
                          f"package's smallest input, {min_edge} x {min_edge} pixels")
    ey, ex = min(edge, sample.shape[0]), min(edge, sample.shape[1])
    y0, x0 = (sample.shape[0] - ey) // 2, (sample.shape[1] - ex) // 2
    return np.ascontiguousarray(sample[y0:y0 + ey, x0:x0 + ex], dtype=np.float32)[None, None]


def _scale_range(image: np.ndarray, card: ModelCard) -> np.ndarray:
    """bioimage.io's ``scale_range`` preprocessing of a ``(1, 1, Y, X)`` image, with msrgan's percentiles.

    An image whose percentiles coincide (nearly all one value: sparse beads, an empty centre) is
    refused: msrgan then normalises by the brightest pixel, which ``scale_range`` cannot.
    """
    # as percentile_stats computes them (in float64, every pixel of so small an image), without its fallback
    low, high = np.percentile(image.astype(np.float64), [card.normalization.low, card.normalization.high])
    if high <= low:
        raise ExportError(f"the sample's centre ({image.shape[2]} x {image.shape[3]} pixels) is nearly all one value "
                          f"(its {card.normalization.low:g}th and {card.normalization.high:g}th percentiles are both {low:g}): "
                          "bioimage.io's scale_range cannot normalise it; give a --sample with objects across its centre")
    low, high = np.float32(low), np.float32(high)
    return ((image - low) / (high - low + np.float32(SCALE_RANGE_EPS))).astype(np.float32)


@torch.no_grad()
def _run(generator: torch.nn.Module, normalized: np.ndarray) -> np.ndarray:
    return generator(torch.from_numpy(normalized)).numpy()


def _write_tensors(test_input: np.ndarray, test_output: np.ndarray, work: Path) -> None:
    """The test tensors (``.npy``, what bioimageio.core reproduces) and sample images (2-D TIFF, for people)."""
    import tifffile

    for name, tensor in (("input", test_input), ("output", test_output)):
        np.save(work / f"test_{name}.npy", tensor)
        tifffile.imwrite(work / f"sample_{name}.tif", tensor[0, 0])


# --- the weights -------------------------------------------------------------------------------

def _write_torchscript(generator: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace ``generator`` and check the trace on an input of another size (nothing may be baked in)."""
    with warnings.catch_warnings():
        # torch 2.13 deprecates tracing in favour of torch.export; bioimage.io's "torchscript" weights are traces
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit\.trace")
        # SRResNet's folded tail kernel is built from the kernel's size in Python: a constant, as the tracer warns;
        # whatever else a trace bakes in, the check below on another input size finds
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(generator, example, check_trace=False)
    other = example[..., : example.shape[-2] - 3, : example.shape[-1] - 5].contiguous()
    with torch.no_grad():
        error = float((traced(other) - generator(other)).abs().max())
    if not error < 1e-5:
        raise ExportError(f"the traced network differs from the network by {error:.3g} on a {tuple(other.shape)} "
                          "input: this architecture cannot be traced for any input size")
    torch.jit.save(traced, str(path))


def _write_onnx(generator: torch.nn.Module, example: torch.Tensor, path: Path) -> int:
    """Export ``generator`` to one ONNX file with dynamic batch, Y and X; return its opset."""
    import onnx

    dim = torch.export.Dim
    # the exporter lists the torchvision operators it skips (no msrgan network has one), and its graph
    # optimiser logs each pass at INFO: the command line's INFO level would print them all
    with _quiet("torch.onnx", "onnxscript", "onnx_ir"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec")  # torch's own, internal
        program = torch.onnx.export(generator, (example,), dynamo=True, verbose=False, input_names=["input"],
                                    output_names=["output"],
                                    dynamic_shapes=({0: dim("batch"), 2: dim("y"), 3: dim("x")},))
    program.save(str(path), external_data=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    return next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Only errors from these loggers (and their children) while the block runs."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _onnx_error(path: Path, normalized: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference of onnxruntime's output from PyTorch's, as a fraction of PyTorch's range."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {session.get_inputs()[0].name: normalized})
    span = float(expected.max() - expected.min()) or 1.0
    return float(np.abs(result - expected).max()) / span


# --- the cover and the README ------------------------------------------------------------------

def _write_cover(normalized: np.ndarray, test_output: np.ndarray, scale: int, path: Path) -> None:
    """``input (nearest-neighbour, scale x) | output``, both on the normalised scale, as an 8-bit PNG."""
    import imageio.v3 as iio

    left = np.repeat(np.repeat(normalized[0, 0], scale, axis=0), scale, axis=1)
    right = test_output[0, 0]
    gap = np.ones((left.shape[0], max(2, left.shape[1] // 64)), dtype=np.float32)
    both = np.concatenate([left, gap, right], axis=1)
    iio.imwrite(path, np.rint(255 * np.clip(both, 0.0, 1.0)).astype(np.uint8))


def readme(card: ModelCard, radius: int, min_edge: int) -> str:
    """The package's README.md: what the model is for, its inputs, figures, limits and origin.

    ``radius`` is the influence radius, ``min_edge`` the smallest input edge, in input pixels.
    """
    from . import __version__

    meta = card.metadata
    g, norm = card.generator, card.normalization
    trained = meta.get("training", {})
    figures = meta.get("validation") or {}
    lines = [f"# msrgan {meta.get('name', Path(card.source).stem)}: {g.scale}x super-resolution of fluorescence images",
             "",
             f"This network upscales a low-magnification, single-channel fluorescence image (such as a "
             f"Hoechst or DAPI nuclear stain from a high-content screen) {g.scale}x, so that nuclei can be "
             f"segmented and measured as at a higher magnification. It is an msrgan model "
             f"(SRGAN-style, Ledig et al. 2017); msrgan {__version__} wrote this package.",
             ""]
    if meta.get("description"):
        lines += [meta["description"], ""]
    lines += ["## Inputs it is made for", ""]
    if trained.get("data"):
        lines.append(f"- Trained on: {trained['data']}.")
    degradation = meta.get("degradation")
    if isinstance(degradation, dict):
        lines.append(f"- Its low-resolution training inputs were simulated from high-resolution images: "
                     f"{describe_degradation(degradation)}. Real low-magnification images that differ much "
                     "from this (other optics, far more noise, other structures) may give plausible-looking "
                     "but wrong detail.")
    elif trained.get("real_pairs"):
        lines.append("- Trained on real pairs: low-resolution acquisitions registered to high-resolution ones of the "
                     "same fields. Other microscopes or acquisitions may give plausible-looking but wrong detail.")
    lines += [f"- One channel, any size of at least {min_edge} x {min_edge} pixels.",
              "",
              "## What runs",
              "",
              f"1. `scale_range`: each image is normalised on its own, percentile {norm.low:g} to 0 and percentile "
              f"{norm.high:g} to 1 (as msrgan does).",
              f"2. The network (TorchScript or ONNX weights; the same function). Its output, {g.scale}x the input "
              "in y and x, stays on that normalised scale: to get the input's intensities back, multiply by "
              f"(p{norm.high:g} - p{norm.low:g}) of the input and add p{norm.low:g}.",
              f"3. Tiles: each output pixel depends on the input within {radius} pixels (measured to 1e-4 of the "
              f"range), so the outputs declare a halo of {radius * g.scale} output pixels: tiles padded by it join "
              "without seams, and away from the image's border a tiled prediction equals the network run on the "
              "whole image.",
              "",
              "At the image's border bioimage.io tools pad the input by mirroring it, and bioimageio.core's "
              "whole-image prediction takes the percentiles of the padded image; msrgan itself runs the network on "
              f"the image as it is. So within {radius} input pixels of the border (by up to 14% of the image's range in the "
              "outermost output pixels of a test field), and slightly (up to 2% of the range on test fields) everywhere "
              "in bioimageio.core's whole-image prediction, the outputs differ from msrgan's own.",
              "",
              "msrgan's own inference options are not part of the package: averaging over orientations, matching "
              "the output's bins to the input and the uncertainty image need the `msrgan` command or its "
              "CellProfiler module (`pip install msrgan`), which run the model file attached here.",
              ""]
    if card.inference != InferenceDefaults():
        lines[-1:] = [f"**The model file attached here runs by default with {card.inference.describe()}; this package "
                      "runs the network alone, once, so its output differs from `msrgan upscale` with that file** "
                      "(`msrgan set-defaults FILE --ensemble 1 --no-match-bins -o ONE_PASS.safetensors` makes a file "
                      "that runs as the package does).", ""]
    if "val_psnr" in figures:
        lines += ["## Validation", "",
                  f"On the training run's held-out pairs ({trained.get('val_files', 'some')} high-resolution images, "
                  f"split from the training images by {trained.get('split_by', 'file')}), degraded as the training "
                  "inputs were:", "",
                  "| | PSNR (dB) | SSIM |", "|---|---|---|",
                  f"| this model | {figures['val_psnr']:.2f} | {_figure(figures.get('val_ssim'))} |",
                  f"| bicubic | {_figure(figures.get('bicubic_psnr'), '.2f')} | {_figure(figures.get('bicubic_ssim'))} |",
                  ""]
    lines += ["## The model file's own account", "", "```", card.summary(), "```", "",
              "The full record is in this package's `config.msrgan` (rdf.yaml) and in the attached "
              "`.safetensors` file (`msrgan info FILE --all`).", ""]
    return "\n".join(lines)


def _figure(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


# --- the description ---------------------------------------------------------------------------

def describe_package(card: ModelCard, work: Path, *, radius: int, min_edge: int, opset: int,
                     attachments: List[Path], parameters: int):
    """The ``bioimageio.spec`` 0.5 ``ModelDescr`` of the files in ``work``, validated as it is built.

    ``work`` holds ``test_input.npy``, ``test_output.npy``, ``weights.pt``, ``weights.onnx``,
    ``cover.png`` and ``README.md``; ``radius`` is the influence radius (input pixels), ``min_edge``
    the smallest input edge, ``opset`` the ONNX file's, ``parameters`` the network's count.
    """
    import pydantic
    from bioimageio.spec.model import v0_5 as bio

    from . import __version__

    meta, g = card.metadata, card.generator
    name = meta.get("name") or Path(card.source).stem
    data = meta.get("training", {}).get("data") or "nuclei images"
    try:
        inputs, outputs = _tensors(bio, card, work, radius=radius, min_edge=min_edge)
        return bio.ModelDescr(
            name=_name(f"msrgan {name} {g.scale}x"),
            description=(f"{g.scale}x super-resolution of low-magnification fluorescence images of nuclei (msrgan "
                         f"model '{name}'), trained on {data}")[:512],
            authors=_authors(),
            cite=_citations(card),
            license=bio.LicenseId(_license()),
            covers=[bio.FileDescr(source=work / "cover.png")],
            documentation=bio.FileDescr(source=work / "README.md"),
            tags=["super-resolution", "image-restoration", "fluorescence-light-microscopy", "high-content-imaging",
                  "2d", "nuclei", "pytorch", "onnx", "torchscript", "msrgan", "srgan"]
                 + (["resnet"] if g.architecture == "srresnet" else []),
            inputs=inputs, outputs=outputs,
            weights=_weights(bio, work, opset),
            attachments=[bio.FileDescr(source=p) for p in attachments],
            version_comment=f"msrgan {__version__}; model created {meta.get('created', 'at an unknown time')}",
            config=_config(bio, card, parameters),
        )
    except pydantic.ValidationError as exc:
        raise ExportError(f"bioimageio.spec rejects the description of {card.source}: {exc}") from None


def _tensors(bio, card: ModelCard, work: Path, *, radius: int, min_edge: int):
    """The input (any y, x of at least ``min_edge``, normalised by ``scale_range``) and the output
    (``scale`` x the input, with a halo of the influence radius)."""
    s = card.scale
    y, x = bio.AxisId("y"), bio.AxisId("x")
    input_id = bio.TensorId("input")

    def space_in(axis):
        return bio.SpaceInputAxis(id=axis, size=bio.ParameterizedSize(min=min_edge, step=1))

    def space_out(axis):  # output pixels are 1/s the size of input pixels: s times as many
        size = bio.SizeReference(tensor_id=input_id, axis_id=axis)
        if radius == 0:
            return bio.SpaceOutputAxis(id=axis, size=size, scale=1 / s)
        return bio.SpaceOutputAxisWithHalo(id=axis, size=size, scale=1 / s, halo=radius * s)

    channel = bio.ChannelAxis(channel_names=[bio.Identifier("fluorescence")])
    normalization = card.normalization
    inputs = [bio.InputTensorDescr(
        id=input_id, description="a low-magnification single-channel fluorescence image",
        axes=[bio.BatchAxis(), channel, space_in(y), space_in(x)],
        test_tensor=bio.FileDescr(source=work / "test_input.npy"),
        sample_tensor=bio.FileDescr(source=work / "sample_input.tif"),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
            axes=[y, x], min_percentile=normalization.low, max_percentile=normalization.high, eps=SCALE_RANGE_EPS))],
    )]
    outputs = [bio.OutputTensorDescr(
        id=bio.TensorId("output"), description=f"the image {s}x upscaled, on the normalised scale of the input",
        axes=[bio.BatchAxis(), channel, space_out(y), space_out(x)],
        test_tensor=bio.FileDescr(source=work / "test_output.npy"),
        sample_tensor=bio.FileDescr(source=work / "sample_output.tif"),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
    )]
    return inputs, outputs


def _weights(bio, work: Path, opset: int):
    """TorchScript (the original) and ONNX (converted from the same network)."""
    from . import __version__

    return bio.WeightsDescr(
        torchscript=bio.TorchscriptWeightsDescr(source=work / "weights.pt",
                                                pytorch_version=bio.Version(torch.__version__.split("+")[0]),
                                                comment=f"traced by msrgan {__version__}"),
        onnx=bio.OnnxWeightsDescr(source=work / "weights.onnx", opset_version=opset, parent="torchscript",
                                  comment="exported with torch.onnx (torch.export), dynamic batch, y and x"),
    )


def _config(bio, card: ModelCard, parameters: int):
    """bioimage.io's model card fields, and the model file's whole record (as plain YAML values) under ``msrgan``."""
    meta, g = card.metadata, card.generator
    degradation = meta.get("degradation")
    simulated = (f"; inputs simulated from high-resolution patches: {describe_degradation(degradation)}"
                 if isinstance(degradation, dict) else "")
    return bio.Config(msrgan=json.loads(json.dumps(meta)), bioimageio=bio.BioimageioConfig(
        architecture_type=f"msrgan {g.architecture} CNN",
        architecture_description=(f"{g.architecture}: {g.n_blocks} blocks of {g.n_features} features, sub-pixel "
                                  f"upsampling {g.scale}x" + (", plus the bicubic upsampling of the input"
                                                               if g.input_skip else "")),
        modality="fluorescence microscopy", target_structure=["nuclei"], task="super-resolution",
        model_parameter_count=parameters,
        training=bio.TrainingDetails(
            training_preprocessing=(f"percentile normalisation ({card.normalization.low:g}-{card.normalization.high:g})"
                                    + simulated),
            training_batch_size=meta.get("training", {}).get("batch_size"),
            loss_function=json.dumps(meta["loss"]) if meta.get("loss") else None),
        bias_risks_limitations=bio.BiasRisksLimitations(limitations=(
            "Trained on simulated low-magnification images of nuclear stains: on other structures, optics or noise "
            "it may invent plausible but wrong detail. Single channel. The output stays on the normalised scale.")),
    ))


def _name(text: str) -> str:
    """A bioimage.io name: letters, digits, ``_+- ()`` and spaces, 5 to 64 characters."""
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "-", text)[:64]


def _citations(card: ModelCard):
    from bioimageio.spec.model import v0_5 as bio

    entries = [SRGAN] + ([ESPCN] if card.generator.architecture == "compact" else [])
    data = str(card.metadata.get("training", {}).get("data", ""))
    entries += [(text, doi) for keys, text, doi in DATA_CITATIONS if any(k.lower() in data.lower() for k in keys)]
    return [bio.CiteEntry(text=text, doi=bio.Doi(doi)) for text, doi in entries]


def _distribution() -> Dict[str, List[str]]:
    """msrgan's installed package metadata (pyproject.toml's, as installed)."""
    import importlib.metadata

    try:
        meta = importlib.metadata.metadata("msrgan")
    except importlib.metadata.PackageNotFoundError:
        return {}
    return {key: meta.get_all(key) or [] for key in ("Author", "Author-email", "License-Expression", "License")}


def _authors():
    """pyproject.toml's authors (``Author``, ``Author-email``); "msrgan developers" where it names none."""
    from email.utils import getaddresses

    from bioimageio.spec.model import v0_5 as bio

    meta = _distribution()
    names = [n.strip() for line in meta.get("Author", []) for n in line.split(",") if n.strip()]
    names += [name or address for name, address in getaddresses(meta.get("Author-email", [])) if name or address]
    return [bio.Author(name=n.replace("/", "-")) for n in dict.fromkeys(names)] or [bio.Author(name="msrgan developers")]


def _license() -> str:
    """pyproject.toml's licence, an SPDX identifier."""
    meta = _distribution()
    found = (meta.get("License-Expression") or meta.get("License") or [None])[0]
    if not found:
        raise ExportError("msrgan's package metadata names no licence: reinstall msrgan (pip install -e .)")
    return found


# --- packaging and testing ---------------------------------------------------------------------

def _package_and_test(descr, package: Path) -> "tuple[str, str]":
    """Zip ``descr`` to ``package`` (``bioimageio.spec`` validates it again from the zip), then run
    ``bioimageio.core``'s test; an :class:`ExportError` lists what failed."""
    from bioimageio.core import test_model
    from bioimageio.spec import save_bioimageio_package

    try:
        save_bioimageio_package(descr, output_path=package)
    except ValueError as exc:
        raise ExportError(f"bioimageio.spec rejected the package: {exc}") from None
    summary = test_model(package, devices=["cpu"])
    if summary.status != "passed":
        failed = [f"{d.name}: {'; '.join(e.msg for e in d.errors)}" for d in summary.details if d.status == "failed"]
        raise ExportError(f"the package failed bioimageio.core's test ({summary.status}): {' | '.join(failed)}")
    return summary.status, summary.format_md()
