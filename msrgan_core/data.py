"""Training data: high-resolution images, well-aware splits, and (low, high) patch pairs.

Patch pairs come from high-resolution images degraded as configured, or, given low-resolution
acquisitions of the same fields (``data.train_lr``), from those real pairs, registered as
``msrgan evaluate --lr`` registers them (:class:`RealPair`).

Batches are drawn by :func:`sample_batch` from a generator seeded by (seed, step, rank), so
a run resumed at step N draws exactly the batches it would have drawn without the stop.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .config import DegradationConfig, NormalizationConfig
from .binning import crop_to_multiple
from .degradation import degrade
from .errors import UserError
from .io import read_image
from .normalize import normalize, percentile_stats
from .pairs import RegistrationError, oriented, registered_pair
from .progress import progress_bar

log = logging.getLogger("msrgan")

#: the high-resolution crop of each validation image (pixels), to keep evaluation quick
VAL_CROP = 256


@dataclass
class Split:
    """Which files train and which validate, and how the split was made (``well`` or ``file``)."""

    train: List[Path]
    val: List[Path]
    by: str
    val_groups: List[str]


#: folders above a file searched for its well when its name does not say (a plate saved one folder per well)
WELL_FOLDERS = 2


def well_of(path: Path, pattern: "re.Pattern[str]") -> Optional[str]:
    """The well named in a file name, or else in the name of its folder or the one above
    (:data:`WELL_FOLDERS`): the regex's group ``well``, or its first group."""
    path = Path(path)
    names = [path.name] + [folder.name for folder in list(path.parents)[:WELL_FOLDERS]]
    match = next(filter(None, (pattern.search(name) for name in names)), None)
    if not match:
        return None
    if "well" in pattern.groupindex:
        return match.group("well")
    return match.group(1) if pattern.groups else match.group(0)


def group_name(path: Path, pattern: "Optional[re.Pattern[str]]") -> str:
    """``well <name>`` for a file whose name names its well, else the file's own name."""
    well = well_of(path, pattern) if pattern else None
    return f"well {well}" if well is not None else Path(path).name


def split_files(paths: Sequence[Path], well_regex: Optional[str], val_fraction: float, seed: int) -> Split:
    """Hold out ``val_fraction`` of the wells and of the files, chosen reproducibly from ``seed``.

    A file whose name matches ``well_regex`` belongs to its well, so all fields of one well
    fall on the same side and neighbouring fields never leak; any other file stands alone.
    Wells and lone files are held out in the same proportion, so a mix of a plate (split by
    well) and loose images (split by file) is split fairly on both sides.
    """
    paths = sorted(Path(p) for p in paths)
    pattern = re.compile(well_regex) if well_regex else None
    groups = {}
    for p in paths:
        groups[p] = group_name(p, pattern)
    wells = sorted({g for g in groups.values() if g.startswith("well ")})
    singles = sorted({g for g in groups.values() if not g.startswith("well ")})
    if pattern is not None and not wells and paths:
        log.warning("msrgan: data.well_regex %r names the well of none of the %d files (nor their folders): they are "
                    "split one by one, and fields of one well may fall on both sides (set data.well_regex for your file "
                    "names)", well_regex, len(paths))
    rng = np.random.default_rng(seed)
    held_out = set()
    for names in (wells, singles):
        n_val = int(round(val_fraction * len(names)))
        if val_fraction > 0 and len(names) > 1:
            n_val = min(max(n_val, 1), len(names) - 1)
        held_out |= set(rng.permutation(names)[:n_val].tolist()) if n_val else set()
    if held_out and held_out == set(groups.values()):  # one well and one file, say: something must train
        held_out.discard(max(held_out))
    if val_fraction > 0 and not held_out and paths:
        log.warning("msrgan: nothing is held out for validation (%d file(s), %s), so the run's figures will not "
                    "say how the model does on images it did not train on", len(paths),
                    "one well" if wells else "one image")
    by = "well" if wells and not singles else "file" if not wells else "well and file"
    train = [p for p in paths if groups[p] not in held_out]
    val = [p for p in paths if groups[p] in held_out]
    return Split(train=train, val=val, by=by, val_groups=sorted(held_out))


class DataError(UserError, ValueError):
    """Training images a run cannot use: too small, or with channels the model does not take."""


