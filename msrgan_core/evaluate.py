"""``msrgan evaluate``: degrade high-resolution images, upscale them back, and score each method."""
from __future__ import annotations

import csv
import logging
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .config import DegradationConfig, NormalizationConfig
from .binning import crop_to_multiple
from .degradation import degrade
from .errors import UserError
from .inference import Upscaler
from .io import MIN_EDGE, atomic_write, read_image
from .metrics import BASELINES, high_frequency_ratio, image_metrics, noise_levels, psnr, true_range
from .normalize import denormalize, normalize, percentile_stats
from .options import GRID_READ_NOISE, QUALITY_GRID
from .progress import progress_bar

METHOD_ORDER = ("nearest", "bicubic", "lanczos", "nlm+bicubic", "msrgan")
#: per image and method: PSNR, SSIM, NRMSE (:func:`~msrgan_core.metrics.image_metrics`) and the
#: high-frequency power ratio (1 = as sharp as the truth; above 1 on a noisy input: noise drawn as detail)
METRICS = ("psnr", "ssim", "nrmse", "hf_ratio")
#: a field whose intensities (the normalisation's low to high percentile) span fewer than this many
#: noise levels (scikit-image's ``estimate_sigma``) is blank: there is nothing in it to score a model
#: on, and percentile normalisation would stretch its noise over the whole range. Measured: noise
#: alone spans 5.1-5.3, BBBC039's two fields without nuclei 7.6 and 8.7, and the least of its 134
#: others, of DSB 2018's 451 images and of ExampleHuman's three channels 24.
BLANK_NOISE_SPANS = 15.0

log = logging.getLogger("msrgan")


def grid_degradation(name: str, scale: int = 4, method: str = "bin") -> DegradationConfig:
    """The acquisition a :data:`QUALITY_GRID` cell names, as a fixed degradation."""
    if name not in QUALITY_GRID:
        raise ValueError(f"unknown degradation {name!r}; choose one of {', '.join(QUALITY_GRID)}")
    blur, photons = QUALITY_GRID[name]
    return DegradationConfig.acquisition(method=method, scale=scale, blur=blur, photons=photons,
                                         read_noise=GRID_READ_NOISE if photons else 0.0)


def image_seed(path: "str | Path", seed: int = 0) -> "list[int]":
    """The noise seed of one image: from its name, so a subset draws what the whole set draws."""
    return [seed, zlib.crc32(Path(path).name.encode())]


def low_resolution(hr: np.ndarray, normalization: NormalizationConfig, degradation: DegradationConfig,
                   rng: np.random.Generator, dtype: np.dtype = np.float32) -> np.ndarray:
    """The degraded counterpart of a ``(C, Y, X)`` image, on the image's own intensity scale, as
    float32.

    The degradation works on normalised intensities (its noise model needs them); the result
    is mapped back with the same statistics, as a camera would have recorded it: in the image
    file's ``dtype``, so an integer file's counterpart holds whole counts within that dtype's
    range, as the model will meet it.
    """
    stats = percentile_stats(hr, normalization)
    lr = degrade(normalize(hr, stats), degradation, rng)
    return denormalize(lr, stats, np.dtype(dtype))[0].astype(np.float32)


class BlankField(UserError):
    """A high-resolution image with nothing in it but background and noise (an empty well)."""


def noise_spans(image: np.ndarray, normalization: NormalizationConfig) -> np.ndarray:
    """Per channel of a ``(C, Y, X)`` image, how many noise levels its normalisation's low to high
    percentile span (see :data:`BLANK_NOISE_SPANS`): 0 for a flat channel, infinite for one with
    structure and no noise."""
    flat = image.reshape(image.shape[0], -1).astype(np.float64)
    low, high = np.percentile(flat, [normalization.low, normalization.high], axis=1)
    sigma = noise_levels(image)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(high > low, (high - low) / sigma, 0.0)


def blank_channel(image: np.ndarray, normalization: NormalizationConfig) -> "Optional[tuple[int, float]]":
    """The first blank channel of a ``(C, Y, X)`` image and its span in noise levels (fewer than
    :data:`BLANK_NOISE_SPANS`), or None where every channel has something in it."""
    spans = noise_spans(image, normalization)
    return next(((channel, float(span)) for channel, span in enumerate(spans) if span < BLANK_NOISE_SPANS), None)


