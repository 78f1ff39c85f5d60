"""Tiled inference: ``Upscaler.upscale()`` an image of any size in bounded memory, without seams.

The image is normalised once, on the whole image. On the CPU (with the automatic tile size) it
goes through the network in full-width strips of rows, each layer keeping the rows the next
strip needs (:mod:`msrgan_core.streaming`), so no context is computed twice. Otherwise (a GPU,
a tile size set, orientations turned by a quarter) it is cut into a grid of tile cores that
partition it; each core is computed with ``margin`` input pixels of context on every side and
only the core's output is kept. The margin is the generator's measured influence radius (input
farther away moves no output pixel by more than 1e-4 of the range, :func:`~msrgan_core.models.
influence_radius`) plus :data:`MARGIN_SPARE`, so the tiled result equals the untiled one within
that bound. Either way there are no blending weights and no float copy of the whole output:
each strip or core is averaged over orientations, matched to its input bins, mapped back to the
image's intensities and cast to its dtype on the device, then written into the output. Tiles of
one shape go through the network together, as one batch, up to the memory budget.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from .binning import match_bins
from .config import GeneratorConfig
from .device import cgroup_memory_room, cpu_has_bf16, describe_device, resolve_device, set_threads, use_cpu
from .errors import UserError
from .io import MAX_UNNAMED_CHANNELS, ImageError, read_image, to_cyx, write_image
from .modelfile import LoadedModel, load_model
from .models import forward_bytes_per_pixel, forward_fixed_bytes, receptive_radius
from .options import ENSEMBLES, PRECISIONS, uncertainty_orientation_count
from .normalize import TORCH_DTYPES, Stats, channel_range, denormalize, normalize, percentile_stats, stats_tensors
from .progress import progress_bar

log = logging.getLogger("msrgan")

MIB = 1 << 20
#: activation memory a strip or a tile batch may take when ``tile=0`` (automatic), per device
#: type. On the CPU the budget is set by memory, not speed: with freed memory reused
#: (:func:`~msrgan_core.device.reuse_freed_memory`) the compact 12 x 48 network ran as fast on
#: 1024-pixel inputs as on 256-pixel ones (6.7 and 5.3 output MP/s, 2 cores of an Intel Xeon), so
#: a 512 x 512 field is one strip and a 2048 x 2048 one strips of 186 rows, within 1 GiB of peak
#: memory. On a GPU, at most CUDA_MEMORY_SHARE of the memory free when the upscaler is made.
TILE_MEMORY = {"cpu": 256 * MIB, "cuda": 8192 * MIB}
CUDA_MEMORY_SHARE = 0.5
#: a tile's core is at least this many margins wide, whatever the budget: context stays a small cost
MIN_CORE_MARGINS = 8
#: context beyond the measured influence radius, for inputs brighter than the test images (but never
#: beyond the receptive radius)
MARGIN_SPARE = 2
#: the smallest tile core (input pixels) worth its margins
MIN_CORE = 16
#: an output may take at most this share of the memory available when its image arrives
MEMORY_SHARE = 0.8
#: at most this many halvings of the tile after CUDA out-of-memory, then the CPU takes over
MAX_TILE_HALVINGS = 4
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class InferenceError(UserError, ValueError):
    """An image the model cannot take (wrong channel count, wrong shape), or an output that is not finite."""


# --- tiling: pure functions ---------------------------------------------------------------

def axis_tiles(length: int, core: int, margin: int) -> List[Tuple[int, int, int, int]]:
    """``(source start, source stop, core start, core stop)`` of tiles along one axis.

    The cores partition ``[0, length)`` into equal parts of at most ``core`` pixels; each source
    adds ``margin`` pixels of context on either side, clipped to the axis.
    """
    count = max(1, math.ceil(length / core))
    bounds = [i * length // count for i in range(count + 1)]
    return [(max(0, start - margin), min(length, stop + margin), start, stop) for start, stop in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class Tile:
    """One tile: ``source`` slices the input (core and context); ``core`` is the part kept, in
    input pixels relative to the source; ``destination`` slices the output."""

    source: Tuple[slice, slice]
    core: Tuple[slice, slice]
    destination: Tuple[slice, slice]

    @property
    def source_shape(self) -> Tuple[int, int]:
        return (self.source[0].stop - self.source[0].start, self.source[1].stop - self.source[1].start)


def tile_slices(shape: Tuple[int, int], core: int, margin: int, scale: int) -> Iterator[Tile]:
    """The tiles covering a ``(Y, X)`` image: cores of at most ``core`` pixels, ``margin`` of context."""
    for sy0, sy1, cy0, cy1 in axis_tiles(shape[0], core, margin):
        for sx0, sx1, cx0, cx1 in axis_tiles(shape[1], core, margin):
            yield Tile(source=(slice(sy0, sy1), slice(sx0, sx1)),
                       core=(slice(cy0 - sy0, cy1 - sy0), slice(cx0 - sx0, cx1 - sx0)),
                       destination=(slice(cy0 * scale, cy1 * scale), slice(cx0 * scale, cx1 * scale)))


def activation_room(config: GeneratorConfig, memory: int, device_type: str) -> int:
    """What ``memory`` leaves for the activations that grow with the tile, after the fixed ones."""
    return max(memory - forward_fixed_bytes(config, device_type), 0)


@dataclass(frozen=True)
class TilePlan:
    """Tile edge (context included) and context margin, in input pixels, for a generator.

    ``tile`` 0 takes the largest square whose activations (:func:`~msrgan_core.models.
    forward_bytes_per_pixel`) fit ``memory`` bytes, but no less than :data:`MIN_CORE_MARGINS`
    margins of core; an image no larger than it is one tile.
    """

    tile: int
    margin: int

    @property
    def core(self) -> int:
        return self.tile - 2 * self.margin

    @classmethod
    def for_generator(cls, config: GeneratorConfig, influence: int, tile: int = 0, memory: int = TILE_MEMORY["cpu"],
                      device_type: str = "cpu") -> "TilePlan":
        margin = min(int(influence) + MARGIN_SPARE, receptive_radius(config))  # nothing beyond the receptive field counts
        if tile <= 0:
            room = activation_room(config, memory, device_type)
            tile = max(int(math.sqrt(room / forward_bytes_per_pixel(config, device_type))), (2 + MIN_CORE_MARGINS) * margin)
        return cls(tile=max(int(tile), 2 * margin + MIN_CORE), margin=margin)

    def tiles(self, shape: Tuple[int, int], scale: int) -> List[Tile]:
        if max(shape) <= self.tile:  # the whole image fits: no context is cut, nothing to add
            return list(tile_slices(shape, max(shape), 0, scale))
        return list(tile_slices(shape, self.core, self.margin, scale))


def orientations(count: int) -> List[Tuple[int, bool]]:
    """``count`` of the eight orientations of an image, as (quarter turns, mirrored) pairs.

    1 is the image itself; 2 adds its mirror image; 4 adds both turned upside down; 8 is every
    quarter turn of both.
    """
    if count not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {count!r}")
    turns = {1: [0], 2: [0], 4: [0, 2], 8: [0, 1, 2, 3]}[count]
    return [(k, mirrored) for mirrored in ((False,) if count == 1 else (False, True)) for k in turns]


def orient(image: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """Mirror the X axis of a ``(..., Y, X)`` tensor if asked, then turn it by ``turns`` quarter turns."""
    if mirrored:
        image = image.flip(-1)
    return torch.rot90(image, turns, dims=(-2, -1)) if turns else image


def unorient(image: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """Undo :func:`orient`."""
    if turns:
        image = torch.rot90(image, -turns, dims=(-2, -1))
    return image.flip(-1) if mirrored else image


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision that runs: ``auto`` is bf16 where the device computes it itself (a GPU that
    supports it, a CPU with AVX-512 BF16 or AMX: :func:`~msrgan_core.device.cpu_has_bf16`), else
    fp32. fp16 is for GPUs: the CPU runs fp32 instead."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if precision == "auto":
        return "bf16" if native else "fp32"
    if device.type != "cuda" and precision == "fp16":
        log.info("msrgan: fp16 is for CUDA GPUs; the CPU runs fp32")
        return "fp32"
    if precision == "bf16" and not native:
        log.warning("msrgan: this %s does not compute bf16 itself: bf16 runs emulated, slower than fp32",
                    "GPU" if device.type == "cuda" else "CPU")
    return precision


# --- the upscaler ---------------------------------------------------------------------------

class Upscaler:
    """A model placed on a device, reused for many images.

    Parameters
    ----------
    model : LoadedModel, str or Path
        From :func:`msrgan_core.modelfile.load_model`, or what it takes: a packaged model's name
        (``"fidelity"``) or a model file.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the GPU of index N).
    tile : int
        Tile edge in input pixels, context included; 0 sizes it to :data:`TILE_MEMORY`.
    precision : str
        ``auto`` (bf16 where the device computes it itself, see :func:`resolve_precision`; else
        fp32), ``fp32``, ``bf16`` or ``fp16`` (CUDA only). The network's convolutions run in the
        reduced precision, the bicubic skip and everything after the network in fp32; an image or
        batch whose reduced-precision output is not finite is redone in fp32.
    progress : bool
        Show a progress bar over tiles.
    ensemble : int or None
        Upscale in 1, 2, 4 or 8 orientations and average: a little more accurate, that many
        times slower. None: the model's own default (``model.inference``; 1 where its file
        does not say).
    match_bins : bool or None
        Shift each ``scale`` x ``scale`` block of the output so that its mean equals the input
        pixel it came from (:func:`msrgan_core.binning.match_bins`): binning the output gives
        the input back. None: the model's own default (no where its file does not say).
    threads : int or None
        CPU threads (torch's, for the whole process); None: the cores this process may use, or
        fewer where ``OMP_NUM_THREADS`` says (:func:`msrgan_core.device.default_threads`). Unused
        on a GPU.
    """

    def __init__(
        self, model: "LoadedModel | str | Path", device: str = "auto", tile: int = 0, precision: str = "auto", progress: bool = False,
        ensemble: Optional[int] = None, match_bins: Optional[bool] = None, threads: Optional[int] = None,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model)
        chosen = model.inference.overridden(ensemble, match_bins)
        self.ensemble, self.match_bins = chosen.ensemble, chosen.match_bins
        self.orientations = orientations(self.ensemble)
        self.model = model
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.requested_tile = int(tile)
        if self.requested_tile < 0:
            raise ValueError(f"tile must be >= 0 (0 = automatic), got {tile!r}")
        self.progress = progress
        #: warn, the first time an uncertainty image is asked for, where it is not on the error's scale
        #: (:meth:`uncertainty_problem`); ``msrgan calibrate``, which measures that scale, turns it off
        self.check_uncertainty = True
        self.threads = use_cpu(threads) if self.device.type == "cpu" else None
        self.memory = self._tile_memory()
        plan = self.plan() if self.requested_tile else None  # (the plan may measure the model's influence radius)
        if plan is not None and plan.tile > self.requested_tile:
            log.warning("msrgan: tile %d raised to %d: a tile holds its %d pixels of context on each side and at least "
                        "%d of its own", self.requested_tile, plan.tile, plan.margin, MIN_CORE)
        # channels-last weights: oneDNN's CPU convolutions and cuDNN's tensor cores run fastest on
        # them, same numbers. Module.to converts in place, once: later Upscalers find it converted.
        self.generator = model.generator.to(self.device, memory_format=torch.channels_last)
        log.info("msrgan: model %s on %s, %s precision, %s", model.label, describe_device(self.device),
                 self.precision, self.options)

    @property
    def options(self) -> str:
        """What runs per image, in words: the orientations averaged and whether bins are matched."""
        return f"{self.ensemble} orientation(s), bins {'matched' if self.match_bins else 'as output'}"

    @property
    def scale(self) -> int:
        return self.model.scale

    def _tile_memory(self) -> int:
        if self.device.type != "cuda":
            return TILE_MEMORY["cpu"]
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(min(TILE_MEMORY["cuda"], CUDA_MEMORY_SHARE * free))

    def plan(self, tile: Optional[int] = None) -> TilePlan:
        """The tile plan this upscaler uses (``tile`` overrides its own tile edge)."""
        return TilePlan.for_generator(self.model.config, self.model.influence_radius,
                                      self.requested_tile if tile is None else tile, self.memory, self.device.type)

    def check(self, image: np.ndarray, source: str = "image") -> np.ndarray:
        """Validate an image for this model and return it as ``(C, Y, X)``."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[np.newaxis]
        if image.ndim != 3:
            raise InferenceError(f"{source}: msrgan takes 2-D images (Y, X) or (C, Y, X), got shape {image.shape}")
        if image.shape[0] > MAX_UNNAMED_CHANNELS >= image.shape[-1]:
            raise InferenceError(f"{source}: shape {image.shape} looks like channels last (Y, X, C); msrgan takes "
                                 "(C, Y, X): pass np.moveaxis(image, -1, 0)")
        image, _ = to_cyx(image, source, axes="CYX")
        channels, want = image.shape[0], self.model.config.in_channels
        if self.model.config.out_channels != want:
            raise InferenceError(
                f"model {self.model.label} maps {want} to {self.model.config.out_channels} channels; "
                "msrgan upscales with models whose outputs match their inputs channel for channel"
            )
        if want != 1 and channels != want:
            raise InferenceError(
                f"{source}: has {channels} channel(s) but the model {self.model.label} takes {want}"
            )
        return image

    def check_memory(self, image: np.ndarray, source: str, uncertainty: bool = False) -> None:
        """Refuse, before any tile, an image whose output would not fit in the memory available."""
        c, h, w = image.shape
        need = c * h * w * self.scale ** 2 * (image.dtype.itemsize + (4 if uncertainty else 0))
        free = available_memory()
        if free is not None and need > MEMORY_SHARE * free:
            raise InferenceError(f"{source}: its {w * self.scale} x {h * self.scale} output needs {need / 2 ** 30:.1f} GiB "
                                 f"and {free / 2 ** 30:.1f} GiB of memory are available: upscale it in parts (crops)")

    def upscale(self, image: np.ndarray, source: str = "image", uncertainty: bool = False):
        """Upscale a ``(Y, X)`` or ``(C, Y, X)`` image; same dtype and layout, ``scale`` times larger.

        A one-channel model upscales each channel of a multi-channel image separately. Integer
        outputs are clipped to their type's range, and to a channel's 10-, 12- or 14-bit ceiling
        where its pixels reach it (a saturated camera: nothing was measured above it); float
        outputs are not clipped at all (like bicubic interpolation, the network can undershoot
        beside bright edges, below 0 too).

        Parameters
        ----------
        image : numpy.ndarray
            ``(Y, X)`` or ``(C, Y, X)``, uint8, uint16, int8, int16, int32, float32 or float64.
            A channel of one value throughout comes back as that value, uncertainty 0.
        source : str
            What to call the image in messages (its file name).
        uncertainty : bool
            Also return the uncertainty image (see :meth:`uncertainty_orientations`).

        Returns
        -------
        numpy.ndarray, or a pair of them with ``uncertainty``
            The upscaled image; with ``uncertainty``, also a float32 image of its shape: per
            pixel, an estimate of the output's absolute error on its intensity scale, the
            standard deviation of the network's output over orientations of the input times
            the model's calibration (``msrgan calibrate``). Where it is high, the network's
            answer depends on how the structure happens to lie, and its error is high too.
        """
        if self.threads is not None:  # torch's threads are the process's: another upscaler may have set others
            set_threads(self.threads)
        two_d = np.ndim(image) == 2
        cyx = self.check(image, source)
        self.check_memory(cyx, source, uncertainty)
        if uncertainty and self.check_uncertainty:
            self.check_uncertainty = False  # said once
            problem = self.uncertainty_problem()
            if problem:
                log.warning("msrgan: %s", problem)
        stats = percentile_stats(cyx, self.model.normalization)
        groups = [slice(c, c + 1) for c in range(cyx.shape[0])] if self.model.config.in_channels == 1 else [slice(None)]
        shape = (cyx.shape[0], cyx.shape[1] * self.scale, cyx.shape[2] * self.scale)
        out = np.empty(shape, dtype=cyx.dtype)
        spread = np.empty(shape, dtype=np.float32) if uncertainty else None
        clipped = 0
        lowest, highest = channel_range(cyx)
        constant = lowest == highest
        for group in groups:
            if not constant[group].all():
                normalized = torch.from_numpy(normalize(cyx[group], _take(stats, group)))
                clipped += self._upscale_group(normalized, _take(stats, group), out[group],
                                               None if spread is None else spread[group], source)
        out[constant] = cyx[constant, :1, :1]  # an empty channel stays that value, exactly, and certain
        if spread is not None:
            spread[constant] = 0.0
        clipped += _clip_to_sensor_ceiling(highest, out, source)
        fraction = clipped / out.size
        if fraction > 0.01:
            log.warning("msrgan: %s: %.2f%% of output pixels were outside the %s range (or the camera's) and were "
                        "clipped", source, 100 * fraction, cyx.dtype)
        elif fraction > 0:
            log.info("msrgan: %s: %.4f%% of output pixels clipped to the %s range (or the camera's)", source,
                     100 * fraction, cyx.dtype)
        if fraction > 0 and self.match_bins:
            log.warning("msrgan: %s: where output pixels were clipped to the %s range or the camera's (beside "
                        "saturated or empty pixels), their %d x %d blocks no longer bin back exactly to the input",
                        source, cyx.dtype, self.scale, self.scale)
        if spread is None:
            return out[0] if two_d else out
        return (out[0], spread[0]) if two_d else (out, spread)

    def uncertainty_problem(self) -> str:
        """Why this upscaler's uncertainty image is not on its output's error scale, or ''
        (:meth:`~msrgan_core.modelcard.ModelCard.uncertainty_problem`)."""
        return self.model.card.uncertainty_problem(self.ensemble, self.match_bins)

    def uncertainty_orientations(self) -> List[Tuple[int, bool]]:
        """The orientations whose spread is the uncertainty: the ensemble's, with its mirror image
        added to a single pass (one more pass; the output itself stays the ensemble's mean)."""
        return orientations(uncertainty_orientation_count(self.ensemble))

    def runs(self, uncertainty: bool = False) -> List[Tuple[int, bool]]:
        """The orientations each image goes through the network in: the ensemble's, or with
        ``uncertainty`` :meth:`uncertainty_orientations`."""
        return self.uncertainty_orientations() if uncertainty else self.orientations

    def _upscale_group(self, image: torch.Tensor, stats: Stats, out: np.ndarray, spread: Optional[np.ndarray],
                       source: str) -> int:
        """Strips where the generator streams (:meth:`streams`), else tiles with bounded retries: halve
        the tile on CUDA out-of-memory, then use the CPU."""
        if self.streams(spread is not None):
            try:
                return self._run_strips(image, stats, out, spread, source, self.precision)
            except _NotFinite:
                log.warning("msrgan: %s: %s output was not finite; recomputing the image in fp32", source, self.precision)
                return self._run_strips(image, stats, out, spread, source, "fp32")
        plan = self.plan()
        for _ in range(MAX_TILE_HALVINGS + 1):
            try:
                return self._run_tiles(image, stats, out, spread, plan, source)
            except torch.cuda.OutOfMemoryError:
                if self.device.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                smaller = self.plan(max(plan.tile // 2, 1))
                log.warning("msrgan: CUDA out of memory with %d-pixel tiles; retrying with %d", plan.tile, smaller.tile)
                plan = smaller
        log.warning("msrgan: CUDA still out of memory after %d smaller tiles: falling back to the CPU", MAX_TILE_HALVINGS)
        self.device, self.precision, self.memory = torch.device("cpu"), "fp32", TILE_MEMORY["cpu"]
        self.threads = use_cpu(None)
        self.generator = self.generator.to(self.device)
        return self._run_tiles(image, stats, out, spread, self.plan(0), source)

    def streams(self, uncertainty: bool = False) -> bool:
        """Whether images go through the network in full-width strips (:meth:`~msrgan_core.models.
        CompactGenerator.stream`) rather than square tiles: on the CPU, with the automatic tile
        size, for a generator that streams, when every orientation keeps rows as rows."""
        return (self.device.type == "cpu" and self.requested_tile == 0 and hasattr(self.generator, "stream")
                and all(turns == 0 for turns, _ in self.runs(uncertainty)))

    def layout(self, shape: Tuple[int, int], uncertainty: bool = False) -> str:
        """How an image of ``(Y, X)`` input pixels goes through the network, in words."""
        if self.streams(uncertainty):
            return f"full-width strips of {min(self.strip_rows(shape[1], uncertainty), shape[0])} rows"
        plan = self.plan()
        count = len(plan.tiles(shape, self.scale))
        return f"{count} tile(s) of {plan.tile} pixels" + (f", {plan.margin} of context" if count > 1 else "")

    def strip_rows(self, width: int, uncertainty: bool = False) -> int:
        """Input rows per strip for an image ``width`` pixels wide: as many as the memory budget holds."""
        room = activation_room(self.model.config, self.memory, self.device.type)
        per_row = forward_bytes_per_pixel(self.model.config, self.device.type) * width * len(self.runs(uncertainty))
        return max(room // per_row, 1)

    def _run_tiles(self, image: torch.Tensor, stats: Stats, out: np.ndarray, spread: Optional[np.ndarray],
                   plan: TilePlan, source: str) -> int:
        """Upscale ``image`` (``(C, Y, X)`` normalised) tile by tile into ``out`` (and the spread over
        orientations into ``spread``); returns the pixels clipped."""
        cuda = self.device.type == "cuda"
        tiles = plan.tiles(tuple(image.shape[1:]), self.scale)
        runs = self.runs(spread is not None)
        items = [(index, tile, o) for index, tile in enumerate(tiles) for o in runs]
        per_item = forward_bytes_per_pixel(self.model.config, self.device.type)
        room = activation_room(self.model.config, self.memory, self.device.type)
        low, span = stats_tensors(stats, out.dtype, self.device)
        outputs, clipped = {}, 0
        bar = progress_bar(total=len(tiles), desc="tiles", unit="tile", disable=not self.progress or len(tiles) < 2,
                           leave=False, nested=True)
        for batch in _batches(items, room, per_item):
            x = torch.stack([orient(image[:, tile.source[0], tile.source[1]], *o) for _, tile, o in batch])
            y = self._forward(_to_device(x, self.device), source)
            finished = []
            for (index, tile, o), result in zip(batch, y):
                outputs.setdefault(index, []).append(unorient(result, *o))
                if len(outputs[index]) == len(runs):
                    finished.append((tile, self._finish(tile, outputs.pop(index), image, low, span, out.dtype, spread is not None)))
            if cuda:
                torch.cuda.current_stream(self.device).synchronize()  # the host copies have landed
            for tile, result in finished:
                clipped += _store(tile, result, out, spread)
                bar.update(1)
        bar.close()
        return clipped

    def _reduced(self, precision: str):
        """The context that runs the network's convolutions in ``precision`` (autocast), or none: a
        disabled autocast, given bf16, a dtype that every torch version's CPU autocast accepts."""
        return torch.autocast(self.device.type, dtype=_AUTOCAST.get(precision, torch.bfloat16),
                              enabled=precision in _AUTOCAST)

    @torch.inference_mode()
    def _run_strips(self, image: torch.Tensor, stats: Stats, out: np.ndarray, spread: Optional[np.ndarray],
                    source: str, precision: str) -> int:
        """:meth:`_run_tiles` in full-width strips, every orientation of a strip in one batch; in
        reduced ``precision``, a strip whose output is not finite raises :class:`_NotFinite`."""
        runs = self.runs(spread is not None)
        height, width = image.shape[1:]
        low, span = stats_tensors(stats, out.dtype)
        x = torch.stack([orient(image, *o) for o in runs]).contiguous(memory_format=torch.channels_last)
        rows = self.strip_rows(width, spread is not None)
        clipped = 0
        bar = progress_bar(total=height, desc="rows", unit="row", disable=not self.progress or height <= rows,
                           leave=False, nested=True)
        for start, y in _each_in(self.generator.stream(x, rows), lambda: self._reduced(precision)):
            stop = start + y.shape[2] // self.scale
            strip = Tile(source=(slice(start, stop), slice(0, width)), core=(slice(0, stop - start), slice(0, width)),
                         destination=(slice(start * self.scale, stop * self.scale), slice(0, width * self.scale)))
            y = y.float()
            if not _all_finite(y):
                raise _NotFinite if precision in _AUTOCAST else _not_finite(source, self.model.source)
            result = self._finish(strip, [unorient(r, *o) for r, o in zip(y, runs)], image, low, span, out.dtype,
                                  spread is not None)
            clipped += _store(strip, result, out, spread)
            bar.update(stop - start)
        bar.close()
        return clipped

    def _finish(self, tile: Tile, results: List[torch.Tensor], image: torch.Tensor, low: torch.Tensor, span: torch.Tensor,
                dtype: np.dtype, with_spread: bool) -> "tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]":
        """A tile's core: averaged, bins matched, on the image's scale and dtype, on its way to the
        host; with ``with_spread``, also the standard deviation over the orientations."""
        s = self.scale
        rows, cols = slice(tile.core[0].start * s, tile.core[0].stop * s), slice(tile.core[1].start * s, tile.core[1].stop * s)
        results = [r[:, rows, cols] for r in results]
        n = len(self.orientations)
        core = results[0] if n == 1 else torch.stack(results[:n]).mean(dim=0)
        deviation = None
        if with_spread:
            deviation = _spread(results) * span[:, None, None]
            deviation = _to_host(deviation * self.model.card.uncertainty_scale)
        if self.match_bins:
            lowres = image[:, tile.source[0], tile.source[1]][:, tile.core[0], tile.core[1]]
            core = match_bins(core, _to_device(lowres, self.device), s)
        pixels, n_clipped = denormalize(core, (low, span), TORCH_DTYPES[np.dtype(dtype)])
        return _to_host(pixels), n_clipped, deviation

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor, source: str) -> torch.Tensor:
        """The generator's output for a batch, in fp32; reduced precision is redone in fp32 if not finite."""
        x = x.contiguous(memory_format=torch.channels_last)
        if self.precision in _AUTOCAST:
            with self._reduced(self.precision):
                y = self.generator(x).float()
            if _all_finite(y):
                return y
            log.warning("msrgan: %s: %s output was not finite; recomputing the batch in fp32", source, self.precision)
        return _finite(self.generator(x).float(), source, self.model.source)


def _spread(results: List[torch.Tensor]) -> torch.Tensor:
    """The standard deviation (population) over ``results``, pixel by pixel, written out: torch's
    ``std`` over the stacked dimension ran 30 times slower on the CPU (440 against 14 ms for two
    2080 x 2784 outputs), as long as the network's pass itself."""
    stacked = torch.stack(results)
    return stacked.sub_(stacked.mean(dim=0)).square_().mean(dim=0).sqrt_()


class _NotFinite(Exception):
    """A reduced-precision strip that was not finite: the image is redone in fp32."""


def _each_in(items: Iterator, context) -> Iterator:
    """The items of an iterator (a generator's strips), each one computed inside ``context()``
    (autocast), and the code that takes it outside it."""
    while True:
        with context():
            item = next(items, None)
        if item is None:
            return
        yield item


def _all_finite(y: torch.Tensor) -> bool:
    """Whether every value of ``y`` is finite. NaN and infinities carry through a sum, so one sum
    answers for almost every tensor, in one read (``isfinite().all()`` takes four, 1.6 % of a bf16
    upscale); only where the sum is not finite (finite values could overflow it) is each value asked."""
    return bool(torch.isfinite(y.sum())) or bool(torch.isfinite(y).all())


def _not_finite(source: str, model: str) -> InferenceError:
    """The error for a model that gives NaN or infinity in fp32."""
    return InferenceError(f"{source}: the model {Path(model).name} gave non-finite output "
                          "(NaN or infinity): its weights are damaged, or the input is far outside its range")


def _finite(y: torch.Tensor, source: str, model: str) -> torch.Tensor:
    """``y``, which must be finite: a model that gives NaN or infinity is refused."""
    if not _all_finite(y):
        raise _not_finite(source, model)
    return y


#: the largest values of cameras' 10-, 12- and 14-bit pixels, stored in 16-bit types
SENSOR_CEILINGS = (2 ** 10 - 1, 2 ** 12 - 1, 2 ** 14 - 1)


def _clip_to_sensor_ceiling(highest: np.ndarray, out: np.ndarray, source: str) -> int:
    """Clip each channel of the upscaled ``out`` to the sensor's ceiling where the input's pixels
    reach one (``highest``, per channel; :data:`SENSOR_CEILINGS`; saturated nuclei of a 12-bit
    camera stored as uint16): the network extrapolates above it where nothing was measured;
    returns the pixels clipped."""
    if out.dtype.kind not in "iu":
        return 0
    clipped = 0
    for c, top in enumerate(int(value) for value in highest):
        if top in SENSOR_CEILINGS and top < np.iinfo(out.dtype).max:
            above = int(np.count_nonzero(out[c] > top))
            if above:
                np.minimum(out[c], top, out=out[c])
                clipped += above
                log.info("msrgan: %s: reaches its %d-bit ceiling (%d): %d output pixels above it clipped to it",
                         source, top.bit_length(), top, above)
    return clipped


def _store(tile: Tile, result: tuple, out: np.ndarray, spread: Optional[np.ndarray]) -> int:
    """Write a finished tile or strip (:meth:`Upscaler._finish`) into the output and the spread;
    the number of its pixels that were clipped."""
    pixels, n_clipped, deviation = result
    out[(slice(None),) + tile.destination] = pixels.numpy()
    if deviation is not None:
        spread[(slice(None),) + tile.destination] = deviation.numpy()
    return int(n_clipped)


def _batches(items: list, memory: int, bytes_per_pixel: int) -> Iterator[list]:
    """Consecutive items whose oriented tiles have one shape, as many as ``memory`` allows (at least one)."""
    batch, shape = [], None
    for item in items:
        _, tile, (turns, _) = item
        h, w = tile.source_shape
        oriented = (w, h) if turns % 2 else (h, w)
        if batch and (oriented != shape or (len(batch) + 1) * h * w * bytes_per_pixel > memory):
            yield batch
            batch = []
        batch.append(item)
        shape = oriented
    if batch:
        yield batch


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; to a GPU through pinned memory, so the copy overlaps the work queued before it."""
    if device.type != "cuda":
        return x
    return x.pin_memory().to(device, non_blocking=True)


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """``x`` on the host; from a GPU into pinned memory, asynchronously (synchronise before reading it)."""
    if x.device.type != "cuda":
        return x
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    return host.copy_(x, non_blocking=True)


def available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations: Linux's MemAvailable, or less where this
    process's control group allows less (:func:`~msrgan_core.device.cgroup_memory_room`); None
    where neither is known."""
    free = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pass
    room = cgroup_memory_room()
    return free if room is None else room if free is None else min(free, room)


def _take(stats: Stats, group: slice) -> Stats:
    return Stats(low=stats.low[group], high=stats.high[group])


def upscale(image: np.ndarray, model: "LoadedModel | str | Path" = "fidelity", device: str = "auto", tile: int = 0,
            **options) -> np.ndarray:
    """Upscale one ``(Y, X)`` or ``(C, Y, X)`` image with ``model`` (a packaged model's name, a model
    file or a loaded model); ``options`` are :class:`Upscaler`'s (``precision``, ``ensemble``,
    ``match_bins``, ``threads``). For many images make one :class:`Upscaler` and reuse it."""
    return Upscaler(model, device=device, tile=tile, **options).upscale(image)


def upscale_file(
    upscaler: Upscaler, source: Path, destination: Path, channel_axis: Optional[int] = None, overwrite: bool = False
) -> bool:
    """Upscale one file to ``destination`` (TIFF, same dtype and axis order).

    Returns False (and does nothing) when ``destination`` exists and ``overwrite`` is off, so an
    interrupted batch resumes where it stopped. The output is written atomically.
    """
    if destination.exists() and not overwrite:
        return False
    image, layout = read_image(source, channel_axis=channel_axis)
    result = upscaler.upscale(image, source=str(source))
    write_image(destination, result, layout.upscaled(upscaler.scale))
    return True


__all__ = [
    "ImageError", "InferenceError", "Tile", "TilePlan", "Upscaler", "axis_tiles", "orient",
    "orientations", "tile_slices", "unorient", "upscale", "upscale_file",
]
