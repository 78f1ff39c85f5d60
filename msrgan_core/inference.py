"""Tiled inference: ``upscale()`` an image of any size in bounded memory, without seams.

The image is normalised once, on the whole image. Tiles of ``tile`` input pixels overlap by
twice the generator's receptive radius plus a blending ramp; each tile's output is weighted
by a raised-cosine ramp that is zero wherever the tile's own border could have changed the
result, and the sum is divided by the summed weights. The tiled output therefore equals the
untiled one to float precision, and only one tile is ever on the device.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import degradation
from .io import ImageError, read_image, to_cyx, write_image
from .modelfile import ENSEMBLES, LoadedModel
from .models import receptive_radius
from .normalize import Stats, denormalize, normalize, percentile_stats

log = logging.getLogger("msrgan")

#: input-pixel tile edge used when ``tile=0`` (automatic), per device type
AUTO_TILE = {"cpu": 256, "cuda": 1024}
#: at most this many halvings of the tile after CUDA out-of-memory, then the CPU takes over
MAX_TILE_HALVINGS = 4


class InferenceError(ValueError):
    """An image the model cannot take (wrong channel count, wrong shape)."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.

    Asking for ``cuda`` where there is none logs a warning and uses the CPU.
    """
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda", "gpu"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if device in ("cuda", "gpu"):
        log.warning("msrgan: a GPU was requested but CUDA is not available (torch %s): using the CPU", torch.__version__)
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


# --- tiling: pure functions ---------------------------------------------------------------

def axis_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_slices(
    shape: Tuple[int, int], tile: int, overlap: int, scale: int
) -> Iterator[Tuple[Tuple[slice, slice], Tuple[slice, slice]]]:
    """(source slice, destination slice) pairs for tiles covering a ``(Y, X)`` image.

    Source slices index the input; destination slices, ``scale`` times larger, the output.
    """
    for y0 in axis_starts(shape[0], tile, overlap):
        for x0 in axis_starts(shape[1], tile, overlap):
            y1, x1 = min(y0 + tile, shape[0]), min(x0 + tile, shape[1])
            yield (slice(y0, y1), slice(x0, x1)), (slice(y0 * scale, y1 * scale), slice(x0 * scale, x1 * scale))


def blend_weight(start: int, stop: int, length: int, margin: int, ramp: int, scale: int) -> np.ndarray:
    """1-D output weight of a tile spanning input pixels ``[start, stop)`` of ``length``.

    Zero within ``margin`` input pixels of an inner tile border (where zero padding changed
    the result), a raised-cosine ramp over the next ``ramp`` pixels, one in the middle; one up
    to the image border, where the whole image has the same border.
    """
    x = (np.arange((stop - start) * scale, dtype=np.float64) + 0.5) / scale + start  # input coordinates
    weight = np.ones_like(x)
    if start > 0:
        t = np.clip((x - start - margin) / ramp, 0.0, 1.0)
        weight *= 0.5 - 0.5 * np.cos(np.pi * t)
    if stop < length:
        t = np.clip((stop - margin - x) / ramp, 0.0, 1.0)
        weight *= 0.5 - 0.5 * np.cos(np.pi * t)
    return weight.astype(np.float32)


@dataclass(frozen=True)
class TilePlan:
    """Tile size and overlap (input pixels) for a generator."""

    tile: int
    margin: int
    ramp: int

    @property
    def overlap(self) -> int:
        return 2 * self.margin + self.ramp

    @classmethod
    def for_model(cls, model: LoadedModel, tile: int) -> "TilePlan":
        margin = receptive_radius(model.config)
        ramp = max(8, margin // 2)
        smallest = 2 * (margin + ramp) + 16
        return cls(tile=max(int(tile), smallest), margin=margin, ramp=ramp)


def orientations(count: int) -> List[Tuple[int, bool]]:
    """``count`` of the eight orientations of an image, as (quarter turns, mirrored) pairs.

    1 is the image itself; 2 adds its mirror image; 4 adds both turned upside down; 8 is every
    quarter turn of both.
    """
    if count not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {count!r}")
    turns = {1: [0], 2: [0], 4: [0, 2], 8: [0, 1, 2, 3]}[count]
    return [(k, mirrored) for mirrored in ((False,) if count == 1 else (False, True)) for k in turns]


def orient(image: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """Mirror the X axis of a ``(C, Y, X)`` image if asked, then turn it by ``turns`` quarter turns."""
    if mirrored:
        image = image[:, :, ::-1]
    return np.ascontiguousarray(np.rot90(image, turns, axes=(1, 2)))


def unorient(image: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """Undo :func:`orient`."""
    image = np.rot90(image, -turns, axes=(1, 2))
    return image[:, :, ::-1] if mirrored else image


# --- the upscaler ---------------------------------------------------------------------------

class Upscaler:
    """A model placed on a device, reused for many images.

    Parameters
    ----------
    model : LoadedModel
        From :func:`msrgan_core.modelfile.load_model`.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    tile : int
        Tile edge in input pixels; 0 picks one for the device.
    precision : str
        ``fp32`` or ``fp16`` (CUDA only; a tile whose fp16 output is not finite is redone in fp32).
    progress : bool
        Show a progress bar over tiles.
    ensemble : int or None
        Upscale in 1, 2, 4 or 8 orientations and average: a little more accurate, that many
        times slower. None: the model's own default (``model.inference``; 1 where its file
        does not say).
    match_bins : bool or None
        Shift each ``scale`` x ``scale`` block of the output so that its mean equals the input
        pixel it came from (:func:`msrgan_core.degradation.match_bins`): binning the output
        gives the input back. More accurate where the input is the binning of the truth (as in
        the benchmarks); less where the input carries noise that the model would have removed.
        None: the model's own default (no where its file does not say).
    """

    def __init__(
        self, model: LoadedModel, device: str = "auto", tile: int = 0, precision: str = "fp32", progress: bool = False,
        ensemble: Optional[int] = None, match_bins: Optional[bool] = None,
    ) -> None:
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
        defaults = model.inference
        self.ensemble = defaults.ensemble if ensemble is None else ensemble
        self.orientations = orientations(self.ensemble)
        self.match_bins = defaults.match_bins if match_bins is None else bool(match_bins)
        self.model = model
        self.device = resolve_device(device)
        self.requested_tile = int(tile)
        if self.requested_tile < 0:
            raise ValueError(f"tile must be >= 0 (0 = automatic), got {tile!r}")
        self.precision = precision
        self.progress = progress
        # channels-last weights: oneDNN's CPU convolutions run 1.2-1.3x faster on them, same numbers.
        # Module.to converts in place, once: later Upscalers of the same model find it converted.
        self.generator = model.generator.to(self.device, memory_format=torch.channels_last)
        log.info("msrgan: model %s on %s%s%s", Path(model.source).name, describe_device(self.device),
                 f", {self.ensemble}-orientation ensemble" if self.ensemble > 1 else "",
                 ", output bins matched to the input" if self.match_bins else "")

    @property
    def options(self) -> str:
        """What runs per image, in words: the orientations averaged and whether bins are matched."""
        return f"{self.ensemble} orientation(s), bins {'matched' if self.match_bins else 'as output'}"

    @property
    def scale(self) -> int:
        return self.model.scale

    def _tile_edge(self) -> int:
        return self.requested_tile or AUTO_TILE[self.device.type]

    def check(self, image: np.ndarray, source: str = "image") -> np.ndarray:
        """Validate an image for this model and return it as ``(C, Y, X)``."""
        if image.ndim == 2:
            image = image[np.newaxis]
        if image.ndim != 3:
            raise InferenceError(f"{source}: msrgan takes 2-D images (Y, X) or (C, Y, X), got shape {image.shape}")
        image, _ = to_cyx(image, source, axes="CYX")
        channels, want = image.shape[0], self.model.config.in_channels
        if self.model.config.out_channels != want:
            raise InferenceError(
                f"model {Path(self.model.source).name} maps {want} to {self.model.config.out_channels} channels; "
                "msrgan upscales with models whose outputs match their inputs channel for channel"
            )
        if want != 1 and channels != want:
            raise InferenceError(
                f"{source}: has {channels} channel(s) but the model {Path(self.model.source).name} takes {want}"
            )
        return image

    def upscale(self, image: np.ndarray, source: str = "image") -> np.ndarray:
        """Upscale a ``(Y, X)`` or ``(C, Y, X)`` image; same dtype and layout, ``scale`` times larger.

        A one-channel model upscales each channel of a multi-channel image separately.
        """
        two_d = image.ndim == 2
        cyx = self.check(image, source)
        stats = percentile_stats(cyx, self.model.normalization)
        groups = [slice(c, c + 1) for c in range(cyx.shape[0])] if self.model.config.in_channels == 1 else [slice(None)]
        out = np.empty((cyx.shape[0], cyx.shape[1] * self.scale, cyx.shape[2] * self.scale), dtype=cyx.dtype)
        clipped = 0.0
        for group in groups:
            normalized = normalize(cyx[group], _take(stats, group))
            result = self._upscale_oriented(normalized)
            if self.match_bins:
                result = degradation.match_bins(result, normalized, self.scale)
            out[group], frac = denormalize(result, _take(stats, group), cyx.dtype)
            del result
            clipped = max(clipped, frac)
        if clipped > 0.01:
            log.warning("msrgan: %s: %.2f%% of output pixels were outside the %s range and were clipped",
                        source, 100 * clipped, cyx.dtype)
        elif clipped > 0:
            log.info("msrgan: %s: %.4f%% of output pixels clipped to the %s range", source, 100 * clipped, cyx.dtype)
        return out[0] if two_d else out

    def _upscale_oriented(self, image: np.ndarray) -> np.ndarray:
        """The mean of the upscaled image over the ensemble's orientations."""
        turns, mirrored = self.orientations[0]
        total = unorient(self._upscale_normalized(orient(image, turns, mirrored)), turns, mirrored)
        if len(self.orientations) == 1:
            return total
        for turns, mirrored in self.orientations[1:]:
            total += unorient(self._upscale_normalized(orient(image, turns, mirrored)), turns, mirrored)
        total /= len(self.orientations)
        return total

    def _upscale_normalized(self, image: np.ndarray) -> np.ndarray:
        """Tiles with bounded retries: halve the tile on CUDA out-of-memory, then use the CPU."""
        tile = self._tile_edge()
        for _ in range(MAX_TILE_HALVINGS + 1):
            try:
                return self._run_tiles(image, tile)
            except torch.cuda.OutOfMemoryError:
                if self.device.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                log.warning("msrgan: CUDA out of memory with %d-pixel tiles; retrying with %d", tile, tile // 2)
                tile //= 2
        log.warning("msrgan: CUDA still out of memory after %d smaller tiles: falling back to the CPU", MAX_TILE_HALVINGS)
        self.device = torch.device("cpu")
        self.generator = self.generator.to(self.device)
        return self._run_tiles(image, AUTO_TILE["cpu"])

    def _run_tiles(self, image: np.ndarray, tile: int) -> np.ndarray:
        plan = TilePlan.for_model(self.model, tile)
        s = self.scale
        c_out = self.model.config.out_channels
        _, h, w = image.shape
        acc = np.zeros((c_out, h * s, w * s), dtype=np.float32)
        # the weights are separable and the tiles form a grid: their sum is outer(sum_y, sum_x)
        ramps_y = {y0: blend_weight(y0, min(y0 + plan.tile, h), h, plan.margin, plan.ramp, s)
                   for y0 in axis_starts(h, plan.tile, plan.overlap)}
        ramps_x = {x0: blend_weight(x0, min(x0 + plan.tile, w), w, plan.margin, plan.ramp, s)
                   for x0 in axis_starts(w, plan.tile, plan.overlap)}
        weight_y = np.zeros(h * s, dtype=np.float32)
        weight_x = np.zeros(w * s, dtype=np.float32)
        for y0, ramp in ramps_y.items():
            weight_y[y0 * s:y0 * s + ramp.size] += ramp
        for x0, ramp in ramps_x.items():
            weight_x[x0 * s:x0 * s + ramp.size] += ramp
        tiles = list(tile_slices((h, w), plan.tile, plan.overlap, s))
        for (sy, sx), (dy, dx) in tqdm(tiles, desc="tiles", unit="tile", disable=not self.progress or len(tiles) < 2, leave=False):
            pred = self._forward(image[:, sy, sx])
            acc[:, dy, dx] += pred * ramps_y[sy.start][None, :, None] * ramps_x[sx.start][None, None, :]
        acc /= weight_y[None, :, None]
        acc /= weight_x[None, None, :]
        return acc

    @torch.no_grad()
    def _forward(self, tile: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(tile))[None].to(self.device)
        if self.precision == "fp16" and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                y = self.generator(x).float()
            if torch.isfinite(y).all():
                return y[0].cpu().numpy()
            log.warning("msrgan: fp16 output was not finite; recomputing the tile in fp32")
        return self.generator(x)[0].float().cpu().numpy()


def _take(stats: Stats, group: slice) -> Stats:
    return Stats(low=stats.low[group], high=stats.high[group])


def upscale(image: np.ndarray, model: LoadedModel, device: str = "auto", tile: int = 0) -> np.ndarray:
    """Upscale one ``(Y, X)`` or ``(C, Y, X)`` image with ``model``; see :class:`Upscaler`."""
    return Upscaler(model, device=device, tile=tile).upscale(image)


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
    write_image(destination, result, layout)
    return True


__all__ = [
    "AUTO_TILE", "ENSEMBLES", "ImageError", "InferenceError", "TilePlan", "Upscaler", "axis_starts", "blend_weight",
    "orient", "orientations", "resolve_device", "tile_slices", "unorient", "upscale", "upscale_file",
]