def check_not_blank(image: np.ndarray, normalization: NormalizationConfig, source: "str | Path") -> None:
    """Raise :class:`BlankField` if a channel of a ``(C, Y, X)`` image is blank (:func:`blank_channel`)."""
    blank = blank_channel(image, normalization)
    if blank is not None:
        channel, span = blank
        where = f" channel {channel}" if image.shape[0] > 1 else ""
        raise BlankField(f"{source}:{where} a blank field (its intensities span {span:.1f} noise levels, fewer than "
                         f"{BLANK_NOISE_SPANS:g}): nothing to score a model on")


def degraded_pair(path: "str | Path", normalization: NormalizationConfig, degradation: DegradationConfig,
                  seed: int = 0, channel_axis: Optional[int] = None,
                  channel: Optional[int] = None) -> "tuple[np.ndarray, np.ndarray, np.dtype]":
    """A high-resolution image file and its degraded counterpart, as every evaluation makes them.

    Returns ``(hr, lr, dtype)``: the image cropped to a multiple of the degradation's scale as
    float32 ``(C, Y, X)`` (only channel ``channel``, counted from 0, where given), its
    :func:`low_resolution` with noise drawn from the file's name (:func:`image_seed`) and whole
    counts where the file holds them, and the file's dtype. Raises :class:`BlankField` for a blank image.
    """
    image, _ = read_image(path, channel_axis=channel_axis)
    smallest = MIN_EDGE * degradation.scale
    if min(image.shape[1:]) < smallest:
        raise UserError(f"{path}: the image is {image.shape[1]} x {image.shape[2]} pixels; scoring a {degradation.scale}x "
                        f"upscaler needs at least {smallest} x {smallest}, so that its low-resolution version is "
                        f"{MIN_EDGE} x {MIN_EDGE}")
    hr = crop_to_multiple(image if channel is None else image[channel:channel + 1], degradation.scale).astype(np.float32)
    check_not_blank(hr, normalization, path)
    lr = low_resolution(hr, normalization, degradation, np.random.default_rng(image_seed(path, seed)), image.dtype)
    return hr, lr, image.dtype


def without_blanks(items: Sequence, make: Callable[[object], Tuple[Path, np.ndarray, np.ndarray, np.dtype]], desc: str,
                   progress: bool = True, also: Tuple[type, ...] = ()) -> Iterator[Tuple[Path, np.ndarray, np.ndarray, np.dtype]]:
    """``make(item)`` for each item, with a progress bar, leaving out blank fields (empty wells),
    and the items whose ``make`` raises one of ``also`` (pairs that cannot be registered), each
    with a warning; if every one is left out, a :class:`~msrgan_core.errors.UserError` says so."""
    blank = other = 0
    for item in progress_bar(items, desc=desc, unit="image", disable=not progress):
        try:
            pair = make(item)
        except (BlankField, *also) as error:
            log.warning("msrgan: left out %s", error)
            blank += isinstance(error, BlankField)
            other += not isinstance(error, BlankField)
            continue
        yield pair
    if items and blank == len(items):
        raise UserError(f"all {blank} image(s) are blank fields: give high-resolution images with objects in them")
    if items and blank + other == len(items):
        raise UserError(f"none of the {len(items)} image(s) can be used: each was left out above")


def degraded_pairs(paths: Sequence[Path], normalization: NormalizationConfig, degradation: DegradationConfig,
                   seed: int = 0, channel_axis: Optional[int] = None, channel: Optional[int] = None,
                   desc: str = "evaluating", progress: bool = True) -> Iterator[Tuple[Path, np.ndarray, np.ndarray, np.dtype]]:
    """``(path, hr, lr, dtype)`` of :func:`degraded_pair` for each image (:func:`without_blanks`).
    Real pairs of acquisitions come as the same tuples from :func:`msrgan_core.pairs.registered_pairs`."""
    def make(path):
        return (Path(path), *degraded_pair(path, normalization, degradation, seed, channel_axis, channel))

    return without_blanks(paths, make, desc, progress)