def spread(items: list, count: int) -> list:
    """At most ``count`` items, evenly spaced through ``items`` (so every source is represented)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def model_channels(channels: int, in_channels: int, source: "str | Path") -> List[slice]:
    """The channel groups of a ``channels``-channel image that each make one training image for a
    model of ``in_channels``: every channel alone for a one-channel model, else all of them."""
    if in_channels == 1:
        return [slice(c, c + 1) for c in range(channels)]
    if channels != in_channels:
        raise DataError(f"{source}: has {channels} channels but the model takes {in_channels}: train on images with "
                        f"{in_channels} channels, or set generator.in_channels (and out_channels) to {channels}")
    return [slice(None)]


#: what to do when every image of a role is too small: a training image gives patches of
#: ``train.patch_size``, a validation image is scored whole and needs 8 x the scale
TOO_SMALL_ADVICE = {"training": "use larger images or a smaller train.patch_size",
                    "validation": "add larger images (another train.seed holds out others)"}


def load_images(
    paths: Sequence[Path],
    normalization: NormalizationConfig,
    in_channels: int,
    min_size: int,
    channel_axis: Optional[int] = None,
    progress: bool = False,
    role: str = "training",
) -> List[np.ndarray]:
    """Read and normalise images to float32 ``(C, Y, X)`` with ``C == in_channels``.

    With a one-channel model, each channel of a multi-channel file becomes its own image.
    Images smaller than ``min_size`` are left out with a warning; if none is left, the error
    speaks of them in their ``role`` (:data:`TOO_SMALL_ADVICE`).
    """
    images = []
    for path in progress_bar(paths, desc="loading", unit="image", disable=not progress, leave=False):
        image, _ = read_image(path, channel_axis=channel_axis)
        if min(image.shape[1:]) < min_size:
            log.warning("msrgan: %s is smaller than %d pixels: left out", path, min_size)
            continue
        for channels in model_channels(image.shape[0], in_channels, path):
            plane = image[channels]
            images.append(normalize(plane, percentile_stats(plane, normalization)))
    if not images:
        raise DataError(f"no usable {role} images among {len(paths)}: each needs at least {min_size} x {min_size} "
                        f"pixels; {TOO_SMALL_ADVICE[role]}")
    return images


@dataclass(frozen=True)
class RealPair:
    """One field acquired at both resolutions, registered and normalised alike: ``lr`` is
    ``(C, y, x)``, ``hr`` ``(C, scale y, scale x)``, pixel ``i`` of ``lr`` over block ``i`` of ``hr``."""

    lr: np.ndarray
    hr: np.ndarray

    @property
    def shape(self) -> Tuple[int, ...]:  # what sampling weighs and crops by: the truth's
        return self.hr.shape


def load_pairs(
    pairs: Sequence[Tuple[Path, Path]],
    normalization: NormalizationConfig,
    in_channels: int,
    scale: int,
    min_size: int,
    channel_axis: Optional[int] = None,
    progress: bool = False,
    role: str = "training",
) -> List[RealPair]:
    """Register ``(low, high)`` resolution files (:func:`~msrgan_core.pairs.registered_pair`) and
    normalise both by the high-resolution image's statistics, as :func:`load_images` normalises.

    Blank fields, pairs that cannot be registered or do not agree once registered (another
    field: they would teach the network wrong answers) and pairs sharing less than ``min_size``
    high-resolution pixels are left out, each with a warning naming its files, as evaluation
    leaves them out.
    """
    from .evaluate import BlankField

    found, used = [], 0
    for lr_path, hr_path in progress_bar(pairs, desc="registering", unit="pair", disable=not progress, leave=False):
        try:
            hr, lr, _ = registered_pair(lr_path, hr_path, normalization, scale, channel_axis, log_level=logging.DEBUG)
        except (BlankField, RegistrationError) as error:
            log.warning("msrgan: left out %s", error)
            continue
        if min(hr.shape[1:]) < min_size:
            log.warning("msrgan: %s and %s share fewer than %d pixels across: left out", lr_path, hr_path, min_size)
            continue
        used += 1
        for channels in model_channels(hr.shape[0], in_channels, hr_path):
            stats = percentile_stats(hr[channels], normalization)  # one scale for both: the truth's
            found.append(RealPair(lr=normalize(lr[channels], stats), hr=normalize(hr[channels], stats)))
    if not found:
        raise DataError(f"no usable {role} pairs among {len(pairs)}: each must share at least {min_size} x {min_size} "
                        f"high-resolution pixels and not be blank; {TOO_SMALL_ADVICE[role]}")
    log.info("msrgan: %d pair(s) registered (msrgan -v train ... lists what was found for each)", used)
    return found


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator, step: int = 1) -> Tuple[int, int, int, bool]:
    """Where to cut a ``size`` x ``size`` patch and how to turn it: ``(y, x, quarter turns, mirrored)``,
    the corner a multiple of ``step``; of two random candidates, the one with more signal.

    Screening fields are mostly background; preferring the brighter crop shows the network
    more nuclei without excluding background.
    """
    best, best_mean = (0, 0), -np.inf
    for _ in range(2):
        y = step * int(rng.integers(0, (image.shape[1] - size) // step + 1))
        x = step * int(rng.integers(0, (image.shape[2] - size) // step + 1))
        mean = image[:, y:y + size, x:x + size].mean()
        if mean > best_mean:
            best, best_mean = (y, x), mean
    mirrored = bool(rng.random() < 0.5)
    return best[0], best[1], int(rng.integers(0, 4)), mirrored


def cut(image: np.ndarray, size: int, y: int, x: int, turns: int, mirrored: bool) -> np.ndarray:
    """The ``(C, size, size)`` patch of :func:`random_crop`'s choice, turned and mirrored."""
    return np.ascontiguousarray(oriented(image[:, y:y + size, x:x + size], turns, mirrored))