def evaluate_images(
    paths: Sequence[Path],
    upscaler: Upscaler,
    degradation: DegradationConfig,
    seed: int = 0,
    channel_axis: Optional[int] = None,
    progress: bool = True,
) -> List[Dict[str, object]]:
    """Per-image, per-method :data:`METRICS` against the high-resolution images, degraded as given."""
    return score_pairs(degraded_pairs(paths, upscaler.model.normalization, degradation, seed, channel_axis,
                                      progress=progress), upscaler, degradation.scale)


def score_pairs(pairs: Iterable[Tuple[Path, np.ndarray, np.ndarray, np.dtype]], upscaler: Upscaler,
                scale: int, pictures: Optional[Path] = None) -> List[Dict[str, object]]:
    """Per-image, per-method :data:`METRICS` of ``(path, hr, lr, dtype)`` pairs; with ``pictures``, a
    PNG per image there (:func:`picture`)."""
    rows = []
    for path, hr, lr, _ in pairs:
        outputs = {name: fn(lr, scale) for name, fn in BASELINES.items()}
        outputs["msrgan"] = upscaler.upscale(lr, source=str(path))
        for method in METHOD_ORDER:
            out = outputs[method]
            hf = float(np.mean([high_frequency_ratio(t, o, scale) for t, o in zip(hr, out)]))
            rows.append({"image": Path(path).name, "method": method, **image_metrics(hr, out), "hf_ratio": hf})
        if pictures is not None:
            picture(pictures / f"{Path(path).stem}.png", hr, lr, outputs, scale)
    return rows


#: the methods :func:`picture` shows beside the input and the truth
PICTURED = ("bicubic", "msrgan")


def picture(destination: Path, hr: np.ndarray, lr: np.ndarray, outputs: Dict[str, np.ndarray], scale: int) -> Path:
    """:func:`~msrgan_core.pictures.side_by_side` of one pair's first channel: input |
    :data:`PICTURED` | truth, each method labelled with its PSNR on the channel shown."""
    from .pictures import side_by_side

    channel = f", channel 1 of {hr.shape[0]}" if hr.shape[0] > 1 else ""
    shown = [(f"{method} {psnr(hr[:1], outputs[method][:1], true_range(hr[:1])):.1f} dB", outputs[method][0])
             for method in PICTURED]
    return side_by_side(destination, lr[0], scale, f"input{channel}", shown, hr[0])


def summarize(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Mean of each of :data:`METRICS` per method, in :data:`METHOD_ORDER`."""
    summary = []
    for method in METHOD_ORDER:
        mine = [r for r in rows if r["method"] == method]
        if mine:
            summary.append({"method": method, "images": len(mine),
                            **{k: float(np.mean([r[k] for r in mine])) for k in METRICS}})
    return summary


def against_baseline(rows: List[Dict[str, object]], method: str = "msrgan", baseline: str = "bicubic") -> str:
    """One line on ``method``'s PSNR over ``baseline``'s image by image: the median, the worst
    image (named) and how many images it loses on; a mean can hide an image made worse."""
    psnr = {(r["image"], r["method"]): float(r["psnr"]) for r in rows}
    gains = sorted((psnr[image, method] - psnr[image, baseline], image) for image, m in psnr if m == method)
    if not gains:
        return ""
    below = sum(gain < 0 for gain, _ in gains)
    worst, name = gains[0]
    return (f"{method} over {baseline}, image by image: median {float(np.median([g for g, _ in gains])):+.2f} dB, "
            f"worst {worst:+.2f} dB ({name}); below {baseline} on {below} of {len(gains)} image(s)")


def format_table(summary: List[Dict[str, object]]) -> str:
    lines = [f"{'method':<11} {'images':>6} {'PSNR (dB)':>10} {'SSIM':>7} {'NRMSE':>7} {'HF ratio':>8}"]
    for r in summary:
        lines.append(f"{r['method']:<11} {r['images']:>6} {r['psnr']:>10.2f} {r['ssim']:>7.4f} {r['nrmse']:>7.4f} "
                     f"{r['hf_ratio']:>8.2f}")
    return "\n".join(lines)


def write_csv(path: Path, rows: List[Dict[str, object]], summary: List[Dict[str, object]]) -> None:
    """Per-image rows, then one ``mean`` row per method."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "method", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
        for r in summary:
            writer.writerow({"image": "mean", "method": r["method"], **{k: r[k] for k in METRICS}})