def sample_batch(
    images: "Sequence[np.ndarray | RealPair]",
    batch_size: int,
    patch_size: int,
    degradation: DegradationConfig,
    rng: np.random.Generator,
) -> Tuple[np.ndarray, np.ndarray]:
    """A batch of (low, high) resolution patch pairs.

    Images are picked in proportion to their area, so a large field counts as much as the same
    area in small images, then cropped at random (see :func:`random_crop`). A high-resolution
    image is degraded as ``degradation`` says; a :class:`RealPair` is cut at the same place in
    both of its images, on the low-resolution pixel grid.

    Returns
    -------
    lr : numpy.ndarray, shape (N, C, patch_size // scale, patch_size // scale)
    hr : numpy.ndarray, shape (N, C, patch_size, patch_size)
    """
    areas = np.array([image.shape[1] * image.shape[2] for image in images], np.float64)
    picks = rng.choice(len(images), size=batch_size, p=areas / areas.sum())  # every pixel equally likely
    k = degradation.scale
    if isinstance(images[0], RealPair):
        lr, hr = [], []
        for i in picks:
            y, x, turns, mirrored = random_crop(images[i].hr, patch_size, rng, step=k)
            lr.append(cut(images[i].lr, patch_size // k, y // k, x // k, turns, mirrored))
            hr.append(cut(images[i].hr, patch_size, y, x, turns, mirrored))
        return np.stack(lr).astype(np.float32), np.stack(hr).astype(np.float32)
    hr = np.stack([cut(images[i], patch_size, *random_crop(images[i], patch_size, rng)) for i in picks])
    lr = np.stack([degrade(patch, degradation, rng) for patch in hr])
    return lr.astype(np.float32), hr.astype(np.float32)


def validation_pairs(
    images: "Sequence[np.ndarray | RealPair]", degradation: DegradationConfig, seed: int, crop: int = VAL_CROP
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Fixed (low, high) pairs: the central ``crop`` of each image, degraded reproducibly (or of
    each real pair, as acquired)."""
    pairs = []
    k = degradation.scale
    for index, image in enumerate(images):
        _, h, w = image.shape
        ch, cw = min(crop, h), min(crop, w)
        y, x = (h - ch) // 2, (w - cw) // 2
        if isinstance(image, RealPair):  # the same area of both, on the low-resolution grid
            y, x, ch, cw = y // k * k, x // k * k, ch // k * k, cw // k * k
            pairs.append((np.ascontiguousarray(image.lr[:, y // k:(y + ch) // k, x // k:(x + cw) // k]),
                          np.ascontiguousarray(image.hr[:, y:y + ch, x:x + cw])))
            continue
        hr = crop_to_multiple(image[:, y:y + ch, x:x + cw], k)
        lr = degrade(hr, degradation, np.random.default_rng([seed, index]))
        pairs.append((lr, np.ascontiguousarray(hr)))
    return pairs
